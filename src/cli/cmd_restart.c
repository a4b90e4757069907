/*
 * kiln restart SERVICE: asks the machine agent to restart one of its
 * services (POST /services/SERVICE/restart with the machine's token).
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"
#include "kiln/machine_api.h"

static const char restart_usage[] =
    "usage: kiln restart SERVICE [--json] [--api URL] [--token TOKEN] [global options]\n"
    "\n"
    "Asks the machine agent on this machine to restart SERVICE (it stops the\n"
    "service's process group and starts it again; dependants keep running).\n"
    "The agent's control endpoints need its token: set KILN_MACHINE_API_TOKEN\n"
    "(or --token) to the agent's machine.api_token.\n"
    "\n"
    "options:\n"
    "  --json          print the agent's reply as JSON\n"
    "  --api URL       the machine API (default http://127.0.0.1:<machine.health_port>)\n"
    "  --token TOKEN   the token (shows in ps: prefer the variable)\n"
    "  -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  the restart was accepted\n"
    "  1  no such service, a missing or wrong token, or another error\n"
    "  2  usage error\n"
    "  3  the machine API is unreachable or unavailable\n"
    "  4  timed out\n";

int kiln_cmd_restart(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc)
        return rc;
    if (g.help) {
        fputs(restart_usage, stdout);
        return KILN_EXIT_OK;
    }
    kiln_cli_api_t api;
    if ((rc = kiln_cli_api_setup("restart", &argc, argv, &g, &api)) != 0)
        return rc;
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "kiln restart: %s (see kiln restart --help)\n",
                argc < 2 ? "which service? (kiln services lists them)"
                         : "expected exactly one SERVICE");
        return KILN_EXIT_USAGE;
    }
    const char *service = argv[1];
    if (!kiln_machine_api_valid_service_name(service)) {
        char safe[80];
        kiln_cli_sanitize(service, safe, sizeof safe);
        fprintf(stderr,
                "kiln restart: service \"%s\": a service name is 1-64 characters of a-z, 0-9, "
                "'_' and '-', starting with a letter or digit\n",
                safe);
        return KILN_EXIT_USAGE;
    }
    char path[128];
    snprintf(path, sizeof path, "/services/%s/restart", service);
    json_t *reply = NULL;
    rc = kiln_cli_api_call("restart", &api, "POST", path, NULL, NULL, &reply);
    if (rc == 0) {
        if (g.json)
            kiln_cli_print_json(reply);
        else
            printf("restarting %s\n", service);
    }
    json_decref(reply);
    return rc;
}
