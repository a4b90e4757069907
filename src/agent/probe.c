/*
 * Readiness probes: one attempt of an HTTP GET, a TCP connect or a command,
 * raced against a timer on the caller's loop.
 *
 * Lifetime: a probe holds one reference for itself plus one per open libuv
 * handle and per getaddrinfo request in flight. Finishing (the result is
 * known) or cancelling closes everything and drops the own reference; the
 * memory goes when the last close callback has run.
 *
 * Commands are started with posix_spawnp, not uv_spawn, because the
 * supervisor owns SIGCHLD in this process. Their exit is learned from a
 * pidfd polled on the loop (or, on kernels without pidfd_open, a short
 * polling timer) and reaped with waitpid on that pid only.
 */
#include "agent/probe.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PROBE_DEFAULT_TIMEOUT_MS 2000
#define PROBE_HOST_MAX           253
#define PROBE_PATH_MAX           1024
#define PROBE_RESPONSE_MAX       8192 /* the status line must fit in this */
#define PROBE_DETAIL_MAX         384
#define PROBE_REAP_POLL_MS       10 /* only without pidfd_open */

struct kiln_probe {
    uv_loop_t *loop;
    kiln_probe_cb cb;
    void *ctx;
    long timeout_ms;
    kiln_ready_kind_t kind;
    int refs;
    int port;      /* HTTP and TCP */
    pid_t pid;     /* COMMAND */
    int pidfd;     /* COMMAND: -1 when polling waitpid instead */
    bool finished; /* cb called, being called, or cancelled */
    bool starting; /* inside kiln_probe_start: failures wait for the loop */
    bool early;    /* the timer delivers `detail` (a failure found in start) */
    bool resolving;
    bool tcp_open;
    bool reaped;
    bool killed_at_timeout;
    bool exit_watch_open;
    size_t response_len;
    uv_timer_t timer;

    /* HTTP and TCP. */
    uv_getaddrinfo_t resolve_req;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;

    /* COMMAND: one of the two watches the exit. */
    uv_poll_t exit_poll;   /* on pidfd */
    uv_timer_t reap_timer; /* without pidfd_open */

    char detail[PROBE_DETAIL_MAX];
    char host[PROBE_HOST_MAX + 1];
    char path[PROBE_PATH_MAX + 1];
    char request[PROBE_PATH_MAX + PROBE_HOST_MAX + 64];
    char response[PROBE_RESPONSE_MAX];
};

static void probe_release(kiln_probe_t *p)
{
    if (--p->refs == 0)
        free(p);
}

static void on_handle_closed(uv_handle_t *handle)
{
    probe_release(handle->data);
}

static void on_exit_poll_closed(uv_handle_t *handle)
{
    kiln_probe_t *p = handle->data;
    /* The fd is closed only now that libuv no longer watches it. */
    close(p->pidfd);
    p->pidfd = -1;
    probe_release(p);
}

static void close_exit_watch(kiln_probe_t *p)
{
    if (!p->exit_watch_open)
        return;
    p->exit_watch_open = false;
    if (p->pidfd >= 0)
        uv_close((uv_handle_t *)&p->exit_poll, on_exit_poll_closed);
    else
        uv_close((uv_handle_t *)&p->reap_timer, on_handle_closed);
}

/* Closes what is open and drops the probe's own reference. A command that
 * still runs is killed; its exit watcher stays until the exit is reaped. */
static void probe_teardown(kiln_probe_t *p)
{
    uv_close((uv_handle_t *)&p->timer, on_handle_closed);
    if (p->tcp_open) {
        p->tcp_open = false;
        uv_close((uv_handle_t *)&p->tcp, on_handle_closed);
    }
    /* A lookup already running cannot be stopped: its callback comes later
     * with the probe finished and only drops its reference. */
    if (p->resolving)
        uv_cancel((uv_req_t *)&p->resolve_req);
    if (p->pid > 0 && !p->reaped)
        kill(-p->pid, SIGKILL);
    else
        close_exit_watch(p);
    probe_release(p);
}

