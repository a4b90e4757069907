/*
 * svc_forker: a service that forks a grandchild which sleeps forever and
 * writes its pid to PIDFILE (atomically). With --setsid the grandchild
 * leaves the service's session and process group first; with --exit the
 * service itself exits (code 1) once the pid file is written, leaving the
 * grandchild orphaned.
 *
 *   svc_forker PIDFILE [--setsid] [--exit]
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void write_pid_atomically(const char *path)
{
    char tmp[4096], line[32];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n || close(fd) != 0 || rename(tmp, path) != 0)
        _exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: svc_forker PIDFILE [--setsid] [--exit]\n");
        return 64;
    }
    int do_setsid = 0, do_exit = 0;
    for (int i = 2; i < argc; i++) {
        do_setsid |= strcmp(argv[i], "--setsid") == 0;
        do_exit |= strcmp(argv[i], "--exit") == 0;
    }
    int sync_pipe[2];
    if (pipe(sync_pipe) != 0)
        return 2;
    pid_t child = fork();
    if (child == 0) {
        close(sync_pipe[0]);
        if (do_setsid)
            setsid();
        write_pid_atomically(argv[1]);
        close(sync_pipe[1]);
        for (;;)
            pause();
    }
    close(sync_pipe[1]);
    char c;
    while (read(sync_pipe[0], &c, 1) > 0)
        ;
    printf("forker: grandchild %d started\n", (int)child);
    fflush(stdout);
    if (do_exit)
        return 1;
    for (;;)
        pause();
}
