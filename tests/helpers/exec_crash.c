/*
 * exec_crash: writes a long log to stderr and dies without an error line.
 *
 *   exec_crash code [N]   exit with code N (default 3)
 *   exec_crash signal     die by SIGABRT
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "code";
    char line[4096];
    while (fgets(line, sizeof line, stdin))
        ;
    printf("{\"progress\": 10}\n");
    fflush(stdout);
    for (int i = 1; i <= 200; i++)
        fprintf(stderr, "crash log line %d of 200: some diagnostic noise\n", i);
    fprintf(stderr, "fatal: out of cheese\n");
    fflush(stderr);
    if (strcmp(mode, "signal") == 0) {
        signal(SIGABRT, SIG_DFL);
        raise(SIGABRT);
    }
    return argc > 2 ? atoi(argv[2]) : 3;
}
