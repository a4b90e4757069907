#include "kiln_test.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int64_t kiln_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_briefly(void)
{
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

bool kiln_test_wait_until(bool (*cond)(void *ctx), void *ctx, long timeout_ms)
{
    int64_t deadline = kiln_test_now_ms() + timeout_ms;
    for (;;) {
        if (cond(ctx))
            return true;
        if (kiln_test_now_ms() > deadline)
            return cond(ctx);
        pause_briefly();
    }
}

void kiln_test_dump_file(const char *title, const char *path)
{
    FILE *f = fopen(path, "r");
    fprintf(stderr, "----- %s (%s) -----\n", title, path);
    if (!f) {
        fprintf(stderr, "(cannot open: %s)\n", strerror(errno));
        return;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fclose(f);
    fprintf(stderr, "----- end of %s -----\n", title);
}

void kiln_test_tmpdir(char *out, size_t size)
{
    const char *base = getenv("TMPDIR");
    snprintf(out, size, "%s/kiln-test-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(out))
        fail_msg("mkdtemp %s: %s", out, strerror(errno));
}

static int free_loopback_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        fail_msg("cannot find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(addr.sin_port);
}

pid_t kiln_test_spawn(char *const argv[], char *const env_extra[], const char *log_path)
{
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        if (log_path) {
            int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd >= 0) {
            dup2(null_fd, 0);
            close(null_fd);
        }
        for (size_t i = 0; env_extra && env_extra[i]; i++)
            putenv(env_extra[i]);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

int kiln_test_wait_exit(pid_t pid, long timeout_ms)
{
    int64_t deadline = kiln_test_now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        if (kiln_test_now_ms() > deadline)
            return -1;
        pause_briefly();
    }
}

void kiln_test_kill(pid_t pid, int sig, long timeout_ms)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    if (kiln_test_wait_exit(pid, timeout_ms) == -1) {
        kill(pid, SIGKILL);
        kiln_test_wait_exit(pid, 5000);
    }
}

static bool redis_answers(void *ctx)
{
    kiln_test_redis_t *r = ctx;
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    bool ok = false;
    if (c && !c->err) {
        redisReply *reply = redisCommand(c, "PING");
        ok = reply && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0;
        if (reply)
            freeReplyObject(reply);
    }
    if (c)
        redisFree(c);
    return ok;
}

static void redis_launch(kiln_test_redis_t *r)
{
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    char *argv[] = {"/usr/bin/redis-server",
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    r->dir,
                    "--save",
                    "",
                    "--appendonly",
                    r->aof ? "yes" : "no",
                    "--appendfsync",
                    "always",
                    "--daemonize",
                    "no",
                    "--logfile",
                    "",
                    NULL};
    r->pid = kiln_test_spawn(argv, NULL, r->log_path);
    if (!kiln_test_wait_until(redis_answers, r, 10000)) {
        kiln_test_dump_file("redis log", r->log_path);
        fail_msg("redis-server on port %d did not answer PING", r->port);
    }
}

void kiln_test_redis_start(kiln_test_redis_t *r, bool aof)
{
    memset(r, 0, sizeof *r);
    r->aof = aof;
    kiln_test_tmpdir(r->dir, sizeof r->dir);
    snprintf(r->log_path, sizeof r->log_path, "%s/redis.log", r->dir);
    r->port = free_loopback_port();
    snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d", r->port);
    redis_launch(r);
}

void kiln_test_redis_stop(kiln_test_redis_t *r)
{
    kiln_test_kill(r->pid, SIGTERM, 10000);
    r->pid = 0;
}

void kiln_test_redis_restart(kiln_test_redis_t *r)
{
    if (r->pid)
        kiln_test_redis_stop(r);
    redis_launch(r);
}

void kiln_test_redis_destroy(kiln_test_redis_t *r)
{
    if (r->pid)
        kiln_test_redis_stop(r);
    char *argv[] = {"/bin/rm", "-rf", r->dir, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
}

redisContext *kiln_test_redis_connect(const kiln_test_redis_t *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    if (!c || c->err)
        fail_msg("connect to redis port %d failed", r->port);
    return c;
}

int kiln_test_run(char *const argv[], const char *stdin_text, char *out, size_t out_size)
{
    int in_pipe[2], out_pipe[2];
    if (pipe(in_pipe) < 0 || pipe(out_pipe) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(in_pipe[0], 0);
        dup2(out_pipe[1], 1);
        close(in_pipe[1]);
        close(out_pipe[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in_pipe[0]);
    close(out_pipe[1]);
    if (stdin_text) {
        size_t len = strlen(stdin_text), off = 0;
        signal(SIGPIPE, SIG_IGN);
        while (off < len) {
            ssize_t w = write(in_pipe[1], stdin_text + off, len - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
    }
    close(in_pipe[1]);
    size_t used = 0;
    char sink[4096];
    for (;;) {
        ssize_t n;
        if (out && used + 1 < out_size)
            n = read(out_pipe[0], out + used, out_size - 1 - used);
        else
            n = read(out_pipe[0], sink, sizeof sink);
        if (n <= 0)
            break;
        if (out && used + 1 < out_size)
            used += (size_t)n;
    }
    if (out && out_size)
        out[used] = '\0';
    close(out_pipe[0]);
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void kiln_test_redis_flush(const kiln_test_redis_t *r)
{
    redisContext *c = kiln_test_redis_connect(r);
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    redisFree(c);
}

kiln_broker_t *kiln_test_broker_connect(const kiln_test_redis_t *r, int64_t lease_ms)
{
    kiln_broker_options_t opts = {.redis_url = r->url,
                                  .max_payload_bytes = 1 << 20,
                                  .stream_max_len = 10000,
                                  .retention_age_s = 3600,
                                  .retention_count = 1000,
                                  .default_max_attempts = 3,
                                  .backoff_base_ms = 50,
                                  .backoff_max_ms = 200,
                                  .lease_ms = lease_ms};
    kiln_broker_t *broker = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_connect(&opts, &broker, &err) != 0)
        fail_msg("kiln_broker_connect %s: %s", r->url, err.msg);
    return broker;
}
