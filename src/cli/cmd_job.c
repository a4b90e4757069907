/*
 * kiln job ID [--wait [--timeout SECONDS]]: shows one job, or follows it
 * until it is final. The follower is shared with `kiln submit --wait`.
 */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"

static const char job_usage[] =
    "usage: kiln job ID [--wait [--timeout SECONDS]] [global options]\n"
    "\n"
    "Shows a job: its state, attempts, progress, times, payload, result or error.\n"
    "\n"
    "options:\n"
    "  --wait               follow the job until it is completed, failed, dead or\n"
    "                       cancelled: a live progress bar on a terminal, one line\n"
    "                       per event otherwise, then a final line\n"
    "  --timeout SECONDS    with --wait: give up after this long (default: never)\n"
    "  --json               print the job object (with --wait: the final one)\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  shown; with --wait: the job completed\n"
    "  1  no such job; with --wait: it failed, went dead or was cancelled\n"
    "  2  usage error (bad option, invalid id)\n"
    "  3  Redis unreachable\n"
    "  4  --wait timed out\n";

#define BAR_WIDTH      20
#define FIELD_TEXT_MAX 1000

int kiln_cli_check_job_id(const char *cmd, const char *id)
{
    size_t len = strlen(id);
    bool printable = len > 0 && len < KILN_JOB_ID_MAX;
    for (size_t i = 0; printable && i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        printable = c > 0x20 && c < 0x7F;
    }
    if (printable)
        return 0;
    char safe[KILN_JOB_ID_MAX + 4];
    kiln_cli_sanitize(id, safe, sizeof safe);
    fprintf(stderr,
            "kiln %s: invalid job id \"%s\": expected SERVICE.NUMBER (e.g. simulation.42), "
            "1-%d printable characters\n",
            cmd, safe, KILN_JOB_ID_MAX - 1);
    return KILN_EXIT_USAGE;
}

static bool state_is_final(const char *state)
{
    return strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 ||
           strcmp(state, "dead") == 0 || strcmp(state, "cancelled") == 0;
}

/* ---- Showing a job ------------------------------------------------------- */

static void print_field(const char *label, const char *value)
{
    char safe[FIELD_TEXT_MAX + 1];
    kiln_cli_sanitize(value, safe, sizeof safe);
    size_t len = strlen(value);
    printf("%-17s %s", label, safe);
    if (len > FIELD_TEXT_MAX)
        printf("... (%zu bytes; --json shows all of it)", len);
    putchar('\n');
}

static void print_json_field(const char *label, const json_t *value)
{
    if (!value || json_is_null(value))
        return;
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text)
        print_field(label, text);
    free(text);
}

static void print_time_field(const char *label, const json_t *job, const char *key)
{
    int64_t at = kiln_cli_json_int(job, key);
    if (at <= 0)
        return;
    char when[40], age[32], line[96];
    kiln_cli_format_time(at, when, sizeof when);
    kiln_cli_format_age(at, age, sizeof age);
    snprintf(line, sizeof line, "%s (%s ago)", when, age);
    print_field(label, line);
}

static void print_job(const json_t *job)
{
    char line[256];
    print_field("id:", kiln_cli_json_str(job, "id", "-"));
    print_field("service:", kiln_cli_json_str(job, "service", "-"));
    print_field("state:", kiln_cli_json_str(job, "state", "-"));
    snprintf(line, sizeof line, "%lld", (long long)kiln_cli_json_int(job, "priority"));
    print_field("priority:", line);
    snprintf(line, sizeof line, "%lld/%lld", (long long)kiln_cli_json_int(job, "attempts"),
             (long long)kiln_cli_json_int(job, "max_attempts"));
    print_field("attempts:", line);
    const char *progress_message = kiln_cli_json_str(job, "progress_message", "");
    snprintf(line, sizeof line, "%.0f%%%s%s", kiln_cli_json_num(job, "progress"),
             *progress_message ? " " : "", progress_message);
    print_field("progress:", line);
    print_field("worker:", kiln_cli_json_str(job, "worker", "-"));
    print_field("customer:", kiln_cli_json_str(job, "customer_id", "-"));
    print_time_field("created:", job, "created_at");
    if (kiln_cli_json_int(job, "run_at") > kiln_cli_json_int(job, "created_at"))
        print_time_field("run at:", job, "run_at");
    print_time_field("started:", job, "started_at");
    print_time_field("finished:", job, "finished_at");
    if (kiln_cli_json_int(job, "timeout_ms") > 0) {
        kiln_cli_format_duration(kiln_cli_json_int(job, "timeout_ms"), line, sizeof line);
        print_field("timeout:", line);
    }
    print_field("idempotency key:", kiln_cli_json_str(job, "idempotency_key", "-"));
    print_json_field("requirements:", json_object_get(job, "requirements"));
    print_json_field("payload:", json_object_get(job, "payload"));
    print_json_field("result:", json_object_get(job, "result"));
    const char *error = kiln_cli_json_str(job, "error", NULL);
    if (error && *error) {
        print_field("error:", error);
        print_field("retryable:",
                    json_is_true(json_object_get(job, "error_retryable")) ? "yes" : "no");
    }
}