static void probe_finish(kiln_probe_t *p, bool ok, const char *detail)
{
    if (p->finished)
        return;
    p->finished = true;
    uv_timer_stop(&p->timer);
    p->cb(p->ctx, ok, detail);
    probe_teardown(p);
}

static void on_timeout(uv_timer_t *timer);

/* Reports a failure; one found inside kiln_probe_start is delivered from the
 * loop (the timer, restarted at 0 ms), so that cb never runs inside start. */
static void probe_fail(kiln_probe_t *p, const char *detail)
{
    if (!p->starting) {
        probe_finish(p, false, detail);
        return;
    }
    snprintf(p->detail, sizeof p->detail, "%s", detail);
    p->early = true;
    uv_timer_stop(&p->timer);
    uv_timer_start(&p->timer, on_timeout, 0, 0);
}

/* ---- target parsing ---------------------------------------------------- */

static bool host_char_ok(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-';
}

/* Parses "host[:port]" from text[0..len) into p->host and p->port;
 * default_port < 0 means the port is required. */
static int parse_host_port(kiln_probe_t *p, const char *target, const char *text, size_t len,
                           int default_port, kiln_err_t *err)
{
    const char *colon = memchr(text, ':', len);
    size_t host_len = colon ? (size_t)(colon - text) : len;
    if (host_len == 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check target \"%s\": the host is missing; write host:port, "
                            "for example 127.0.0.1:8188",
                            target);
    if (host_len > PROBE_HOST_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check target \"%s\": the host is longer than %d characters",
                            target, PROBE_HOST_MAX);
    for (size_t i = 0; i < host_len; i++) {
        if (!host_char_ok(text[i]) || (i == 0 && (text[0] == '-' || text[0] == '.')))
            return kiln_err_set(err, KILN_EINVAL,
                                "ready check target \"%s\": the host must be an IPv4 address, "
                                "localhost or a host name (letters, digits, '.', '-')",
                                target);
    }
    memcpy(p->host, text, host_len);
    p->host[host_len] = '\0';

    if (!colon) {
        if (default_port < 0)
            return kiln_err_set(err, KILN_EINVAL,
                                "ready check target \"%s\": the port is missing; write host:port, "
                                "for example 127.0.0.1:8188",
                                target);
        p->port = default_port;
        return 0;
    }
    const char *digits = colon + 1;
    size_t n = len - host_len - 1;
    long port = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)digits[i]) || port > 65535)
            break;
        port = port * 10 + (digits[i] - '0');
        if (i + 1 == n && port >= 1 && port <= 65535) {
            p->port = (int)port;
            return 0;
        }
    }
    return kiln_err_set(err, KILN_EINVAL,
                        "ready check target \"%s\": expected a port 1-65535 after the ':', "
                        "got \"%.*s\"",
                        target, (int)(n > 16 ? 16 : n), digits);
}

static int parse_http_url(kiln_probe_t *p, const char *url, kiln_err_t *err)
{
    if (strncasecmp(url, "https://", 8) == 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check target \"%s\": https probes are not supported; probe "
                            "the service's plain http address or use a tcp check",
                            url);
    if (strncasecmp(url, "http://", 7) != 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check target \"%s\": expected an http://host:port/path URL",
                            url);
    const char *authority = url + 7;
    const char *slash = strchr(authority, '/');
    size_t authority_len = slash ? (size_t)(slash - authority) : strlen(authority);
    int rc = parse_host_port(p, url, authority, authority_len, 80, err);
    if (rc < 0)
        return rc;

    const char *path = slash ? slash : "/";
    size_t path_len = strcspn(path, "#"); /* a fragment is never sent */
    if (path_len > PROBE_PATH_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check target \"%s\": the path is longer than %d characters", url,
                            PROBE_PATH_MAX);
    for (size_t i = 0; i < path_len; i++) {
        if (path[i] <= 0x20 || path[i] >= 0x7f)
            return kiln_err_set(err, KILN_EINVAL,
                                "ready check target \"%s\": the path has a space or control "
                                "character; percent-encode it",
                                url);
    }
    memcpy(p->path, path, path_len);
    p->path[path_len] = '\0';
    return 0;
}

