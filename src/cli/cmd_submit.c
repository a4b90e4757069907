/*
 * kiln submit SERVICE [options]: builds a job spec from the flags (on top of
 * --spec when given), validates it with the broker's own validator before
 * anything touches Redis, submits it (or --count copies, in batches), and
 * prints the id(s). --wait then follows the job like `kiln job ID --wait`.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"

static const char submit_usage[] =
    "usage: kiln submit SERVICE [options] [global options]\n"
    "       kiln submit --spec JSON|@FILE [SERVICE] [options]\n"
    "\n"
    "Submits a job to SERVICE's queue and prints its id.\n"
    "\n"
    "options:\n"
    "  --payload JSON           the job's input (any JSON value; default {})\n"
    "  --payload-file PATH|-    read the payload from a file, or stdin with -\n"
    "  --priority N             -1000..1000, higher runs first (default 0)\n"
    "  --requires JSON          requirements object (docs/requirements.md)\n"
    "  --customer ID            customer id (for customer isolation)\n"
    "  --max-attempts N         1..100 (default: broker.default_max_attempts)\n"
    "  --delay MS               do not run before now + MS milliseconds\n"
    "  --run-at MS_EPOCH        do not run before this time (ms since the epoch)\n"
    "  --idempotency-key K      a second submit with the same key returns the first\n"
    "                           job's id and writes nothing\n"
    "  --timeout MS             stop the job after it has run this long\n"
    "  --count N                submit N copies (1..1000000, batches of 1000)\n"
    "  --spec JSON|@FILE        a whole job spec (see docs/cli.md); @- reads stdin;\n"
    "                           the flags above override its fields\n"
    "  --wait                   then follow the job like `kiln job ID --wait`\n"
    "  --wait-timeout SECONDS   with --wait: give up after this long\n"
    "  --json                   print {\"id\":...,\"duplicate\":bool} or {\"ids\":[...]}\n"
    "                           (with --wait: the final job object)\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  submitted (with --wait: and completed)\n"
    "  1  the submit failed (with --wait: the job failed, went dead or was cancelled)\n"
    "  2  usage or input error: the message names the field; nothing was written\n"
    "  3  Redis unreachable\n"
    "  4  --wait timed out\n";

#define COUNT_MAX 1000000L
/* Slack over the payload limit when reading a file: the serialized (compact)
 * payload is what the limit measures, and a pretty-printed file is larger. */
#define READ_SLACK_BYTES (64L * 1024)

typedef struct submit_opts {
    const char *service;
    const char *payload;
    const char *payload_file;
    const char *priority;
    const char *requires;
    const char *customer;
    const char *max_attempts;
    const char *delay;
    const char *run_at;
    const char *idempotency_key;
    const char *timeout;
    const char *spec;
    long count;
    bool wait;
    long wait_timeout_ms;
} submit_opts_t;

enum {
    OPT_PAYLOAD = 1000,
    OPT_PAYLOAD_FILE,
    OPT_PRIORITY,
    OPT_REQUIRES,
    OPT_CUSTOMER,
    OPT_MAX_ATTEMPTS,
    OPT_DELAY,
    OPT_RUN_AT,
    OPT_IDEMPOTENCY_KEY,
    OPT_TIMEOUT,
    OPT_COUNT,
    OPT_SPEC,
    OPT_WAIT,
    OPT_WAIT_TIMEOUT
};

static const struct option submit_longopts[] = {
    {"payload", required_argument, NULL, OPT_PAYLOAD},
    {"payload-file", required_argument, NULL, OPT_PAYLOAD_FILE},
    {"priority", required_argument, NULL, OPT_PRIORITY},
    {"requires", required_argument, NULL, OPT_REQUIRES},
    {"customer", required_argument, NULL, OPT_CUSTOMER},
    {"max-attempts", required_argument, NULL, OPT_MAX_ATTEMPTS},
    {"delay", required_argument, NULL, OPT_DELAY},
    {"run-at", required_argument, NULL, OPT_RUN_AT},
    {"idempotency-key", required_argument, NULL, OPT_IDEMPOTENCY_KEY},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"count", required_argument, NULL, OPT_COUNT},
    {"spec", required_argument, NULL, OPT_SPEC},
    {"wait", no_argument, NULL, OPT_WAIT},
    {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
    {0}};

/* Prints "kiln submit: <message> (see kiln submit --help)" and returns the
 * usage exit code. User-supplied text must go through safe_text() first. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kiln submit: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see kiln submit --help)\n", stderr);
    va_end(ap);
    return KILN_EXIT_USAGE;
}

/* arg made safe for the terminal (one at a time: the buffer is reused). */
static const char *safe_text(const char *arg)
{
    static char buf[256];
    kiln_cli_sanitize(arg ? arg : "", buf, sizeof buf);
    return buf;
}

