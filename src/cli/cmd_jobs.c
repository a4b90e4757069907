/*
 * kiln jobs [--service S] [--status STATE] [--limit N]: a table of jobs.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"

static const char jobs_usage[] =
    "usage: kiln jobs [--service S] [--status STATE] [--limit N] [global options]\n"
    "\n"
    "Lists jobs, newest first within each state, as a table:\n"
    "ID SERVICE STATE PRIORITY ATTEMPTS PROGRESS AGE.\n"
    "\n"
    "options:\n"
    "  --service S      only jobs of this service (default: every service)\n"
    "  --status STATE   only jobs in this state: pending, delayed, running,\n"
    "                   completed, failed, cancelled or dead\n"
    "  --limit N        at most N jobs, 1..100000 (default 100)\n"
    "  --json           print the jobs as a JSON array\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  listed (possibly nothing)\n"
    "  1  the listing failed\n"
    "  2  usage error (unknown state, bad limit)\n"
    "  3  Redis unreachable\n";

#define LIMIT_MAX 100000

static const char *const job_states[] = {"pending", "delayed",   "running", "completed",
                                         "failed",  "cancelled", "dead"};

typedef struct jobs_opts {
    kiln_job_filter_t filter;
} jobs_opts_t;

static int check_state(const char *state)
{
    for (size_t i = 0; i < sizeof job_states / sizeof job_states[0]; i++) {
        if (strcmp(state, job_states[i]) == 0)
            return 0;
    }
    char safe[64];
    kiln_cli_sanitize(state, safe, sizeof safe);
    fprintf(stderr,
            "kiln jobs: --status: expected one of pending, delayed, running, completed, "
            "failed, cancelled, dead; got \"%s\"\n",
            safe);
    return KILN_EXIT_USAGE;
}

static int parse_limit(const char *text, size_t *limit)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (!*text || *end || errno != 0 || n < 1 || n > LIMIT_MAX) {
        char safe[64];
        kiln_cli_sanitize(text, safe, sizeof safe);
        fprintf(stderr, "kiln jobs: --limit: expected an integer 1-%d, got \"%s\"\n", LIMIT_MAX,
                safe);
        return KILN_EXIT_USAGE;
    }
    *limit = (size_t)n;
    return 0;
}

static int parse_jobs_opts(int argc, char **argv, jobs_opts_t *o)
{
    static const struct option longopts[] = {{"service", required_argument, NULL, 's'},
                                             {"status", required_argument, NULL, 't'},
                                             {"limit", required_argument, NULL, 'l'},
                                             {0}};
    memset(o, 0, sizeof *o);
    opterr = 0;
    optind = 1;
    int c, rc = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (c == 's') {
            o->filter.service = optarg;
        } else if (c == 't') {
            o->filter.state = optarg;
            rc = check_state(optarg);
        } else if (c == 'l') {
            rc = parse_limit(optarg, &o->filter.limit);
        } else {
            fprintf(stderr, "kiln jobs: %s '%s' (see kiln jobs --help)\n",
                    c == ':' ? "missing value for" : "unknown option", argv[optind - 1]);
            return KILN_EXIT_USAGE;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "kiln jobs: unexpected argument '%s' (see kiln jobs --help)\n",
                argv[optind]);
        return KILN_EXIT_USAGE;
    }
    return rc;
}

static int add_job_row(kiln_table_t *t, const json_t *job)
{
    char priority[24], attempts[48], progress[16], age[32];
    snprintf(priority, sizeof priority, "%lld", (long long)kiln_cli_json_int(job, "priority"));
    snprintf(attempts, sizeof attempts, "%lld/%lld", (long long)kiln_cli_json_int(job, "attempts"),
             (long long)kiln_cli_json_int(job, "max_attempts"));
    const char *state = kiln_cli_json_str(job, "state", "-");
    if (strcmp(state, "running") == 0 || kiln_cli_json_num(job, "progress") > 0)
        snprintf(progress, sizeof progress, "%.0f%%", kiln_cli_json_num(job, "progress"));
    else
        snprintf(progress, sizeof progress, "-");
    kiln_cli_format_age(kiln_cli_json_int(job, "created_at"), age, sizeof age);
    const char *cells[] = {kiln_cli_json_str(job, "id", "-"),
                           kiln_cli_json_str(job, "service", "-"),
                           state,
                           priority,
                           attempts,
                           progress,
                           age};
    return kiln_table_add_row(t, cells);
}

static int print_jobs_table(const json_t *jobs)
{
    static const char *const headers[] = {"ID",       "SERVICE",  "STATE", "PRIORITY",
                                          "ATTEMPTS", "PROGRESS", "AGE"};
    kiln_table_t t;
    if (kiln_table_init(&t, 7, headers) != 0)
        return kiln_cli_report("jobs", KILN_ENOMEM, NULL);
    for (size_t c = 3; c < 7; c++)
        kiln_table_align_right(&t, c);
    size_t i;
    json_t *job;
    int rc = 0;
    json_array_foreach(jobs, i, job)
    {
        if ((rc = add_job_row(&t, job)) != 0)
            break;
    }
    if (rc == 0)
        kiln_table_print(&t, stdout);
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("jobs", rc, NULL);
}

int kiln_cmd_jobs(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(jobs_usage, stdout);
        return KILN_EXIT_OK;
    }
    jobs_opts_t o;
    if ((rc = parse_jobs_opts(argc, argv, &o)) != 0)
        return rc;
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    json_t *jobs = NULL;
    kiln_err_t err = {0};
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 || (rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    if ((rc = kiln_broker_list_jobs(broker, &o.filter, &jobs, &err)) != 0) {
        rc = kiln_cli_report("jobs", rc, &err);
        goto out;
    }
    if (g.json)
        kiln_cli_print_json(jobs);
    else
        rc = print_jobs_table(jobs);
out:
    json_decref(jobs);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}