/* ---- HTTP and TCP -------------------------------------------------------- */

static void set_connect_failure(char *out, size_t size, int status)
{
    if (status == UV_ECONNREFUSED)
        snprintf(out, size, "connection refused");
    else
        snprintf(out, size, "connect failed: %s", uv_strerror(status));
}

/* Parses "HTTP/d.d SSS[ reason]" strictly; returns the status or -1. */
static int parse_status_line(const char *line, size_t len)
{
    if (len < 12 || memcmp(line, "HTTP/", 5) != 0 || !isdigit((unsigned char)line[5]) ||
        line[6] != '.' || !isdigit((unsigned char)line[7]) || line[8] != ' ')
        return -1;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (!isdigit((unsigned char)line[i]))
            return -1;
        status = status * 10 + (line[i] - '0');
    }
    if (len > 12 && line[12] != ' ')
        return -1;
    return status >= 100 && status <= 599 ? status : -1;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    kiln_probe_t *p = handle->data;
    buf->base = p->response + p->response_len;
    buf->len = sizeof p->response - p->response_len;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    kiln_probe_t *p = stream->data;
    if (p->finished)
        return;
    if (nread < 0) {
        char detail[PROBE_DETAIL_MAX];
        if (nread == UV_EOF)
            snprintf(detail, sizeof detail, "malformed response");
        else
            snprintf(detail, sizeof detail, "read failed: %s", uv_strerror((int)nread));
        probe_finish(p, false, detail);
        return;
    }
    p->response_len += (size_t)nread;
    const char *eol = memchr(p->response, '\n', p->response_len);
    if (!eol) {
        if (p->response_len == sizeof p->response)
            probe_finish(p, false, "malformed response");
        return;
    }
    size_t line_len = (size_t)(eol - p->response);
    if (line_len > 0 && p->response[line_len - 1] == '\r')
        line_len--;
    int status = parse_status_line(p->response, line_len);
    if (status < 0) {
        probe_finish(p, false, "malformed response");
        return;
    }
    char detail[32];
    snprintf(detail, sizeof detail, "HTTP %d", status);
    probe_finish(p, status >= 200 && status <= 399, detail);
}

static void on_written(uv_write_t *req, int status)
{
    kiln_probe_t *p = req->data;
    if (p->finished || status == 0)
        return;
    char detail[PROBE_DETAIL_MAX];
    snprintf(detail, sizeof detail, "sending the request failed: %s", uv_strerror(status));
    probe_finish(p, false, detail);
}

static void on_connected(uv_connect_t *req, int status)
{
    kiln_probe_t *p = req->data;
    if (p->finished)
        return;
    if (status < 0) {
        char detail[PROBE_DETAIL_MAX];
        set_connect_failure(detail, sizeof detail, status);
        probe_finish(p, false, detail);
        return;
    }
    if (p->kind == KILN_READY_TCP) {
        probe_finish(p, true, "connected");
        return;
    }
    uv_buf_t buf = uv_buf_init(p->request, (unsigned)strlen(p->request));
    p->write_req.data = p;
    int rc = uv_write(&p->write_req, (uv_stream_t *)&p->tcp, &buf, 1, on_written);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read);
    if (rc < 0) {
        char detail[PROBE_DETAIL_MAX];
        snprintf(detail, sizeof detail, "sending the request failed: %s", uv_strerror(rc));
        probe_finish(p, false, detail);
    }
}

