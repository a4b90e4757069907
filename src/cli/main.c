/* kiln: one binary, one subcommand per file (src/cli/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

static const kiln_command_t commands[] = {
    {"config", "check or show the effective configuration", kiln_cmd_config},
    {"worker", "run a worker that claims and runs jobs", kiln_cmd_worker},
    {"submit", "submit a job (or N copies) to a service's queue", kiln_cmd_submit},
    {"job", "show a job, or follow it to the end with --wait", kiln_cmd_job},
    {"jobs", "list jobs by service and state", kiln_cmd_jobs},
    {"cancel", "cancel pending, delayed or running jobs", kiln_cmd_cancel},
    {"retry", "put failed, dead or cancelled jobs back to pending", kiln_cmd_retry},
    {"queues", "show per-service queue counts and the oldest wait", kiln_cmd_queues},
    {"workers", "list live workers, their services and slots", kiln_cmd_workers},
    {"machine", "show the machine's service plan and GPUs", kiln_cmd_machine},
    {"services", "list the machine agent's services and their state", kiln_cmd_services},
    {"logs", "show or follow a service's output on this machine", kiln_cmd_logs},
    {"restart", "restart a service of the machine agent", kiln_cmd_restart},
    {"machines", "list the fleet's machines: online, busy or offline", kiln_cmd_machines},
    {"wake", "send a machine a Wake-on-LAN packet", kiln_cmd_wake},
    {"hub", "serve the job API, live events and the compat API", kiln_cmd_hub},
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kiln COMMAND [options]   (kiln COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return KILN_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return KILN_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "kiln: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return KILN_EXIT_USAGE;
}
