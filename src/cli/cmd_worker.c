/* kiln worker: claims and runs jobs until SIGTERM/SIGINT. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "kiln/log.h"
#include "kiln/worker.h"

static const char usage_text[] =
    "usage: kiln worker [options]\n"
    "\n"
    "Claims jobs its connectors can run and runs them; stops on SIGTERM or SIGINT:\n"
    "no new claims, running jobs get worker.shutdown_grace_ms to finish, the rest\n"
    "go back to the queue without counting an attempt. A second signal hands them\n"
    "back at once.\n"
    "\n"
    "options (each overrides kiln.yaml and the environment):\n"
    "  --connectors A,B       services to serve (worker.connectors, WORKER_CONNECTORS)\n"
    "  --concurrency N        slots: jobs run at once, 1-1024 (worker.concurrency)\n"
    "  --capabilities JSON    capability object matched against job requirements\n"
    "  --id ID                worker id (default <machine id>-<pid>)\n"
    "  --grace-ms MS          shutdown grace period (worker.shutdown_grace_ms)\n"
    "  --config PATH, --redis URL, --log-format json|text, --log-level LEVEL\n"
    "\n"
    "exit codes: 0 stopped cleanly, 2 bad configuration, 3 redis unreachable at start,\n"
    "            1 jobs did not stop in time\n";

/* Each flag sets a config setting, checked as its environment variable. */
/* The readiness fd the supervisor passed (KILN_READY_FD, a number), kept
 * from the jobs' child processes; -1 when none is given or it is not open. */
static int ready_fd_from_env(void)
{
    const char *text = getenv("KILN_READY_FD");
    if (!text || !*text)
        return -1;
    char *end;
    long fd = strtol(text, &end, 10);
    if (*end || fd < 3 || fd > 1023 || fcntl((int)fd, F_SETFD, FD_CLOEXEC) != 0) {
        fprintf(stderr,
                "kiln worker: KILN_READY_FD: expected an open file descriptor number (3-1023), "
                "got \"%.32s\"; ignored\n",
                text);
        return -1;
    }
    return (int)fd;
}

static int apply_flag(kiln_config_t *cfg, const char *flag, const char *value)
{
    static const kiln_cli_flag_t flags[] = {{"--connectors", "worker.connectors"},
                                            {"--concurrency", "worker.concurrency"},
                                            {"--grace-ms", "worker.shutdown_grace_ms"},
                                            {"--id", "worker.id"},
                                            {"--capabilities", "worker.capabilities"}};
    return kiln_cli_apply_flag(cfg, "worker", flags, sizeof flags / sizeof flags[0], flag, value);
}

int kiln_cmd_worker(int argc, char **argv)
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
    for (int i = 1; rc == 0 && i < argc; i++) {
        const char *flag = argv[i], *eq = strchr(flag, '=');
        char name[32];
        const char *value;
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - flag), flag);
            value = eq + 1;
        } else if (i + 1 < argc && strncmp(flag, "--", 2) == 0) {
            snprintf(name, sizeof name, "%s", flag);
            value = argv[++i];
        } else {
            fprintf(stderr, "kiln worker: unexpected argument \"%s\" (see kiln worker --help)\n",
                    flag);
            rc = KILN_EXIT_USAGE;
            break;
        }
        rc = apply_flag(&cfg, name, value);
    }
    if (rc) {
        kiln_config_free(&cfg);
        return rc;
    }
    kiln_worker_t *w = NULL;
    kiln_err_t err = {0};
    if (kiln_worker_new(&cfg, &w, &err) != 0) {
        fprintf(stderr, "kiln worker: %s\n", err.msg);
        kiln_config_free(&cfg);
        return kiln_cli_exit_code(err.code);
    }
    kiln_worker_set_ready_fd(w, ready_fd_from_env());
    rc = kiln_worker_run(w, &err);
    if (rc)
        fprintf(stderr, "kiln worker: %s\n", err.msg);
    kiln_worker_free(w);
    kiln_config_free(&cfg);
    return rc ? KILN_EXIT_FAILED : KILN_EXIT_OK;
}
