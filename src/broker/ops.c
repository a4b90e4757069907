#include "broker/ops.h"

#include <ctype.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/scripts.h"

void kiln_argv_init(kiln_argv_t *a)
{
    memset(a, 0, sizeof *a);
}

void kiln_argv_add(kiln_argv_t *a, const char *s, size_t len)
{
    if (a->failed)
        return;
    if (len == SIZE_MAX)
        len = strlen(s);
    if (a->count == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 32;
        if (cap > KILN_ARGV_MAX_ITEMS) {
            a->failed = true;
            return;
        }
        char **items = realloc(a->items, cap * sizeof *items);
        if (items)
            a->items = items;
        size_t *lens = items ? realloc(a->lens, cap * sizeof *lens) : NULL;
        if (!items || !lens) {
            a->failed = true;
            return;
        }
        a->lens = lens;
        a->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        a->failed = true;
        return;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    a->items[a->count] = copy;
    a->lens[a->count++] = len;
}

void kiln_argv_addf(kiln_argv_t *a, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) {
        a->failed = true;
        return;
    }
    kiln_argv_add(a, buf, (size_t)n);
}

void kiln_argv_free(kiln_argv_t *a)
{
    for (size_t i = 0; i < a->count; i++)
        free(a->items[i]);
    free(a->items);
    free(a->lens);
    kiln_argv_init(a);
}

static kiln_script_t *scripts;
static size_t script_count;
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void scripts_load(void)
{
    size_t n = 0;
    while (kiln_embedded_scripts[n].name)
        n++;
    scripts = calloc(n, sizeof *scripts);
    if (!scripts)
        return;
    for (size_t i = 0; i < n; i++) {
        const kiln_embedded_script_t *e = &kiln_embedded_scripts[i];
        unsigned char digest[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)e->source, e->length, digest);
        scripts[i].name = e->name;
        scripts[i].source = e->source;
        scripts[i].length = e->length;
        for (int b = 0; b < SHA_DIGEST_LENGTH; b++)
            snprintf(scripts[i].sha + 2 * b, 3, "%02x", digest[b]);
    }
    script_count = n;
}

const kiln_script_t *kiln_script_get(const char *name)
{
    pthread_once(&scripts_once, scripts_load);
    for (size_t i = 0; i < script_count; i++) {
        if (strcmp(scripts[i].name, name) == 0)
            return &scripts[i];
    }
    return NULL;
}

static double jitter_fraction(void)
{
    static _Thread_local unsigned int seed;
    if (!seed) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (unsigned int)(ts.tv_nsec ^ (uintptr_t)&seed);
    }
    return (double)rand_r(&seed) / ((double)RAND_MAX + 1.0);
}

void kiln_ops_begin(kiln_argv_t *a, const kiln_script_t *script, const kiln_broker_options_t *opts,
                    const char *service)
{
    kiln_argv_add(a, "EVALSHA", SIZE_MAX);
    kiln_argv_add(a, script->sha, SIZE_MAX);
    kiln_argv_add(a, "1", 1);
    kiln_argv_addf(a, "kiln:{%s}:seq", service);
    kiln_argv_addf(a, "kiln:{%s}:", service);
    kiln_argv_addf(a, "%ld", opts->stream_max_len);
    kiln_argv_addf(a, "%ld", opts->retention_age_s * 1000L);
    kiln_argv_addf(a, "%ld", opts->retention_count);
    kiln_argv_addf(a, "%ld", opts->backoff_base_ms);
    kiln_argv_addf(a, "%ld", opts->backoff_max_ms);
    kiln_argv_addf(a, "%ld", opts->lease_ms);
    kiln_argv_addf(a, "%.6f", jitter_fraction());
    kiln_argv_add(a, service, SIZE_MAX);
}

bool kiln_ops_noscript_fallback(kiln_argv_t *a, const redisReply *reply,
                                const kiln_script_t *script)
{
    if (!reply || reply->type != REDIS_REPLY_ERROR || strncmp(reply->str, "NOSCRIPT", 8) != 0)
        return false;
    char *eval = strdup("EVAL");
    char *source = malloc(script->length + 1);
    if (!eval || !source) {
        free(eval);
        free(source);
        return false;
    }
    memcpy(source, script->source, script->length + 1);
    free(a->items[0]);
    free(a->items[1]);
    a->items[0] = eval;
    a->lens[0] = 4;
    a->items[1] = source;
    a->lens[1] = script->length;
    return true;
}

