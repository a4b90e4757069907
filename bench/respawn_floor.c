/*
 * respawn_floor: the least a supervisor can do, for bench/agent.sh to
 * measure the machine's own floor for a respawn the same way it measures
 * kiln, PM2 and supervisord.
 *
 *   bench_respawn_floor --probe BIN --dir DIR NAME...
 *
 * Starts `BIN --out DIR/NAME` for each NAME with posix_spawn (vfork + exec:
 * no page tables copied), prints "running N" on stdout once all are
 * spawned, then sleeps in a blocking waitpid(-1) and spawns a service again
 * the moment its process is reaped: no event loop, no state file, no
 * readiness, no logging pipes, no backoff. What remains of a respawn is
 * the kernel's: the victim's exit, the wakeup of the waiting parent, the
 * spawn, the exec and the probe's dynamic loading. SIGTERM ends it and
 * its services.
 */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SERVICES 1000

extern char **environ;

static pid_t pids[MAX_SERVICES];
static char *outs[MAX_SERVICES];
static size_t count;
static const char *probe;
static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

static pid_t spawn_one(size_t i)
{
    char *argv[] = {(char *)probe, "--out", outs[i], NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, probe, NULL, NULL, argv, environ);
    if (rc != 0) {
        fprintf(stderr, "respawn_floor: posix_spawn %s: %s\n", probe, strerror(rc));
        return -1;
    }
    return pid;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int first = 1;
    while (first + 1 < argc && strncmp(argv[first], "--", 2) == 0) {
        if (strcmp(argv[first], "--probe") == 0)
            probe = argv[first + 1];
        else if (strcmp(argv[first], "--dir") == 0)
            dir = argv[first + 1];
        first += 2;
    }
    if (!probe || !dir || first >= argc || argc - first > MAX_SERVICES) {
        fprintf(stderr, "usage: %s --probe BIN --dir DIR NAME... (at most %d)\n", argv[0],
                MAX_SERVICES);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: waitpid returns */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (int a = first; a < argc; a++, count++) {
        if (asprintf(&outs[count], "%s/%s", dir, argv[a]) < 0 ||
            (pids[count] = spawn_one(count)) < 0)
            return 1;
    }
    printf("running %zu\n", count);
    fflush(stdout);
    while (!stopping) {
        pid_t pid = waitpid(-1, NULL, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (size_t i = 0; i < count && !stopping; i++) {
            if (pids[i] == pid)
                pids[i] = spawn_one(i);
        }
    }
    for (size_t i = 0; i < count; i++) {
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    }
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
        ;
    return 0;
}
