/* kiln machine run | reload: the machine agent in the foreground, and
 * asking a running one to reload its configuration. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/file.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "kiln/agent.h"

static const char run_usage[] =
    "usage: kiln machine run [--config PATH] [--state-dir DIR] [--gpus N]\n"
    "\n"
    "Runs the machine agent: builds the service plan from the configuration and\n"
    "the GPUs found, starts and supervises the services, publishes the machine's\n"
    "status and lifecycle events to Redis. SIGHUP reloads the configuration\n"
    "(only what changed restarts); SIGTERM or SIGINT stop everything gracefully.\n"
    "\n"
    "  --state-dir DIR   state file, pid file and service logs (default .kiln/machine)\n"
    "  --gpus N          pretend N GPUs (dry runs, tests); default: discover\n"
    "  --status-ms MS    full status to Redis every MS (default 15000)\n"
    "  --api ADDR        machine API address (default 127.0.0.1:<machine.health_port>;\n"
    "                    port 0 picks a free one, written to DIR/api.port)\n"
    "\n"
    "exit codes: 0 stopped cleanly, 2 bad configuration, 1 could not start\n";

static const char reload_usage[] =
    "usage: kiln machine reload [--state-dir DIR]\n"
    "\n"
    "Tells the agent whose pid file is in DIR (default .kiln/machine) to reload\n"
    "its configuration (SIGHUP). exit codes: 0 sent, 1 no running agent\n";

static int take(int *i, int argc, char **argv, const char **out)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "kiln machine: %s needs a value\n", argv[*i]);
        return KILN_EXIT_USAGE;
    }
    *out = argv[++*i];
    return 0;
}

static int parse_int(const char *flag, const char *text, long min, long max, long *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v < min || v > max) {
        fprintf(stderr, "kiln machine: %s: expected an integer %ld-%ld, got \"%s\"\n", flag, min,
                max, text);
        return KILN_EXIT_USAGE;
    }
    *out = v;
    return 0;
}

static int parse_run_flags(int argc, char **argv, kiln_agent_options_t *opts)
{
    for (int i = 1; i < argc; i++) {
        const char *value = NULL;
        long n = 0;
        int rc = 0;
        if (!strcmp(argv[i], "--state-dir"))
            rc = take(&i, argc, argv, &opts->state_dir);
        else if (!strcmp(argv[i], "--api"))
            rc = take(&i, argc, argv, &opts->api_listen);
        else if (!strcmp(argv[i], "--gpus")) {
            if (!(rc = take(&i, argc, argv, &value)) &&
                !(rc = parse_int("--gpus", value, 0, 256, &n)))
                opts->gpu_override = (int)n;
        } else if (!strcmp(argv[i], "--status-ms")) {
            if (!(rc = take(&i, argc, argv, &value)))
                rc = parse_int("--status-ms", value, 100, 3600000, &opts->status_interval_ms);
        } else {
            fprintf(stderr, "kiln machine run: unknown option %s (see --help)\n", argv[i]);
            return KILN_EXIT_USAGE;
        }
        if (rc)
            return rc;
    }
    return 0;
}

int kiln_cmd_machine_run(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc)
        return rc;
    if (g.help) {
        fputs(run_usage, stdout);
        return KILN_EXIT_OK;
    }
    kiln_agent_options_t opts = {.config_path = g.config_path, .gpu_override = -1};
    if ((rc = parse_run_flags(argc, argv, &opts)) != 0)
        return rc;
    kiln_config_t cfg;
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0) {
        kiln_config_free(&cfg);
        return rc;
    }
    kiln_agent_t *agent = NULL;
    kiln_err_t err = {0};
    if (kiln_agent_new(&cfg, &opts, &agent, &err) != 0) {
        fprintf(stderr, "kiln machine run: %s\n", err.msg);
        kiln_config_free(&cfg);
        return KILN_EXIT_FAILED;
    }
    rc = kiln_agent_run(agent, &err);
    if (rc)
        fprintf(stderr, "kiln machine run: %s\n", err.msg);
    kiln_agent_free(agent);
    return rc ? kiln_cli_exit_code(rc) : KILN_EXIT_OK;
}

int kiln_cmd_machine_reload(int argc, char **argv)
{
    const char *dir = ".kiln/machine";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(reload_usage, stdout);
            return KILN_EXIT_OK;
        }
        if (strcmp(argv[i], "--state-dir") != 0) {
            fprintf(stderr, "kiln machine reload: unknown option %s (see --help)\n", argv[i]);
            return KILN_EXIT_USAGE;
        }
        if (take(&i, argc, argv, &dir))
            return KILN_EXIT_USAGE;
    }
    /* Only an agent holding the folder's lock is signalled: a stale pid
     * file may name another process by now. */
    char lock_path[1100];
    snprintf(lock_path, sizeof lock_path, "%s/agent.lock", dir);
    int lock_fd = open(lock_path, O_RDONLY | O_CLOEXEC);
    bool held = lock_fd >= 0 && flock(lock_fd, LOCK_SH | LOCK_NB) != 0;
    if (lock_fd >= 0)
        close(lock_fd);
    if (!held) {
        fprintf(stderr, "kiln machine reload: no agent is running with the state folder %s\n", dir);
        return KILN_EXIT_FAILED;
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/agent.pid", dir);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 1 || kill(pid, SIGHUP) != 0) {
        fprintf(stderr, "kiln machine reload: no running agent found through %s%s%s\n", path,
                f ? "" : ": ", f ? "" : strerror(errno));
        if (f)
            fclose(f);
        return KILN_EXIT_FAILED;
    }
    fclose(f);
    printf("reload requested (pid %d)\n", pid);
    return KILN_EXIT_OK;
}
