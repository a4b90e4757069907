/*
 * svc_notify: a service that tells its supervisor it is ready by writing
 * "ready\n" to fd 3 after DELAY_MS milliseconds, then runs until signalled.
 *
 *   svc_notify DELAY_MS
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long delay_ms = argc > 1 ? atol(argv[1]) : 0;
    struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    if (write(3, "ready\n", 6) != 6) {
        perror("svc_notify: write to fd 3");
        return 2;
    }
    close(3);
    for (;;)
        pause();
}
