/*
 * exec_echo: a well-behaved exec-connector child. Reads the job JSON line
 * from stdin, reports three progress steps and answers with a result.
 *
 *   exec_echo            result: the job's payload
 *   exec_echo job        result: the whole job object it received
 *   exec_echo env NAME   result: the value of NAME in its environment, or null
 *   exec_echo cwd        result: its working directory
 *   exec_echo fds        result: how many descriptors it has open
 *   exec_echo noresult   progress only, then exit 0
 *   exec_echo nonewline  result 42 on a last line without a newline
 *   exec_echo noread     never reads stdin; result "unread"
 */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static json_t *read_job(void)
{
    json_error_t err;
    json_t *job = json_loadf(stdin, JSON_DISABLE_EOF_CHECK, &err);
    if (!job) {
        fprintf(stderr, "exec_echo: bad job on stdin: %s\n", err.text);
        exit(2);
    }
    return job;
}

static int count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    int n = 0;
    if (!dir)
        return -1;
    while (readdir(dir))
        n++;
    closedir(dir);
    return n - 3; /* ".", ".." and the directory's own descriptor */
}

static void emit(json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%s\n", text);
    fflush(stdout);
    free(text);
    json_decref(msg);
}

static json_t *answer(int argc, char **argv, json_t *job)
{
    const char *mode = argc > 1 ? argv[1] : "payload";
    if (strcmp(mode, "job") == 0)
        return json_incref(job);
    if (strcmp(mode, "env") == 0 && argc > 2)
        return getenv(argv[2]) ? json_string(getenv(argv[2])) : json_null();
    if (strcmp(mode, "cwd") == 0) {
        char buf[4096];
        return json_string(getcwd(buf, sizeof buf) ? buf : "?");
    }
    if (strcmp(mode, "fds") == 0)
        return json_integer(count_fds());
    return json_incref(json_object_get(job, "payload"));
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "payload";
    if (strcmp(mode, "noread") == 0) {
        printf("{\"result\":\"unread\"}\n");
        return 0;
    }
    json_t *job = read_job();
    static const int percent[] = {33, 67, 100};
    for (int step = 1; step <= 3; step++) {
        char message[32];
        snprintf(message, sizeof message, "step %d/3", step);
        emit(json_pack("{s:i, s:s}", "progress", percent[step - 1], "message", message));
    }
    if (strcmp(mode, "noresult") == 0) {
        json_decref(job);
        return 0;
    }
    if (strcmp(mode, "nonewline") == 0) {
        printf("{\"result\": 42}");
        json_decref(job);
        return 0;
    }
    emit(json_pack("{s:o}", "result", answer(argc, argv, job)));
    json_decref(job);
    return 0;
}
