/*
 * exec_sleep: reads its job, reports one progress line and then waits
 * forever, to be cancelled or timed out.
 *
 *   --ignore-term   ignore SIGTERM (to be killed by the SIGKILL that follows)
 *   --grandchild    first fork a child that waits too; its pid is in the
 *                   progress message as "grandchild=PID"
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int ignore_term = 0, grandchild = 0;
    for (int i = 1; i < argc; i++) {
        ignore_term |= strcmp(argv[i], "--ignore-term") == 0;
        grandchild |= strcmp(argv[i], "--grandchild") == 0;
    }
    char line[4096];
    while (fgets(line, sizeof line, stdin))
        ;
    if (ignore_term)
        signal(SIGTERM, SIG_IGN);
    pid_t child = 0;
    if (grandchild && (child = fork()) == 0) {
        for (;;)
            pause();
    }
    printf("{\"progress\": 1, \"message\": \"grandchild=%d\"}\n", (int)child);
    fflush(stdout);
    for (;;)
        pause();
}
