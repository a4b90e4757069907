/*
 * kiln queues: per-service counts and how long the oldest pending job has
 * waited.
 */
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"

static const char queues_usage[] =
    "usage: kiln queues [global options]\n"
    "\n"
    "Shows every known service's queue as a table: SERVICE PENDING RUNNING\n"
    "DELAYED DEAD COMPLETED FAILED OLDEST-WAIT (how long the oldest pending job\n"
    "has waited, e.g. 3m12s).\n"
    "\n"
    "options:\n"
    "  --json   print the stats as a JSON array of {\"service\",\"pending\",\n"
    "           \"running\",\"delayed\",\"dead\",\"completed\",\"failed\",\n"
    "           \"cancelled\",\"oldest_pending_ms\"}\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  shown\n"
    "  1  reading the stats failed\n"
    "  2  usage error\n"
    "  3  Redis unreachable\n";

static const char *const count_keys[] = {"pending", "running",   "delayed",
                                         "dead",    "completed", "failed"};
#define N_COUNTS (sizeof count_keys / sizeof count_keys[0])

static int add_queue_row(kiln_table_t *t, const json_t *q)
{
    char counts[N_COUNTS][24], wait[32];
    const char *cells[N_COUNTS + 2];
    cells[0] = kiln_cli_json_str(q, "service", "-");
    for (size_t i = 0; i < N_COUNTS; i++) {
        snprintf(counts[i], sizeof counts[i], "%lld",
                 (long long)kiln_cli_json_int(q, count_keys[i]));
        cells[i + 1] = counts[i];
    }
    int64_t oldest = kiln_cli_json_int(q, "oldest_pending_ms");
    if (oldest > 0)
        kiln_cli_format_duration(oldest, wait, sizeof wait);
    else
        snprintf(wait, sizeof wait, "-");
    cells[N_COUNTS + 1] = wait;
    return kiln_table_add_row(t, cells);
}

static int print_queues_table(const json_t *stats)
{
    static const char *const headers[] = {"SERVICE", "PENDING",   "RUNNING", "DELAYED",
                                          "DEAD",    "COMPLETED", "FAILED",  "OLDEST-WAIT"};
    kiln_table_t t;
    if (kiln_table_init(&t, N_COUNTS + 2, headers) != 0)
        return kiln_cli_report("queues", KILN_ENOMEM, NULL);
    for (size_t c = 1; c < N_COUNTS + 2; c++)
        kiln_table_align_right(&t, c);
    size_t i;
    json_t *q;
    int rc = 0;
    json_array_foreach(stats, i, q)
    {
        if ((rc = add_queue_row(&t, q)) != 0)
            break;
    }
    if (rc == 0)
        kiln_table_print(&t, stdout);
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("queues", rc, NULL);
}

int kiln_cmd_queues(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(queues_usage, stdout);
        return KILN_EXIT_OK;
    }
    if (argc > 1) {
        fprintf(stderr, "kiln queues: unexpected argument '%s' (see kiln queues --help)\n",
                argv[1]);
        return KILN_EXIT_USAGE;
    }
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    json_t *stats = NULL;
    kiln_err_t err = {0};
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 || (rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    if ((rc = kiln_broker_queue_stats(broker, &stats, &err)) != 0) {
        rc = kiln_cli_report("queues", rc, &err);
        goto out;
    }
    if (g.json)
        kiln_cli_print_json(stats);
    else
        rc = print_queues_table(stats);
out:
    json_decref(stats);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}
