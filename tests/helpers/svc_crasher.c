/*
 * svc_crasher: a service that exits with CODE after DELAY_MS milliseconds.
 *
 *   svc_crasher CODE DELAY_MS [--pidfile PATH]   (PATH gets "PID\n" appended)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: svc_crasher CODE DELAY_MS [--pidfile PATH]\n");
        return 64;
    }
    int code = atoi(argv[1]);
    long delay_ms = atol(argv[2]);
    if (argc >= 5 && strcmp(argv[3], "--pidfile") == 0) {
        char line[32];
        int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
        int fd = open(argv[4], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, line, (size_t)n) != n)
            return 2;
        close(fd);
    }
    struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    fprintf(stderr, "crasher: exiting with %d\n", code);
    return code;
}