/* ---- Following a job ----------------------------------------------------- */

typedef struct follow {
    const char *id;
    bool tty;
    bool json;
    bool bar_drawn;
    char state[16];
    double progress;
} follow_t;

static void draw_bar(follow_t *f, const char *message)
{
    int pct = (int)lround(f->progress < 0 ? 0 : f->progress > 100 ? 100 : f->progress);
    int filled = pct * BAR_WIDTH / 100;
    char bar[BAR_WIDTH + 1], safe[160];
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    if (strcmp(f->state, "running") != 0 || !message || !*message)
        message = f->state;
    kiln_cli_sanitize(message, safe, sizeof safe);
    printf("\r%s [%s] %3d%% %s\033[K", f->id, bar, pct, safe);
    fflush(stdout);
    f->bar_drawn = true;
}

static void print_event_line(const follow_t *f, const char *type, const char *message)
{
    char safe[512];
    kiln_cli_sanitize(message ? message : "", safe, sizeof safe);
    /* "simulation.42 progress running 58% step 6/10"; the type is left out
     * when it only repeats the state ("completed completed"). */
    bool same = type && strcmp(type, f->state) == 0;
    printf("%s%s%s %s %.0f%%%s%s\n", f->id, same || !type ? "" : " ", same || !type ? "" : type,
           f->state, f->progress, safe[0] ? " " : "", safe);
    fflush(stdout);
}

static void on_job_event(json_t *event, void *ctx)
{
    follow_t *f = ctx;
    const char *job = kiln_cli_json_str(event, "job", NULL);
    if (job && strcmp(job, f->id) != 0)
        return; /* another job of the same queue */
    const char *state = kiln_cli_json_str(event, "state", NULL);
    if (state)
        snprintf(f->state, sizeof f->state, "%s", state);
    /* Stream fields arrive as strings; accept a number too. */
    json_t *progress = json_object_get(event, "progress");
    if (json_is_number(progress))
        f->progress = json_number_value(progress);
    else if (json_is_string(progress))
        f->progress = strtod(json_string_value(progress), NULL);
    if (f->json)
        return;
    const char *message = kiln_cli_json_str(event, "message", NULL);
    if (!message)
        message = kiln_cli_json_str(event, "error", NULL);
    if (f->tty)
        draw_bar(f, message);
    else
        print_event_line(f, kiln_cli_json_str(event, "type", NULL), message);
}

static void print_final_line(follow_t *f, const json_t *job)
{
    const char *state = kiln_cli_json_str(job, "state", "unknown");
    if (f->tty && f->bar_drawn) {
        f->progress = kiln_cli_json_num(job, "progress");
        snprintf(f->state, sizeof f->state, "%s", state);
        draw_bar(f, kiln_cli_json_str(job, "progress_message", NULL));
        putchar('\n');
    }
    char took[32] = "";
    int64_t started = kiln_cli_json_int(job, "started_at");
    int64_t finished = kiln_cli_json_int(job, "finished_at");
    if (started > 0 && finished >= started)
        kiln_cli_format_duration(finished - started, took, sizeof took);
    printf("%s %s%s%s", f->id, state, took[0] ? " in " : "", took);
    json_t *result = json_object_get(job, "result");
    const char *error = kiln_cli_json_str(job, "error", NULL);
    if (strcmp(state, "completed") == 0 && result && !json_is_null(result)) {
        char *text = json_dumps(result, JSON_COMPACT | JSON_ENCODE_ANY);
        char safe[FIELD_TEXT_MAX + 8];
        kiln_cli_sanitize(text ? text : "", safe, sizeof safe);
        printf(" result: %s%s", safe, text && strlen(text) > FIELD_TEXT_MAX ? "..." : "");
        free(text);
    } else if (error && *error) {
        char safe[FIELD_TEXT_MAX + 8];
        kiln_cli_sanitize(error, safe, sizeof safe);
        printf(" (attempt %lld/%lld) error: %s", (long long)kiln_cli_json_int(job, "attempts"),
               (long long)kiln_cli_json_int(job, "max_attempts"), safe);
    }
    putchar('\n');
}

static int finish(follow_t *f, const json_t *job)
{
    if (f->json)
        kiln_cli_print_json(job);
    else
        print_final_line(f, job);
    return strcmp(kiln_cli_json_str(job, "state", ""), "completed") == 0 ? KILN_EXIT_OK
                                                                         : KILN_EXIT_FAILED;
}

