/*
 * exec_fail: reads its job, reports some progress, then says the job
 * failed with an error line.
 *
 *   exec_fail fatal [CODE]      {"error": ..., "retryable": false}, exit CODE (default 1)
 *   exec_fail retryable [CODE]  {"error": ..., "retryable": true}
 *   exec_fail noflag [CODE]     {"error": ...} without a retryable field
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "fatal";
    int code = argc > 2 ? atoi(argv[2]) : 1;
    char line[4096];
    while (fgets(line, sizeof line, stdin))
        ;
    printf("{\"progress\": 50, \"message\": \"loading model\"}\n");
    if (strcmp(mode, "fatal") == 0)
        printf("{\"error\": \"model not found: sdxl.safetensors\", \"retryable\": false}\n");
    else if (strcmp(mode, "retryable") == 0)
        printf("{\"error\": \"GPU busy\", \"retryable\": true}\n");
    else
        printf("{\"error\": \"something went wrong\"}\n");
    fprintf(stderr, "this stderr text must not appear in an error-line failure\n");
    return code;
}
