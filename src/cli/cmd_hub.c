/* kiln hub: serves the job API in the foreground until SIGTERM/SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "kiln/hub.h"

static const char usage_text[] =
    "usage: kiln hub [options]\n"
    "\n"
    "Serves kiln's job API (docs/hub.md; OpenAPI at /openapi.json): jobs, live events\n"
    "(SSE and WebSocket), queues, workers, /metrics, and the earlier system's /api/jobs\n"
    "and /ws/client/{id}. Stateless: run several side by side on one Redis. Prints its\n"
    "URL, then serves until SIGTERM or SIGINT, when live streams end and requests\n"
    "in flight finish.\n"
    "\n"
    "With no tokens (hub.tokens, KILN_HUB_TOKENS=NAME:ROLE:TOKEN,...) every request is\n"
    "allowed and the hub listens on loopback only.\n"
    "\n"
    "options (each overrides kiln.yaml and the environment):\n"
    "  --listen HOST:PORT     address (hub.listen, KILN_HUB_LISTEN; default 127.0.0.1:8080)\n"
    "  --threads N            request threads, 4-1024 (hub.threads)\n"
    "  --max-body-bytes N     request body limit (hub.max_body_bytes)\n"
    "  --config PATH, --redis URL, --log-format json|text, --log-level LEVEL\n"
    "\n"
    "exit codes: 0 stopped cleanly, 2 bad configuration, 3 redis unreachable at start,\n"
    "            1 could not listen\n";

static int apply_flag(kiln_config_t *cfg, const char *flag, const char *value)
{
    static const kiln_cli_flag_t flags[] = {{"--listen", "hub.listen"},
                                            {"--threads", "hub.threads"},
                                            {"--max-body-bytes", "hub.max_body_bytes"}};
    return kiln_cli_apply_flag(cfg, "hub", flags, sizeof flags / sizeof flags[0], flag, value);
}

static int parse_flags(int argc, char **argv, kiln_config_t *cfg)
{
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *eq = strchr(flag, '=');
        char name[32];
        const char *value;
        if (eq && strncmp(flag, "--", 2) == 0) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - flag), flag);
            value = eq + 1;
        } else if (i + 1 < argc && strncmp(flag, "--", 2) == 0) {
            snprintf(name, sizeof name, "%s", flag);
            value = argv[++i];
        } else {
            fprintf(stderr, "kiln hub: unexpected argument \"%s\" (see kiln hub --help)\n", flag);
            return KILN_EXIT_USAGE;
        }
        int rc = apply_flag(cfg, name, value);
        if (rc)
            return rc;
    }
    return 0;
}

int kiln_cmd_hub(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc)
        return rc;
    if (g.help) {
        fputs(usage_text, stdout);
        return KILN_EXIT_OK;
    }
    kiln_config_t cfg;
    rc = kiln_cli_load_config(&g, &cfg);
    if (rc == 0)
        rc = parse_flags(argc, argv, &cfg);
    if (rc) {
        kiln_config_free(&cfg);
        return rc;
    }
    /* Signals are taken with sigwait on this thread; every other thread
     * (civetweb's, the event reader) inherits the blocked mask. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    kiln_hub_t *hub = NULL;
    kiln_err_t err = {0};
    if (kiln_hub_new(&cfg, &hub, &err) != 0) {
        fprintf(stderr, "kiln hub: %s\n", err.msg);
        kiln_config_free(&cfg);
        return err.code == KILN_EREDIS ? KILN_EXIT_UNAVAILABLE : KILN_EXIT_FAILED;
    }
    printf("kiln hub listening on %s\n", kiln_hub_url(hub));
    fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    kiln_hub_free(hub);
    kiln_config_free(&cfg);
    return KILN_EXIT_OK;
}