/* Parses text as a whole base-10 integer; false when it is not one. */
static bool parse_integer(const char *text, long long *out)
{
    char *end = NULL;
    errno = 0;
    *out = strtoll(text, &end, 10);
    return *text && !*end && errno == 0;
}

static int store_option(submit_opts_t *o, int c, const char *arg)
{
    long long n;
    switch (c) {
    case OPT_PAYLOAD:
        o->payload = arg;
        break;
    case OPT_PAYLOAD_FILE:
        o->payload_file = arg;
        break;
    case OPT_PRIORITY:
        o->priority = arg;
        break;
    case OPT_REQUIRES:
        o->requires
        = arg;
        break;
    case OPT_CUSTOMER:
        o->customer = arg;
        break;
    case OPT_MAX_ATTEMPTS:
        o->max_attempts = arg;
        break;
    case OPT_DELAY:
        o->delay = arg;
        break;
    case OPT_RUN_AT:
        o->run_at = arg;
        break;
    case OPT_IDEMPOTENCY_KEY:
        o->idempotency_key = arg;
        break;
    case OPT_TIMEOUT:
        o->timeout = arg;
        break;
    case OPT_SPEC:
        o->spec = arg;
        break;
    case OPT_WAIT:
        o->wait = true;
        break;
    case OPT_COUNT:
        if (!parse_integer(arg, &n) || n < 1 || n > COUNT_MAX)
            return usage_error("--count: expected an integer 1-1000000, got \"%s\"",
                               safe_text(arg));
        o->count = (long)n;
        break;
    case OPT_WAIT_TIMEOUT:
        return kiln_cli_parse_seconds("submit", "--wait-timeout", arg, &o->wait_timeout_ms);
    default:
        return KILN_EXIT_USAGE;
    }
    return 0;
}

/* Combinations that cannot mean anything sensible. */
static int check_combinations(const submit_opts_t *o)
{
    if (o->payload && o->payload_file)
        return usage_error("--payload and --payload-file both give the payload; use one");
    if (o->delay && o->run_at)
        return usage_error("--delay and --run-at both say when to run; use one");
    if (o->count > 1 && o->idempotency_key)
        return usage_error("--count N with --idempotency-key would submit one job; drop one");
    if (o->count > 1 && o->wait)
        return usage_error("--wait follows one job; it cannot be used with --count");
    if (o->payload_file && o->spec && strcmp(o->payload_file, "-") == 0 &&
        strcmp(o->spec, "@-") == 0)
        return usage_error("--payload-file - and --spec @- cannot both read stdin");
    if (!o->service && !o->spec)
        return usage_error("SERVICE is required (or a --spec that names the service)");
    return 0;
}

static int parse_submit_opts(int argc, char **argv, submit_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->count = 1;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", submit_longopts, NULL)) != -1) {
        if (c == ':' || c == '?')
            return usage_error(c == ':' ? "missing value for '%s'" : "unknown option '%s'",
                               safe_text(argv[optind - 1]));
        int rc = store_option(o, c, optarg);
        if (rc != 0)
            return rc;
    }
    if (argc - optind > 1)
        return usage_error("expected one SERVICE, got extra argument '%s'",
                           safe_text(argv[optind + 1]));
    if (argc - optind == 1)
        o->service = argv[optind];
    return check_combinations(o);
}

/* ---- Building the spec ---------------------------------------------------- */

/* Reads path (or stdin for "-") into *out (NUL-terminated, caller frees),
 * refusing more than limit bytes. */
static int read_bounded(const char *flag, const char *path, size_t limit, char **out, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kiln submit: %s: cannot open %s: %s\n", flag, path, strerror(errno));
        return KILN_EXIT_USAGE;
    }
    size_t cap = 0, used = 0;
    char *buf = NULL;
    int rc = 0;
    for (;;) {
        if (used == cap) {
            cap = cap ? cap * 2 : 65536;
            char *grown = realloc(buf, cap + 1);
            if (!grown) {
                rc = usage_error("%s: out of memory reading the file", flag);
                break;
            }
            buf = grown;
        }
        size_t n = fread(buf + used, 1, cap - used, f);
        used += n;
        if (used > limit) {
            fprintf(stderr,
                    "kiln submit: %s: %s is over %zu bytes, more than a job can carry "
                    "(broker.max_payload_bytes); make the input smaller or raise the limit\n",
                    flag, is_stdin ? "stdin" : path, limit);
            rc = KILN_EXIT_USAGE;
            break;
        }
        if (n == 0) {
            if (ferror(f)) {
                fprintf(stderr, "kiln submit: %s: reading %s failed: %s\n", flag, path,
                        strerror(errno));
                rc = KILN_EXIT_USAGE;
            }
            break;
        }
    }
    if (!is_stdin)
        fclose(f);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    buf[used] = '\0';
    *out = buf;
    *len = used;
    return 0;
}

