/*
 * Job specs and worker identities: validation of what clients submit, and
 * the canonical JSON + hash that group jobs into requirement classes.
 */
#include <math.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/ops.h"
#include "kiln/broker.h"

#define DEFAULT_MAX_PAYLOAD (1024L * 1024L)

/* The class id: the first 16 hex digits of text's SHA-1. Each thread
 * remembers its last short text and id, as most jobs in a row share their
 * class and the hash is a good part of a submit's CPU. */
static void hash16(const char *text, char out[17])
{
    static _Thread_local char last_text[256];
    static _Thread_local char last_id[17];
    size_t len = strlen(text);
    if (last_id[0] && strcmp(text, last_text) == 0) {
        memcpy(out, last_id, 17);
        return;
    }
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)text, len, digest);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[16] = '\0';
    if (len < sizeof last_text) {
        memcpy(last_text, text, len + 1);
        memcpy(last_id, out, 17);
    }
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int want_int(json_t *v, const char *field, long long min, long long max, long long *out,
                    kiln_err_t *err)
{
    if (!json_is_integer(v))
        return kiln_err_set(err, KILN_EINVAL, "%s: expected an integer %lld-%lld, got %s", field,
                            min, max, type_name(v));
    long long n = json_integer_value(v);
    if (n < min || n > max)
        return kiln_err_set(err, KILN_EINVAL, "%s: expected an integer %lld-%lld, got %lld", field,
                            min, max, n);
    *out = n;
    return 0;
}

static int want_string(json_t *v, const char *field, size_t max_len, kiln_err_t *err)
{
    if (!json_is_string(v))
        return kiln_err_set(err, KILN_EINVAL, "%s: expected a string, got %s", field, type_name(v));
    size_t len = json_string_length(v);
    if (len == 0 || len > max_len)
        return kiln_err_set(err, KILN_EINVAL, "%s: expected 1-%zu characters, got %zu", field,
                            max_len, len);
    if (strlen(json_string_value(v)) != len)
        return kiln_err_set(err, KILN_EINVAL, "%s: must not contain NUL characters", field);
    return 0;
}

