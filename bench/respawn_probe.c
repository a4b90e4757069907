/*
 * respawn_probe: the service bench/agent.sh runs under kiln, PM2 and
 * supervisord alike. It records when it started, itself, so the time from a
 * kill to the respawn does not depend on anyone polling a status.
 *
 *   bench_respawn_probe --out FILE
 *
 * First thing in main, it appends "PID MONOTONIC_NS REALTIME_US\n" to FILE
 * (one write(2) on an O_APPEND descriptor, so lines never interleave), then
 * runs until a signal ends it. CLOCK_MONOTONIC is the clock Node's
 * process.hrtime.bigint() reads, so the harness takes the kill time on the
 * same clock without a subprocess; CLOCK_REALTIME is there for people.
 * It uses nothing from libkiln, so the linker keeps the start-up to libc.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    if (argc != 3 || strcmp(argv[1], "--out") != 0) {
        fprintf(stderr, "usage: %s --out FILE\n", argv[0]);
        return 2;
    }
    char line[96];
    int n = snprintf(line, sizeof line, "%ld %lld %lld\n", (long)getpid(),
                     (long long)mono.tv_sec * 1000000000LL + mono.tv_nsec,
                     (long long)real.tv_sec * 1000000LL + real.tv_nsec / 1000);
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n) {
        perror(argv[2]);
        return 2;
    }
    close(fd);
    for (;;)
        pause();
}