static void connect_to(kiln_probe_t *p, const struct sockaddr *addr)
{
    int rc = uv_tcp_init(p->loop, &p->tcp);
    if (rc == 0) {
        p->tcp.data = p;
        p->tcp_open = true;
        p->refs++;
        p->connect_req.data = p;
        rc = uv_tcp_connect(&p->connect_req, &p->tcp, addr, on_connected);
    }
    if (rc < 0) {
        char detail[PROBE_DETAIL_MAX];
        set_connect_failure(detail, sizeof detail, rc);
        probe_fail(p, detail);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    kiln_probe_t *p = req->data;
    p->resolving = false;
    if (p->finished) {
        uv_freeaddrinfo(res);
        probe_release(p);
        return;
    }
    /* Unfinished, the probe still holds its own and its timer's references,
     * so dropping the lookup's one here never frees it. */
    p->refs--;
    if (status < 0 || !res) {
        char detail[PROBE_DETAIL_MAX];
        snprintf(detail, sizeof detail, "cannot resolve %s: %s", p->host,
                 uv_strerror(status < 0 ? status : UV_EAI_NONAME));
        probe_finish(p, false, detail);
    } else {
        connect_to(p, res->ai_addr);
    }
    uv_freeaddrinfo(res);
}

/* Checks the target and prepares the request; opens nothing. */
static int prepare_network(kiln_probe_t *p, const kiln_ready_check_t *check, kiln_err_t *err)
{
    const char *target = check->target ? check->target : "";
    int rc = check->kind == KILN_READY_HTTP
                 ? parse_http_url(p, target, err)
                 : parse_host_port(p, target, target, strlen(target), -1, err);
    if (rc < 0)
        return rc;
    if (check->kind == KILN_READY_HTTP) {
        /* RFC 9110: the Host header carries the port unless it is the default. */
        char port_suffix[8] = "";
        if (p->port != 80)
            snprintf(port_suffix, sizeof port_suffix, ":%d", p->port);
        snprintf(p->request, sizeof p->request,
                 "GET %s HTTP/1.0\r\nHost: %s%s\r\nConnection: close\r\n\r\n", p->path, p->host,
                 port_suffix);
    }
    return 0;
}

static void start_network(kiln_probe_t *p)
{
    /* localhost is pinned to IPv4 loopback: services listen there, and a
     * resolver answering ::1 first would make a healthy service look down. */
    const char *literal = strcasecmp(p->host, "localhost") == 0 ? "127.0.0.1" : p->host;
    struct sockaddr_in addr;
    if (uv_ip4_addr(literal, p->port, &addr) == 0) {
        connect_to(p, (const struct sockaddr *)&addr);
        return;
    }
    char port_text[8];
    snprintf(port_text, sizeof port_text, "%d", p->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    p->resolve_req.data = p;
    int rc = uv_getaddrinfo(p->loop, &p->resolve_req, on_resolved, p->host, port_text, &hints);
    if (rc < 0) {
        char detail[PROBE_DETAIL_MAX];
        snprintf(detail, sizeof detail, "cannot resolve %s: %s", p->host, uv_strerror(rc));
        probe_fail(p, detail);
        return;
    }
    p->resolving = true;
    p->refs++;
}

/* ---- COMMAND --------------------------------------------------------------- */

static void describe_exit(char *out, size_t size, int wstatus)
{
    if (WIFEXITED(wstatus))
        snprintf(out, size, "exit %d", WEXITSTATUS(wstatus));
    else if (WIFSIGNALED(wstatus))
        snprintf(out, size, "killed by signal %d", WTERMSIG(wstatus));
    else
        snprintf(out, size, "wait status %d", wstatus);
}

/* Reaps the command when it has exited; returns false while it still runs. */
static bool try_reap(kiln_probe_t *p, bool *ok, char *detail, size_t size)
{
    int wstatus = 0;
    pid_t got;
    do
        got = waitpid(p->pid, &wstatus, WNOHANG);
    while (got < 0 && errno == EINTR);
    if (got == 0)
        return false;
    p->reaped = true;
    /* Whatever the command left behind in its session's group (a
     * background child) goes with it; while any member lives, the group id
     * cannot have been reused. */
    kill(-p->pid, SIGKILL);
    if (got < 0) {
        /* Someone else (a waitpid(-1) elsewhere) took the status. */
        *ok = false;
        snprintf(detail, size, "exit status lost: %s", strerror(errno));
    } else {
        *ok = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
        describe_exit(detail, size, wstatus);
    }
    if (p->killed_at_timeout) {
        *ok = false;
        snprintf(detail, size, "timed out after %ld ms", p->timeout_ms);
    }
    return true;
}

static void on_command_maybe_exited(kiln_probe_t *p)
{
    bool ok = false;
    char detail[PROBE_DETAIL_MAX];
    if (!try_reap(p, &ok, detail, sizeof detail))
        return;
    close_exit_watch(p);
    p->pid = 0;
    if (p->finished)
        return; /* cancelled: the watcher only waited to reap it */
    probe_finish(p, ok, detail);
}

static void on_pidfd_readable(uv_poll_t *handle, int status, int events)
{
    on_command_maybe_exited(handle->data);
}

static void on_reap_tick(uv_timer_t *timer)
{
    on_command_maybe_exited(timer->data);
}

static int spawn_command(kiln_probe_t *p, char *const argv[], int *spawn_errno)
{
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    sigset_t none, all;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0)
        goto out;
    rc = posix_spawnattr_init(&attr);
    if (rc != 0)
        goto out_actions;
    sigemptyset(&none);
    sigfillset(&all);
    /* Its own session and process group (killed whole at the timeout or
     * once it exits; an orphan it leaves falls under the supervisor's rules
     * for other sessions), an empty signal mask and default dispositions:
     * the agent's own are none of its business. */
    if ((rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                                  POSIX_SPAWN_SETSIGDEF)) != 0 ||
        (rc = posix_spawnattr_setsigmask(&attr, &none)) != 0 ||
        (rc = posix_spawnattr_setsigdefault(&attr, &all)) != 0 ||
        (rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)) != 0 ||
        (rc = posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)) != 0 ||
        (rc = posix_spawn_file_actions_adddup2(&actions, 1, 2)) != 0)
        goto out_attr;
    /* glibc reports a failed exec here (and reaps that child itself). */
    rc = posix_spawnp(&p->pid, argv[0], &actions, &attr, argv, environ);
    if (rc != 0)
        p->pid = 0;