/* Parses len bytes of JSON text given by flag; prints where it is wrong. */
static int load_json(const char *flag, const char *text, size_t len, size_t flags, json_t **out)
{
    json_error_t jerr;
    *out = json_loadb(text, len, flags, &jerr);
    if (*out)
        return 0;
    char safe[256];
    kiln_cli_sanitize(jerr.text, safe, sizeof safe);
    fprintf(stderr, "kiln submit: %s: invalid JSON at line %d, column %d: %s\n", flag, jerr.line,
            jerr.column, safe);
    return KILN_EXIT_USAGE;
}

/* Loads a JSON argument: inline text, or (from_file) a bounded file read. */
static int load_json_arg(const char *flag, const char *arg, bool from_file, size_t limit,
                         size_t flags, json_t **out)
{
    if (!from_file) {
        size_t len = strlen(arg);
        if (len > limit) {
            fprintf(stderr, "kiln submit: %s: %zu bytes is more than a job can carry (%zu)\n", flag,
                    len, limit);
            return KILN_EXIT_USAGE;
        }
        return load_json(flag, arg, len, flags, out);
    }
    char *text = NULL;
    size_t len = 0;
    int rc = read_bounded(flag, arg, limit, &text, &len);
    if (rc == 0)
        rc = load_json(flag, text, len, flags, out);
    free(text);
    return rc;
}

static int set_string(json_t *spec, const char *field, const char *flag, const char *value)
{
    json_t *text = json_string(value);
    if (!text)
        return usage_error("%s: not valid UTF-8; ids and names must be UTF-8 text", flag);
    json_object_set_new(spec, field, text);
    return 0;
}

static int set_integer(json_t *spec, const char *field, const char *flag, const char *value)
{
    long long n;
    if (!parse_integer(value, &n)) {
        char safe[128];
        kiln_cli_sanitize(value, safe, sizeof safe);
        fprintf(stderr, "kiln submit: %s: %s: expected an integer, got \"%s\"\n", flag, field,
                safe);
        return KILN_EXIT_USAGE;
    }
    json_object_set_new(spec, field, json_integer(n));
    return 0;
}

static int load_base_spec(const submit_opts_t *o, size_t limit, json_t **spec)
{
    if (!o->spec) {
        *spec = json_object();
        return *spec ? 0 : KILN_EXIT_FAILED;
    }
    bool from_file = o->spec[0] == '@';
    const char *arg = from_file ? o->spec + 1 : o->spec;
    int rc = load_json_arg("--spec", arg, from_file, limit + KILN_REQUIREMENTS_MAX_BYTES,
                           JSON_REJECT_DUPLICATES, spec);
    if (rc == 0 && !json_is_object(*spec)) {
        json_decref(*spec);
        *spec = NULL;
        return usage_error("--spec: expected a JSON object {\"service\":...}");
    }
    return rc;
}

static int apply_json_flags(const submit_opts_t *o, size_t limit, json_t *spec)
{
    json_t *value = NULL;
    int rc = 0;
    if (o->payload || o->payload_file) {
        bool from_file = o->payload_file != NULL;
        rc = load_json_arg(from_file ? "--payload-file" : "--payload",
                           from_file ? o->payload_file : o->payload, from_file, limit,
                           JSON_DECODE_ANY, &value);
        if (rc == 0)
            json_object_set_new(spec, "payload", value);
    }
    if (rc == 0 && o->requires) {
        rc = load_json_arg("--requires", o->requires, false, KILN_REQUIREMENTS_MAX_BYTES * 2,
                           JSON_REJECT_DUPLICATES, &value);
        if (rc == 0)
            json_object_set_new(spec, "requirements", value);
    }
    return rc;
}

/* Builds the spec object: --spec first, then each flag given on top. */
static int build_spec_json(const submit_opts_t *o, long max_payload_bytes, json_t **out)
{
    size_t limit = (size_t)(max_payload_bytes > 0 ? max_payload_bytes : 1048576) + READ_SLACK_BYTES;
    json_t *spec = NULL;
    int rc = load_base_spec(o, limit, &spec);
    if (rc == 0)
        rc = apply_json_flags(o, limit, spec);
    if (rc == 0 && o->service)
        rc = set_string(spec, "service", "service", o->service);
    if (rc == 0 && o->customer)
        rc = set_string(spec, "customer_id", "--customer", o->customer);
    if (rc == 0 && o->idempotency_key)
        rc = set_string(spec, "idempotency_key", "--idempotency-key", o->idempotency_key);
    if (rc == 0 && o->priority)
        rc = set_integer(spec, "priority", "--priority", o->priority);
    if (rc == 0 && o->max_attempts)
        rc = set_integer(spec, "max_attempts", "--max-attempts", o->max_attempts);
    if (rc == 0 && o->delay)
        rc = set_integer(spec, "delay_ms", "--delay", o->delay);
    if (rc == 0 && o->run_at)
        rc = set_integer(spec, "run_at", "--run-at", o->run_at);
    if (rc == 0 && o->timeout)
        rc = set_integer(spec, "timeout_ms", "--timeout", o->timeout);
    if (rc != 0) {
        json_decref(spec);
        return rc;
    }
    *out = spec;
    return 0;
}

