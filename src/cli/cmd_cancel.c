/*
 * kiln cancel ID...: cancels each job. Also holds the loop shared with
 * `kiln retry`: one broker call per id, one line per id, exit 1 if any failed.
 */
#include <getopt.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"

static const char cancel_usage[] =
    "usage: kiln cancel ID... [global options]\n"
    "\n"
    "Cancels each job. A pending or delayed job will not run; a running job's\n"
    "worker is told at once and stops it. Prints \"cancelled ID\" for each, or\n"
    "the reason it could not be (already finished, not found).\n"
    "\n"
    "options:\n"
    "  --json   print [{\"id\":...,\"ok\":bool,\"error\":...}, ...]\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  every job was cancelled\n"
    "  1  at least one could not be (finished already, not found)\n"
    "  2  usage error (no id, invalid id): nothing was cancelled\n"
    "  3  Redis unreachable\n";

/* Applies op to one id and reports the outcome: a line on stdout or
 * stderr, or an element of results (json). Returns the broker's code. */
static int apply_one(kiln_broker_t *broker, const kiln_cli_job_op_t *op, const char *id,
                     json_t *results)
{
    kiln_err_t err = {0};
    int rc = op->call(broker, id, &err);
    const char *msg = err.msg[0] ? err.msg : kiln_strerror(rc);
    if (results) {
        json_t *item = json_pack("{s:s, s:b}", "id", id, "ok", rc == 0);
        if (item && rc != 0)
            json_object_set_new(item, "error", json_string(msg));
        json_array_append_new(results, item);
    } else if (rc == 0) {
        printf("%s %s\n", op->done_verb, id);
    } else {
        char safe[KILN_ERR_MSG_MAX];
        kiln_cli_sanitize(msg, safe, sizeof safe);
        /* Broker messages usually name the job; add the id when this one does not. */
        if (strstr(msg, id))
            fprintf(stderr, "kiln %s: %s\n", op->name, safe);
        else
            fprintf(stderr, "kiln %s: %s: %s\n", op->name, id, safe);
    }
    return rc;
}

static int check_ids(int argc, char **argv, const kiln_cli_job_op_t *op)
{
    static const struct option no_options[] = {{0}};
    opterr = 0;
    optind = 1;
    if (getopt_long(argc, argv, ":", no_options, NULL) != -1) {
        fprintf(stderr, "kiln %s: unknown option '%s' (see kiln %s --help)\n", op->name,
                argv[optind - 1], op->name);
        return KILN_EXIT_USAGE;
    }
    if (optind >= argc) {
        fprintf(stderr, "kiln %s: expected at least one job ID (see kiln %s --help)\n", op->name,
                op->name);
        return KILN_EXIT_USAGE;
    }
    for (int i = optind; i < argc; i++) {
        if (kiln_cli_check_job_id(op->name, argv[i]) != 0)
            return KILN_EXIT_USAGE;
    }
    return 0;
}

static int apply_all(kiln_broker_t *broker, int first, int argc, char **argv,
                     const kiln_cli_job_op_t *op, bool json)
{
    json_t *results = json ? json_array() : NULL;
    bool any_failed = false, redis_lost = false;
    for (int i = first; i < argc && !redis_lost; i++) {
        int rc = apply_one(broker, op, argv[i], results);
        any_failed = any_failed || rc != 0;
        redis_lost = rc == KILN_EREDIS;
    }
    if (results)
        kiln_cli_print_json(results);
    json_decref(results);
    fflush(stdout);
    if (redis_lost)
        return KILN_EXIT_UNAVAILABLE;
    return any_failed ? KILN_EXIT_FAILED : KILN_EXIT_OK;
}

int kiln_cli_run_job_op(int argc, char **argv, const kiln_cli_job_op_t *op)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(op->usage, stdout);
        return KILN_EXIT_OK;
    }
    if ((rc = check_ids(argc, argv, op)) != 0)
        return rc;
    int first = optind;
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    if ((rc = kiln_cli_load_config(&g, &cfg)) == 0 && (rc = kiln_cli_connect(&cfg, &broker)) == 0)
        rc = apply_all(broker, first, argc, argv, op, g.json);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}

static int cancel_call(struct kiln_broker *broker, const char *id, struct kiln_err *err)
{
    return kiln_broker_cancel(broker, id, err);
}

int kiln_cmd_cancel(int argc, char **argv)
{
    static const kiln_cli_job_op_t op = {"cancel", cancel_usage, "cancelled", cancel_call};
    return kiln_cli_run_job_op(argc, argv, &op);
}