static int report_timeout(follow_t *f, long timeout_ms)
{
    char waited[32];
    kiln_cli_format_duration(timeout_ms, waited, sizeof waited);
    if (f->tty && f->bar_drawn)
        putchar('\n');
    fflush(stdout);
    fprintf(stderr, "kiln job: gave up waiting for %s after %s; it is still %s\n", f->id, waited,
            f->state);
    return KILN_EXIT_TIMEOUT;
}

int kiln_cli_job_wait(struct kiln_broker *broker, const char *id, long timeout_ms, bool json)
{
    follow_t f = {.id = id, .tty = isatty(STDOUT_FILENO) == 1, .json = json};
    kiln_err_t err = {0};
    json_t *job = NULL;
    int rc = kiln_broker_get_job(broker, id, &job, &err);
    if (rc != 0)
        return kiln_cli_report("job", rc, &err);
    snprintf(f.state, sizeof f.state, "%s", kiln_cli_json_str(job, "state", "unknown"));
    f.progress = kiln_cli_json_num(job, "progress");
    if (!state_is_final(f.state)) {
        if (!json && f.tty)
            draw_bar(&f, kiln_cli_json_str(job, "progress_message", NULL));
        else if (!json)
            print_event_line(&f, NULL, kiln_cli_json_str(job, "progress_message", NULL));
        json_decref(job);
        job = NULL;
        rc = kiln_broker_wait_job(broker, id, timeout_ms, on_job_event, &f, &job, &err);
        if (rc == KILN_ETIMEOUT) {
            json_decref(job);
            return report_timeout(&f, timeout_ms);
        }
        if (rc != 0 || !job) {
            json_decref(job);
            if (f.tty && f.bar_drawn)
                putchar('\n');
            return kiln_cli_report("job", rc ? rc : KILN_ENOTFOUND, &err);
        }
    }
    rc = finish(&f, job);
    json_decref(job);
    return rc;
}

/* ---- The command ---------------------------------------------------------- */

typedef struct job_opts {
    const char *id;
    bool wait;
    long timeout_ms;
    bool timeout_given;
} job_opts_t;

int kiln_cli_parse_seconds(const char *cmd, const char *flag, const char *text, long *ms)
{
    char *end = NULL;
    double seconds = strtod(text, &end);
    if (!*text || *end || !isfinite(seconds) || seconds < 0 || seconds > 31536000) {
        char safe[64];
        kiln_cli_sanitize(text, safe, sizeof safe);
        fprintf(stderr,
                "kiln %s: %s: expected seconds between 0 and 31536000 (0 = wait forever), "
                "got \"%s\"\n",
                cmd, flag, safe);
        return KILN_EXIT_USAGE;
    }
    *ms = (long)ceil(seconds * 1000.0);
    return 0;
}

static int parse_job_opts(int argc, char **argv, job_opts_t *o)
{
    static const struct option longopts[] = {
        {"wait", no_argument, NULL, 'w'}, {"timeout", required_argument, NULL, 't'}, {0}};
    memset(o, 0, sizeof *o);
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (c == 'w') {
            o->wait = true;
        } else if (c == 't') {
            o->timeout_given = true;
            if (kiln_cli_parse_seconds("job", "--timeout", optarg, &o->timeout_ms))
                return KILN_EXIT_USAGE;
        } else {
            fprintf(stderr, "kiln job: %s '%s' (see kiln job --help)\n",
                    c == ':' ? "missing value for" : "unknown option", argv[optind - 1]);
            return KILN_EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "kiln job: expected one job ID, got %d arguments (see kiln job --help)\n",
                argc - optind);
        return KILN_EXIT_USAGE;
    }
    if (o->timeout_given && !o->wait) {
        fprintf(stderr, "kiln job: --timeout only applies with --wait\n");
        return KILN_EXIT_USAGE;
    }
    o->id = argv[optind];
    return kiln_cli_check_job_id("job", o->id);
}

static int show_job(kiln_broker_t *broker, const char *id, bool json)
{
    kiln_err_t err = {0};
    json_t *job = NULL;
    int rc = kiln_broker_get_job(broker, id, &job, &err);
    if (rc != 0)
        return kiln_cli_report("job", rc, &err);
    if (json)
        kiln_cli_print_json(job);
    else
        print_job(job);
    json_decref(job);
    return KILN_EXIT_OK;
}

int kiln_cmd_job(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(job_usage, stdout);
        return KILN_EXIT_OK;
    }
    job_opts_t o;
    if ((rc = parse_job_opts(argc, argv, &o)) != 0)
        return rc;
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 || (rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    rc = o.wait ? kiln_cli_job_wait(broker, o.id, o.timeout_ms, g.json)
                : show_job(broker, o.id, g.json);
out:
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}