out_attr:
    posix_spawnattr_destroy(&attr);
out_actions:
    posix_spawn_file_actions_destroy(&actions);
out:
    *spawn_errno = rc;
    return rc == 0 ? 0 : -1;
}

/* A descriptor that becomes readable when pid exits; -1 on kernels before
 * 5.3 (no pidfd_open), where the caller falls back to polling waitpid. */
static int open_pidfd(pid_t pid)
{
#if defined(SYS_pidfd_open) && !defined(KILN_PROBE_NO_PIDFD)
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

static int watch_exit(kiln_probe_t *p)
{
    p->pidfd = open_pidfd(p->pid);
    if (p->pidfd >= 0) {
        int rc = uv_poll_init(p->loop, &p->exit_poll, p->pidfd);
        if (rc < 0) {
            close(p->pidfd);
            p->pidfd = -1;
            return rc;
        }
        p->exit_poll.data = p;
        p->exit_watch_open = true;
        p->refs++;
        return uv_poll_start(&p->exit_poll, UV_READABLE, on_pidfd_readable);
    }
    uv_timer_init(p->loop, &p->reap_timer);
    p->reap_timer.data = p;
    p->exit_watch_open = true;
    p->refs++;
    return uv_timer_start(&p->reap_timer, on_reap_tick, PROBE_REAP_POLL_MS, PROBE_REAP_POLL_MS);
}

static void start_command(kiln_probe_t *p, const kiln_ready_check_t *check)
{
    char detail[PROBE_DETAIL_MAX];
    int spawn_errno = 0;
    if (spawn_command(p, check->argv, &spawn_errno) < 0) {
        snprintf(detail, sizeof detail, "cannot run %s: %s", check->argv[0], strerror(spawn_errno));
        probe_fail(p, detail);
        return;
    }
    int rc = watch_exit(p);
    if (rc < 0) {
        /* Without a way to learn the exit, do not leave it running. */
        kill(-p->pid, SIGKILL);
        while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        p->pid = 0;
        p->reaped = true;
        close_exit_watch(p);
        snprintf(detail, sizeof detail, "cannot watch %s: %s", check->argv[0], uv_strerror(rc));
        probe_fail(p, detail);
    }
}

/* ---- public API ------------------------------------------------------------ */

static void on_timeout(uv_timer_t *timer)
{
    kiln_probe_t *p = timer->data;
    if (p->early) {
        probe_finish(p, false, p->detail);
        return;
    }
    if (p->kind == KILN_READY_COMMAND && p->pid > 0 && !p->reaped) {
        /* It may have exited just now: then its own status is the answer. */
        bool ok = false;
        char detail[PROBE_DETAIL_MAX];
        if (try_reap(p, &ok, detail, sizeof detail)) {
            close_exit_watch(p);
            p->pid = 0;
            probe_finish(p, ok, detail);
            return;
        }
        /* The answer waits for the reap, so that cb never sees it alive. */
        p->killed_at_timeout = true;
        kill(-p->pid, SIGKILL);
        return;
    }
    char detail[64];
    snprintf(detail, sizeof detail, "timed out after %ld ms", p->timeout_ms);
    probe_finish(p, false, detail);
}

int kiln_probe_start(uv_loop_t *loop, const kiln_ready_check_t *check, kiln_probe_cb cb, void *ctx,
                     kiln_probe_t **out, kiln_err_t *err)
{
    if (out)
        *out = NULL;
    if (!loop || !check || !cb)
        return kiln_err_set(err, KILN_EINVAL, "kiln_probe_start: loop, check and cb are required");
    if (check->kind != KILN_READY_HTTP && check->kind != KILN_READY_TCP &&
        check->kind != KILN_READY_COMMAND)
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check: kind %d cannot be probed; use http, tcp or command",
                            (int)check->kind);
    if (check->kind == KILN_READY_COMMAND &&
        (!check->argv || !check->argv[0] || !check->argv[0][0]))
        return kiln_err_set(err, KILN_EINVAL,
                            "ready check command: argv is empty; give the program to run and "
                            "its arguments");
    kiln_probe_t *p = calloc(1, sizeof *p);
    if (!p)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory starting a ready check");
    p->loop = loop;
    p->kind = check->kind;
    p->cb = cb;
    p->ctx = ctx;
    p->timeout_ms = check->timeout_ms > 0 ? check->timeout_ms : PROBE_DEFAULT_TIMEOUT_MS;
    p->pidfd = -1;
    if (check->kind != KILN_READY_COMMAND) {
        int rc = prepare_network(p, check, err);
        if (rc < 0) {
            free(p); /* nothing was opened yet */
            return rc;
        }
    }

    p->refs = 1;
    p->starting = true;
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    p->refs++;
    uv_timer_start(&p->timer, on_timeout, (uint64_t)p->timeout_ms, 0);
    if (check->kind == KILN_READY_COMMAND)
        start_command(p, check);
    else
        start_network(p);
    p->starting = false;
    if (out)
        *out = p;
    return 0;
}

void kiln_probe_cancel(kiln_probe_t *probe)
{
    if (!probe || probe->finished)
        return;
    probe->finished = true;
    probe_teardown(probe);
}

pid_t kiln_probe_pid(const kiln_probe_t *probe)
{
    return probe && probe->kind == KILN_READY_COMMAND && !probe->reaped ? probe->pid : 0;
}
