/*
 * kiln machines: every known machine with its state (online, busy,
 * offline); kiln wake MACHINE: send it a Wake-on-LAN packet.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"
#include "kiln/hub_machines.h"

static const char machines_usage[] =
    "usage: kiln machines [global options]\n"
    "\n"
    "Lists every machine the fleet has seen: ID STATE TYPE GPUS WORKERS JOBS SEEN.\n"
    "online: its agent or a worker is live; busy: all its workers' slots run jobs;\n"
    "offline: known from an earlier visit, nothing live now.\n"
    "\n"
    "options:\n"
    "  --json   print the machines as a JSON array (docs/hub-machines.md)\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes: 0 listed, 1 reading failed, 2 usage error, 3 Redis unreachable\n";

static const char wake_usage[] =
    "usage: kiln wake MACHINE [--mac MAC] [--address IPV4] [--port N] [global options]\n"
    "\n"
    "Sends a Wake-on-LAN magic packet to MACHINE. --mac (with --address, default\n"
    "255.255.255.255, and --port, default 9) stores how to wake it first, so later\n"
    "wakes (and jobs submitted with on_offline \"wake\") need only the name.\n"
    "\n"
    "exit codes: 0 sent, 1 unknown machine or no MAC known, 2 usage error,\n"
    "3 Redis unreachable\n";

static int hub_failed(const char *cmd, int rc, const kiln_hub_error_t *e)
{
    fprintf(stderr, "kiln %s: %s\n", cmd, e->message);
    return e->status == 400 ? KILN_EXIT_USAGE : kiln_cli_exit_code(rc);
}

static int add_machine_row(kiln_table_t *t, const json_t *m)
{
    char gpus[16], workers[16], jobs[16], seen[40];
    snprintf(gpus, sizeof gpus, "%zu", json_array_size(json_object_get(m, "gpus")));
    snprintf(workers, sizeof workers, "%zu", json_array_size(json_object_get(m, "workers")));
    snprintf(jobs, sizeof jobs, "%zu", json_array_size(json_object_get(m, "current_jobs")));
    int64_t seen_at = kiln_cli_json_int(m, "last_seen");
    kiln_cli_format_age(seen_at, seen, sizeof seen);
    if (seen_at > 0)
        strncat(seen, " ago", sizeof seen - strlen(seen) - 1);
    const char *cells[] = {kiln_cli_json_str(m, "id", "-"),
                           kiln_cli_json_str(m, "state", "-"),
                           kiln_cli_json_str(m, "machine_type", "-"),
                           gpus,
                           workers,
                           jobs,
                           seen};
    return kiln_table_add_row(t, cells);
}

static int print_machines(const json_t *machines)
{
    static const char *const headers[] = {"ID", "STATE", "TYPE", "GPUS", "WORKERS", "JOBS", "SEEN"};
    kiln_table_t t;
    if (kiln_table_init(&t, 7, headers) != 0)
        return kiln_cli_report("machines", KILN_ENOMEM, NULL);
    for (int col = 3; col <= 5; col++)
        kiln_table_align_right(&t, col);
    size_t i;
    json_t *m;
    int rc = 0;
    json_array_foreach(machines, i, m)
    {
        if ((rc = add_machine_row(&t, m)) != 0)
            break;
    }
    if (rc == 0)
        kiln_table_print(&t, stdout);
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("machines", rc, NULL);
}

int kiln_cmd_machines(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(machines_usage, stdout);
        return KILN_EXIT_OK;
    }
    if (argc > 1) {
        fprintf(stderr, "kiln machines: unexpected argument '%s' (see kiln machines --help)\n",
                argv[1]);
        return KILN_EXIT_USAGE;
    }
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    json_t *machines = NULL;
    kiln_hub_error_t e = {0};
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 || (rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    if ((rc = kiln_hub_machines_list(broker, &machines, &e)) != 0) {
        rc = hub_failed("machines", rc, &e);
        goto out;
    }
    if (g.json)
        kiln_cli_print_json(machines);
    else
        rc = print_machines(machines);
out:
    json_decref(machines);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}

typedef struct wake_args {
    const char *machine, *mac, *address;
    int port;
} wake_args_t;

static int parse_wake_args(int argc, char **argv, wake_args_t *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        bool valued =
            !strcmp(flag, "--mac") || !strcmp(flag, "--address") || !strcmp(flag, "--port");
        if (valued && i + 1 >= argc) {
            fprintf(stderr, "kiln wake: %s needs a value\n", flag);
            return KILN_EXIT_USAGE;
        }
        if (!strcmp(flag, "--mac")) {
            a->mac = argv[++i];
        } else if (!strcmp(flag, "--address")) {
            a->address = argv[++i];
        } else if (!strcmp(flag, "--port")) {
            char *end;
            long port = strtol(argv[++i], &end, 10);
            if (*end || port < 1 || port > 65535) {
                fprintf(stderr, "kiln wake: --port: expected 1-65535, got \"%s\"\n", argv[i]);
                return KILN_EXIT_USAGE;
            }
            a->port = (int)port;
        } else if (flag[0] == '-' || a->machine) {
            fprintf(stderr, "kiln wake: unexpected argument '%s' (see kiln wake --help)\n", flag);
            return KILN_EXIT_USAGE;
        } else {
            a->machine = flag;
        }
    }
    if (!a->machine) {
        fputs(wake_usage, stderr);
        return KILN_EXIT_USAGE;
    }
    if ((a->address || a->port) && !a->mac) {
        fprintf(stderr, "kiln wake: --address and --port go with --mac\n");
        return KILN_EXIT_USAGE;
    }
    return 0;
}

int kiln_cmd_wake(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(wake_usage, stdout);
        return KILN_EXIT_OK;
    }
    wake_args_t a;
    if ((rc = parse_wake_args(argc, argv, &a)) != 0)
        return rc;
    kiln_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    kiln_broker_t *broker = NULL;
    json_t *sent = NULL;
    kiln_hub_error_t e = {0};
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0 || (rc = kiln_cli_connect(&cfg, &broker)) != 0)
        goto out;
    if (a.mac &&
        (rc = kiln_hub_machine_set_wake(broker, a.machine, a.mac, a.address, a.port, &e)) != 0) {
        rc = hub_failed("wake", rc, &e);
        goto out;
    }
    if ((rc = kiln_hub_wake(broker, a.machine, &sent, &e)) != 0) {
        rc = hub_failed("wake", rc, &e);
        goto out;
    }
    if (g.json)
        kiln_cli_print_json(sent);
    else
        printf("sent Wake-on-LAN to %s (%s) via %s:%lld\n", a.machine,
               kiln_cli_json_str(sent, "mac", "?"), kiln_cli_json_str(sent, "address", "?"),
               (long long)kiln_cli_json_int(sent, "port"));
out:
    json_decref(sent);
    if (broker)
        kiln_broker_free(broker);
    kiln_config_free(&cfg);
    return rc;
}
