/*
 * kiln workers: the live workers (those whose registration has not expired).
 */
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"

static const char workers_usage[] =
    "usage: kiln workers [global options]\n"
    "\n"
    "Lists live workers as a table: ID MACHINE SERVICES SLOTS BUSY SEEN (how\n"
    "long ago the worker last refreshed its registration).\n"
    "\n"
    "options:\n"
    "  --json   print the workers as a JSON array of the objects they registered\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  listed (possibly nothing)\n"
    "  1  reading the registry failed\n"
    "  2  usage error\n"
    "  3  Redis unreachable\n";

/* "a,b,c" from a JSON array of strings; "-" when empty. */
static void join_services(const json_t *services, char *out, size_t size)
{
    size_t used = 0, i;
    json_t *s;
    out[0] = '\0';
    json_array_foreach(services, i, s)
    {
        const char *name = json_string_value(s);
        if (!name)
            continue;
        int n = snprintf(out + used, size - used, "%s%s", used ? "," : "", name);
        if (n < 0 || (size_t)n >= size - used)
            break;
        used += (size_t)n;
    }
    if (!out[0])
        snprintf(out, size, "-");
}

static int add_worker_row(kiln_table_t *t, const json_t *w)
{
    char services[512], slots[24], busy[24], seen[40];
    join_services(json_object_get(w, "services"), services, sizeof services);
    snprintf(slots, sizeof slots, "%lld", (long long)kiln_cli_json_int(w, "concurrency"));
    snprintf(busy, sizeof busy, "%lld", (long long)kiln_cli_json_int(w, "busy"));
    int64_t seen_at = kiln_cli_json_int(w, "seen_at");
    kiln_cli_format_age(seen_at, seen, sizeof seen);
    if (seen_at > 0)
        strncat(seen, " ago", sizeof seen - strlen(seen) - 1);
    const char *cells[] = {kiln_cli_json_str(w, "id", "-"),
                           kiln_cli_json_str(w, "machine_id", "-"),
                           services,
                           slots,
                           busy,
                           seen};
    return kiln_table_add_row(t, cells);
}

static int print_workers_table(const json_t *workers)
{
    static const char *const headers[] = {"ID", "MACHINE", "SERVICES", "SLOTS", "BUSY", "SEEN"};
    kiln_table_t t;
    if (kiln_table_init(&t, 6, headers) != 0)
        return kiln_cli_report("workers", KILN_ENOMEM, NULL);
    kiln_table_align_right(&t, 3);
    kiln_table_align_right(&t, 4);
    size_t i;
    json_t *w;
    int rc = 0;
    json_array_foreach(workers, i, w)
    {
        if ((rc = add_worker_row(&t, w)) != 0)
            break;
    }
    if (rc == 0)
        kiln_table_print(&t, stdout);
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("workers", rc, NULL);
}

int kiln_cmd_workers(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(workers_usage, stdout);
        return KILN_EXIT_OK;
    }
    if (argc > 1) {
        fprintf(stderr, "kiln workers: unexpected argument '%s' (see kiln workers --help)\n",
                argv[1]);
        return KILN_EXIT_USAGE;
    }
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    json_t *workers = NULL;
    kiln_err_t err = {0};
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 || (rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    if ((rc = kiln_broker_list_workers(broker, &workers, &err)) != 0) {
        rc = kiln_cli_report("workers", rc, &err);
        goto out;
    }
    if (g.json)
        kiln_cli_print_json(workers);
    else
        rc = print_workers_table(workers);
out:
    json_decref(workers);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}