void kiln_ops_add_claimer(kiln_argv_t *a, const kiln_worker_identity_t *who, int max)
{
    kiln_argv_add(a, who->id, SIZE_MAX);
    kiln_argv_add(a, who->session, SIZE_MAX);
    kiln_argv_add(a, who->caps_json, SIZE_MAX);
    kiln_argv_add(a, who->caps_hash, SIZE_MAX);
    kiln_argv_addf(a, "%d", max);
}

static const char *element_str(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : NULL;
}

int kiln_ops_parse_claims(const redisReply *reply, size_t first, kiln_claimed_job_t *jobs, int max,
                          kiln_err_t *err)
{
    int n = 0;
    for (size_t i = first; i < reply->elements; i++) {
        const redisReply *c = reply->element[i];
        if (n >= max || c->type != REDIS_REPLY_ARRAY || c->elements != 6 ||
            !element_str(c->element[0]) || !element_str(c->element[1]) ||
            !element_str(c->element[5]))
            goto malformed;
        kiln_claimed_job_t *job = &jobs[n];
        memset(job, 0, sizeof *job);
        snprintf(job->id, sizeof job->id, "%s", c->element[0]->str);
        snprintf(job->token, sizeof job->token, "%s", c->element[1]->str);
        job->attempt = (int)c->element[2]->integer;
        job->max_attempts = (int)c->element[3]->integer;
        job->timeout_ms = c->element[4]->integer;
        job->payload_json = strdup(c->element[5]->str);
        n++;
        if (!job->payload_json) {
            for (int j = 0; j < n; j++)
                kiln_claimed_job_clear(&jobs[j]);
            return kiln_err_set(err, KILN_ENOMEM, "out of memory reading claimed jobs");
        }
    }
    return n;
malformed:
    for (int j = 0; j < n; j++)
        kiln_claimed_job_clear(&jobs[j]);
    return kiln_err_set(err, KILN_EREDIS, "claim: malformed reply from redis");
}

int kiln_ops_status(const char *status, const char *id, kiln_err_t *err)
{
    if (!status)
        return kiln_err_set(err, KILN_EREDIS, "job %s: malformed reply from redis", id);
    if (strcmp(status, "ok") == 0)
        return 0;
    if (strcmp(status, "missing") == 0)
        return kiln_err_set(err, KILN_ENOTFOUND, "job %s not found", id);
    if (strcmp(status, "cancelled") == 0)
        return kiln_err_set(err, KILN_ELOST, "job %s was cancelled; its report was refused", id);
    return kiln_err_set(err, KILN_ELOST,
                        "job %s: this claim no longer holds the lease (expired or claimed by "
                        "another worker); the report was refused",
                        id);
}

bool kiln_ops_service_name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > KILN_SERVICE_NAME_MAX ||
        !(islower((unsigned char)name[0]) || isdigit((unsigned char)name[0])))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(islower(c) || isdigit(c) || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int kiln_ops_job_service(const char *id, char *service, kiln_err_t *err)
{
    const char *dot = strrchr(id, '.');
    size_t len = dot ? (size_t)(dot - id) : 0;
    bool ok =
        dot && len > 0 && len <= KILN_SERVICE_NAME_MAX && dot[1] != '\0' && strlen(dot + 1) <= 19;
    for (const char *p = dot ? dot + 1 : ""; ok && *p; p++)
        ok = isdigit((unsigned char)*p);
    if (ok) {
        memcpy(service, id, len);
        service[len] = '\0';
        ok = kiln_ops_service_name_ok(service);
    }
    if (!ok)
        return kiln_err_set(err, KILN_EINVAL,
                            "job id \"%.100s\" is malformed: expected <service>.<number>, e.g. "
                            "simulation.42",
                            id);
    return 0;
}

long long kiln_ops_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long kiln_ops_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