/* ---- Submitting ----------------------------------------------------------- */

static int submit_one(kiln_broker_t *broker, const kiln_job_spec_t *spec, const submit_opts_t *o,
                      bool json)
{
    char id[KILN_JOB_ID_MAX];
    bool duplicate = false;
    kiln_err_t err = {0};
    int rc = kiln_broker_submit(broker, spec, id, &duplicate, &err);
    if (rc != 0)
        return kiln_cli_report("submit", rc, &err);
    if (duplicate)
        fprintf(stderr,
                "kiln submit: the idempotency key matched job %s; nothing new was "
                "submitted\n",
                id);
    if (json && !o->wait) {
        json_t *reply = json_pack("{s:s, s:b}", "id", id, "duplicate", duplicate);
        kiln_cli_print_json(reply);
        json_decref(reply);
    } else if (!json) {
        printf("%s\n", id);
        fflush(stdout);
    }
    if (o->wait)
        return kiln_cli_job_wait(broker, id, o->wait_timeout_ms, json);
    return KILN_EXIT_OK;
}

static int submit_many(kiln_broker_t *broker, const kiln_job_spec_t *spec, size_t count, bool json)
{
    size_t chunk = count < KILN_SUBMIT_BATCH_MAX ? count : KILN_SUBMIT_BATCH_MAX;
    kiln_job_spec_t *specs = malloc(chunk * sizeof *specs);
    char(*ids)[KILN_JOB_ID_MAX] = malloc(chunk * sizeof *ids);
    json_t *all = json ? json_array() : NULL;
    kiln_err_t err = {0};
    int rc = (!specs || !ids || (json && !all)) ? KILN_ENOMEM : 0;
    /* Shallow copies: every copy borrows spec's strings, and only spec is cleared. */
    for (size_t i = 0; rc == 0 && i < chunk; i++)
        specs[i] = *spec;
    size_t done = 0;
    while (rc == 0 && done < count) {
        size_t n = count - done < chunk ? count - done : chunk;
        rc = kiln_broker_submit_batch(broker, specs, n, ids, &err);
        for (size_t i = 0; rc == 0 && i < n; i++) {
            if (json)
                json_array_append_new(all, json_string(ids[i]));
            else
                printf("%s\n", ids[i]);
        }
        if (rc == 0)
            done += n;
    }
    if (json) {
        json_t *reply = json_pack("{s:o}", "ids", all);
        kiln_cli_print_json(reply);
        json_decref(reply);
    }
    fflush(stdout);
    free(specs);
    free(ids);
    if (rc == 0)
        return KILN_EXIT_OK;
    fprintf(stderr, "kiln submit: %zu of %zu jobs were submitted before an error:\n", done, count);
    return kiln_cli_report("submit", rc, &err);
}

/* Validates the spec object with the broker's validator; exit code 2 with
 * the field named when it is refused. */
static int validate_spec(json_t *obj, long max_payload_bytes, kiln_job_spec_t *spec)
{
    kiln_err_t err = {0};
    int rc = kiln_job_spec_from_json(obj, max_payload_bytes, spec, &err);
    if (rc == 0)
        return 0;
    kiln_cli_report("submit", rc, &err);
    return KILN_EXIT_USAGE;
}

int kiln_cmd_submit(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(submit_usage, stdout);
        return KILN_EXIT_OK;
    }
    submit_opts_t o;
    if ((rc = parse_submit_opts(argc, argv, &o)) != 0)
        return rc;
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    json_t *obj = NULL;
    kiln_job_spec_t spec;
    memset(&spec, 0, sizeof spec);
    bool have_spec = false;
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 ||
        (rc = build_spec_json(&o, cfg.broker.max_payload_bytes, &obj)) != 0 ||
        (rc = validate_spec(obj, cfg.broker.max_payload_bytes, &spec)) != 0)
        goto out;
    have_spec = true;
    if ((rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    rc = o.count == 1 ? submit_one(broker, &spec, &o, g.json)
                      : submit_many(broker, &spec, (size_t)o.count, g.json);
out:
    if (have_spec)
        kiln_job_spec_clear(&spec);
    json_decref(obj);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}
