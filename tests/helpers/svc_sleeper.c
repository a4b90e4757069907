/*
 * svc_sleeper: a service that runs until it is signalled.
 *
 *   --ignore-term        ignore SIGTERM (so only the SIGKILL that follows ends it)
 *   --pidfile PATH       append "PID\n" to PATH once started
 *   --child PATH         fork a child in the same group (ignoring SIGTERM too
 *                        with --ignore-term) that appends its pid to PATH
 *   --alloc-mb N         allocate N MiB and touch every page (for memory limits)
 *   --say TEXT           print TEXT on stdout and "err: TEXT" on stderr
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void append_pid(const char *path)
{
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n) {
        perror(path);
        exit(2);
    }
    close(fd);
}

int main(int argc, char **argv)
{
    const char *pidfile = NULL, *child_pidfile = NULL, *say = NULL;
    long alloc_mb = 0;
    int ignore_term = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ignore-term") == 0)
            ignore_term = 1;
        else if (strcmp(argv[i], "--pidfile") == 0 && i + 1 < argc)
            pidfile = argv[++i];
        else if (strcmp(argv[i], "--child") == 0 && i + 1 < argc)
            child_pidfile = argv[++i];
        else if (strcmp(argv[i], "--alloc-mb") == 0 && i + 1 < argc)
            alloc_mb = atol(argv[++i]);
        else if (strcmp(argv[i], "--say") == 0 && i + 1 < argc)
            say = argv[++i];
    }
    if (ignore_term)
        signal(SIGTERM, SIG_IGN);
    if (child_pidfile && fork() == 0) {
        append_pid(child_pidfile);
        for (;;)
            pause();
    }
    if (alloc_mb > 0) {
        size_t size = (size_t)alloc_mb * 1024 * 1024;
        char *mem = malloc(size);
        if (!mem)
            return 3;
        memset(mem, 0x5a, size);
    }
    if (say) {
        printf("%s\n", say);
        fflush(stdout);
        fprintf(stderr, "err: %s\n", say);
    }
    if (pidfile)
        append_pid(pidfile);
    for (;;)
        pause();
}