static bool capability_path_ok(const char *path)
{
    size_t len = strlen(path);
    if (len == 0 || len > 128 || path[0] == '.' || path[len - 1] == '.')
        return false;
    for (const char *p = path; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* Capability conditions: path -> string | number | boolean | array of
 * strings/numbers (docs/requirements.md). */
static int check_conditions(json_t *obj, const char *field, kiln_err_t *err)
{
    if (!json_is_object(obj))
        return kiln_err_set(err, KILN_EINVAL, "%s: expected an object of capability paths, got %s",
                            field, type_name(obj));
    const char *path;
    json_t *v;
    json_object_foreach(obj, path, v)
    {
        if (!capability_path_ok(path))
            return kiln_err_set(err, KILN_EINVAL,
                                "%s: \"%.60s\" is not a capability path (letters, digits, _ - and "
                                "dots between names, at most 128)",
                                field, path);
        if (json_is_array(v)) {
            size_t i;
            json_t *item;
            json_array_foreach(v, i, item)
            {
                if (!json_is_string(item) && !json_is_number(item))
                    return kiln_err_set(err, KILN_EINVAL,
                                        "%s.%s[%zu]: expected a string or number, got %s", field,
                                        path, i, type_name(item));
            }
        } else if (!json_is_string(v) && !json_is_number(v) && !json_is_boolean(v)) {
            return kiln_err_set(err, KILN_EINVAL,
                                "%s.%s: expected a string (equal), number (at least), boolean or "
                                "array (all present), got %s",
                                field, path, type_name(v));
        }
    }
    return 0;
}

static int check_requirement(const char *key, json_t *v, kiln_err_t *err)
{
    char field[96];
    snprintf(field, sizeof field, "requirements.%s", key);
    if (!strcmp(key, "gpu_memory_gb") || !strcmp(key, "ram_gb") || !strcmp(key, "cpu_cores")) {
        if (!json_is_number(v) || json_number_value(v) < 0 || !isfinite(json_number_value(v)))
            return kiln_err_set(err, KILN_EINVAL, "%s: expected a number >= 0, got %s", field,
                                type_name(v));
        return 0;
    }
    if (!strcmp(key, "models")) {
        size_t i;
        json_t *item;
        if (!json_is_array(v) || json_array_size(v) > 100)
            return kiln_err_set(err, KILN_EINVAL,
                                "%s: expected an array of at most 100 model names", field);
        json_array_foreach(v, i, item)
        {
            if (want_string(item, field, 256, err) != 0)
                return KILN_EINVAL;
        }
        return 0;
    }
    if (!strcmp(key, "machine") || !strcmp(key, "pool"))
        return want_string(v, field, 128, err);
    if (!strcmp(key, "customer_isolation")) {
        const char *s = json_string_value(v);
        if (!s || (strcmp(s, "strict") && strcmp(s, "loose") && strcmp(s, "none")))
            return kiln_err_set(err, KILN_EINVAL, "%s: expected \"strict\", \"loose\" or \"none\"",
                                field);
        return 0;
    }
    if (!strcmp(key, "capabilities") || !strcmp(key, "not"))
        return check_conditions(v, field, err);
    return kiln_err_set(err, KILN_EINVAL,
                        "requirements.%.60s: unknown requirement; expected gpu_memory_gb, ram_gb, "
                        "cpu_cores, models, machine, pool, customer_isolation, capabilities or not",
                        key);
}

static int check_requirements(json_t *req, kiln_err_t *err)
{
    if (!json_is_object(req))
        return kiln_err_set(err, KILN_EINVAL, "requirements: expected an object, got %s",
                            type_name(req));
    const char *key;
    json_t *v;
    json_object_foreach(req, key, v)
    {
        if (check_requirement(key, v, err) != 0)
            return KILN_EINVAL;
    }
    return 0;
}

/* The class: requirements and customer, canonical, hashed. */
static int build_class(kiln_job_spec_t *spec, json_t *req, kiln_err_t *err)
{
    if (!spec->customer_id && (!req || (json_is_object(req) && json_object_size(req) == 0))) {
        /* The class of most jobs, as json_dumps writes it below. */
        spec->class_json = strdup("{\"customer_id\":null,\"requirements\":{}}");
        if (!spec->class_json)
            return kiln_err_set(err, KILN_ENOMEM, "out of memory building the job's class");
        hash16(spec->class_json, spec->class_id);
        return 0;
    }
    json_t *def = json_object();
    if (def) {
        json_object_set_new(def, "requirements", req ? json_incref(req) : json_object());
        json_object_set_new(def, "customer_id",
                            spec->customer_id ? json_string(spec->customer_id) : json_null());
    }
    char *text = def ? json_dumps(def, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(def);
    if (!text)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory building the job's class");
    if (strlen(text) > KILN_REQUIREMENTS_MAX_BYTES) {
        free(text);
        return kiln_err_set(err, KILN_ETOOBIG, "requirements: more than %d bytes; state fewer",
                            KILN_REQUIREMENTS_MAX_BYTES);
    }
    spec->class_json = text;
    hash16(text, spec->class_id);
    return 0;
}

static const char *const spec_fields[] = {
    "service", "payload",  "priority",        "requirements", "customer_id", "max_attempts",
    "run_at",  "delay_ms", "idempotency_key", "timeout_ms",   NULL};

static int check_known_fields(json_t *obj, kiln_err_t *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool known = false;
        for (size_t i = 0; spec_fields[i] && !known; i++)
            known = strcmp(key, spec_fields[i]) == 0;
        if (!known)
            return kiln_err_set(err, KILN_EINVAL,
                                "%.60s: unknown field; a job has service, payload, priority, "
                                "requirements, customer_id, max_attempts, run_at, delay_ms, "
                                "idempotency_key and timeout_ms",
                                key);
    }
    return 0;
}

static int parse_numbers(json_t *obj, kiln_job_spec_t *spec, kiln_err_t *err)
{
    long long n;
    json_t *v;
    if ((v = json_object_get(obj, "priority"))) {
        if (want_int(v, "priority", KILN_PRIORITY_MIN, KILN_PRIORITY_MAX, &n, err))
            return KILN_EINVAL;
        spec->priority = (int)n;
    }
    if ((v = json_object_get(obj, "max_attempts"))) {
        if (want_int(v, "max_attempts", 1, 100, &n, err))
            return KILN_EINVAL;
        spec->max_attempts = (int)n;
    }
    if ((v = json_object_get(obj, "run_at"))) {
        if (want_int(v, "run_at", 0, 32503680000000LL, &n, err))
            return KILN_EINVAL;
        spec->run_at_ms = n;
    }
    if ((v = json_object_get(obj, "delay_ms"))) {
        if (want_int(v, "delay_ms", 0, 31536000000LL, &n, err))
            return KILN_EINVAL;
        spec->delay_ms = n;
    }
    if ((v = json_object_get(obj, "timeout_ms"))) {
        if (want_int(v, "timeout_ms", 1, 86400000LL, &n, err))
            return KILN_EINVAL;
        spec->timeout_ms = n;
    }
    return 0;
}

static int parse_strings(json_t *obj, kiln_job_spec_t *spec, kiln_err_t *err)
{
    json_t *v = json_object_get(obj, "service");
    if (!v)
        return kiln_err_set(err, KILN_EINVAL,
                            "service: required; name the service (queue) to run "
                            "the job, e.g. \"simulation\"");
    if (want_string(v, "service", KILN_SERVICE_NAME_MAX, err))
        return KILN_EINVAL;
    if (!kiln_ops_service_name_ok(json_string_value(v)))
        return kiln_err_set(err, KILN_EINVAL,
                            "service: \"%.64s\" is not a service name; use lower-case letters, "
                            "digits, _ and -, starting with a letter or digit",
                            json_string_value(v));
    snprintf(spec->service, sizeof spec->service, "%s", json_string_value(v));
    if ((v = json_object_get(obj, "customer_id"))) {
        if (want_string(v, "customer_id", 128, err))
            return KILN_EINVAL;
        spec->customer_id = strdup(json_string_value(v));
    }
    if ((v = json_object_get(obj, "idempotency_key"))) {
        if (want_string(v, "idempotency_key", KILN_IDEMPOTENCY_KEY_MAX, err))
            return KILN_EINVAL;
        spec->idempotency_key = strdup(json_string_value(v));
    }
    return 0;
}

static int parse_payload(json_t *obj, long max_payload, kiln_job_spec_t *spec, kiln_err_t *err)
{
    json_t *payload = json_object_get(obj, "payload");
    spec->payload_json =
        payload ? json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    if (!spec->payload_json)
        return kiln_err_set(err, KILN_ENOMEM, "payload: could not be serialized");
    size_t len = strlen(spec->payload_json);
    if ((long)len > max_payload)
        return kiln_err_set(err, KILN_ETOOBIG,
                            "payload: %zu bytes is over the limit of %ld "
                            "(broker.max_payload_bytes); store large inputs elsewhere and pass a "
                            "URL",
                            len, max_payload);
    return 0;
}

int kiln_job_spec_from_json(json_t *obj, long max_payload_bytes, kiln_job_spec_t *spec,
                            kiln_err_t *err)
{
    memset(spec, 0, sizeof *spec);
    if (max_payload_bytes <= 0)
        max_payload_bytes = DEFAULT_MAX_PAYLOAD;
    if (!json_is_object(obj))
        return kiln_err_set(err, KILN_EINVAL, "job: expected a JSON object, got %s",
                            obj ? type_name(obj) : "nothing");
    json_t *req = json_object_get(obj, "requirements");
    int rc = check_known_fields(obj, err);
    if (!rc)
        rc = parse_strings(obj, spec, err);
    if (!rc)
        rc = parse_numbers(obj, spec, err);
    if (!rc && req && !json_is_null(req))
        rc = check_requirements(req, err);
    if (!rc)
        rc = build_class(spec, json_is_null(req) ? NULL : req, err);
    if (!rc)
        rc = parse_payload(obj, max_payload_bytes, spec, err);
    if (!rc && json_object_get(obj, "run_at") && json_object_get(obj, "delay_ms"))
        rc = kiln_err_set(err, KILN_EINVAL, "run_at and delay_ms: give one or the other, not both");
    if (rc)
        kiln_job_spec_clear(spec);
    return rc;
}

int kiln_job_spec_parse(const char *text, size_t len, long max_payload_bytes, kiln_job_spec_t *spec,
                        kiln_err_t *err)
{
    memset(spec, 0, sizeof *spec);
    if (max_payload_bytes <= 0)
        max_payload_bytes = DEFAULT_MAX_PAYLOAD;
    if (len > (size_t)max_payload_bytes + 65536)
        return kiln_err_set(err, KILN_ETOOBIG,
                            "job: %zu bytes is over the limit of %ld "
                            "(broker.max_payload_bytes + 64 KiB)",
                            len, max_payload_bytes + 65536);
    json_error_t jerr;
    json_t *obj = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj)
        return kiln_err_set(err, KILN_EINVAL, "job: malformed JSON at line %d column %d: %s",
                            jerr.line, jerr.column, jerr.text);
    int rc = kiln_job_spec_from_json(obj, max_payload_bytes, spec, err);
    json_decref(obj);
    return rc;
}

void kiln_job_spec_clear(kiln_job_spec_t *spec)
{
    free(spec->payload_json);
    free(spec->class_json);
    free(spec->customer_id);
    free(spec->idempotency_key);
    free(spec->webhook_url);
    memset(spec, 0, sizeof *spec);
}

int kiln_worker_identity_init(kiln_worker_identity_t *who, const char *worker_id,
                              const char *machine_id, json_t *caps, kiln_err_t *err)
{
    memset(who, 0, sizeof *who);
    if (!worker_id || !*worker_id || strlen(worker_id) >= sizeof who->id ||
        strpbrk(worker_id, "/| \t\r\n"))
        return kiln_err_set(err, KILN_EINVAL,
                            "worker id: expected 1-127 characters without '/', '|' or blanks, got "
                            "\"%.40s\"",
                            worker_id ? worker_id : "");
    if (caps && !json_is_object(caps))
        return kiln_err_set(err, KILN_EINVAL, "worker capabilities: expected a JSON object, got %s",
                            type_name(caps));
    json_t *all = caps ? json_deep_copy(caps) : json_object();
    if (all && machine_id)
        json_object_set_new(all, "machine_id", json_string(machine_id));
    who->caps_json = all ? json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(all);
    if (!who->caps_json)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory building the worker identity");
    snprintf(who->id, sizeof who->id, "%s", worker_id);
    hash16(who->caps_json, who->caps_hash);
    unsigned char nonce[8];
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
        kiln_worker_identity_clear(who);
        return kiln_err_set(err, KILN_EIO, "cannot draw a random worker session");
    }
    for (int i = 0; i < 8; i++)
        snprintf(who->session + 2 * i, 3, "%02x", nonce[i]);
    return 0;
}

void kiln_worker_identity_clear(kiln_worker_identity_t *who)
{
    free(who->caps_json);
    memset(who, 0, sizeof *who);
}

void kiln_claimed_job_clear(kiln_claimed_job_t *job)
{
    free(job->payload_json);
    memset(job, 0, sizeof *job);
}
