/*
 * Readiness probes: each test runs a libuv loop until the probe's callback
 * has fired, against servers the test runs itself on 127.0.0.1 (a plain
 * socket server thread) and real commands (/bin/true, /bin/false,
 * /bin/sleep). After every test the loop must drain and close cleanly, so a
 * probe that leaves a handle open fails here and one that leaks memory fails
 * under ASan.
 */
#include "kiln_test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "agent/probe.h"
#include "kiln/err.h"

#define SERVER_MAX_REPLIES 4
#define WAIT_LIMIT_MS      10000

/* ---- a tiny HTTP-ish server on a thread -------------------------------- */

typedef struct test_server {
    int listen_fd;
    int port;
    /* One reply per connection, in order; NULL = say nothing and hold the
     * connection until the client closes it. */
    const char *replies[SERVER_MAX_REPLIES];
    size_t reply_count;
    char first_request[512];
    atomic_int requests_seen;
    pthread_t thread;
} test_server_t;

/* A socket bound to a free loopback port; listening when listen_too. */
static int bind_free_port(bool listen_too, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    if (listen_too)
        assert_int_equal(listen(fd, 8), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    *port = ntohs(addr.sin_port);
    return fd;
}

/* Reads until the blank line that ends the request headers (or EOF). */
static void read_request(int fd, char *out, size_t size)
{
    size_t len = 0;
    out[0] = '\0';
    while (len + 1 < size) {
        ssize_t n = recv(fd, out + len, size - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        out[len] = '\0';
        if (strstr(out, "\r\n\r\n"))
            break;
    }
}

static void *server_main(void *arg)
{
    test_server_t *s = arg;
    for (size_t i = 0; i < s->reply_count; i++) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL; /* the test shut the listener down */
        char request[512];
        read_request(fd, request, sizeof request);
        if (i == 0)
            snprintf(s->first_request, sizeof s->first_request, "%s", request);
        if (request[0]) /* a client that closed at once asked nothing */
            atomic_fetch_add(&s->requests_seen, 1);
        if (s->replies[i]) {
            (void)!send(fd, s->replies[i], strlen(s->replies[i]), MSG_NOSIGNAL);
        } else {
            char sink[256];
            while (recv(fd, sink, sizeof sink, 0) > 0)
                ;
        }
        close(fd);
    }
    return NULL;
}

static void server_start(test_server_t *s, const char *const *replies, size_t count)
{
    memset(s, 0, sizeof *s);
    assert_true(count <= SERVER_MAX_REPLIES);
    for (size_t i = 0; i < count; i++)
        s->replies[i] = replies[i];
    s->reply_count = count;
    s->listen_fd = bind_free_port(true, &s->port);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_stop(test_server_t *s)
{
    /* Wakes a thread still blocked in accept. */
    shutdown(s->listen_fd, SHUT_RDWR);
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
}

/* ---- running probes ------------------------------------------------------ */

typedef struct probe_result {
    int calls;
    bool ok;
    char detail[384];
} probe_result_t;

static uv_loop_t loop;
static int fds_at_setup;

static int count_open_fds(void)
{
    uv_fs_t req;
    int n = uv_fs_scandir(NULL, &req, "/proc/self/fd", 0, NULL);
    uv_fs_req_cleanup(&req);
    return n;
}

/* libuv opens process-wide descriptors (its signal lock pipe) with the
 * first loop; open them before any test counts descriptors. */
static int group_setup(void **state)
{
    uv_loop_t first;
    assert_int_equal(uv_loop_init(&first), 0);
    assert_int_equal(uv_loop_close(&first), 0);
    return 0;
}

static int setup(void **state)
{
    fds_at_setup = count_open_fds();
    assert_int_equal(uv_loop_init(&loop), 0);
    return 0;
}

static int teardown(void **state)
{
    /* Every probe must have closed all it opened: the loop drains, no socket
     * or pidfd is left behind, and the loop closes. */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(count_open_fds(), fds_at_setup);
    return 0;
}

static void on_probe_done(void *ctx, bool ok, const char *detail)
{
    probe_result_t *r = ctx;
    r->calls++;
    r->ok = ok;
    snprintf(r->detail, sizeof r->detail, "%s", detail);
}

/* Runs the loop until r's callback has fired (bounded by WAIT_LIMIT_MS). */
static void run_until_done(probe_result_t *r)
{
    int64_t deadline = kiln_test_now_ms() + WAIT_LIMIT_MS;
    while (r->calls == 0 && kiln_test_now_ms() < deadline)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r->calls, 1);
}

static kiln_ready_check_t check_of(kiln_ready_kind_t kind, const char *target, long timeout_ms)
{
    kiln_ready_check_t check = {.kind = kind, .target = (char *)target, .timeout_ms = timeout_ms};
    return check;
}

/* Starts a probe that must be accepted and runs it to its answer. */
static probe_result_t probe_once(const kiln_ready_check_t *check)
{
    probe_result_t r = {0};
    kiln_err_t err = {0};
    kiln_probe_t *probe = NULL;
    int rc = kiln_probe_start(&loop, check, on_probe_done, &r, &probe, &err);
    if (rc != 0)
        fail_msg("kiln_probe_start: %s", err.msg);
    assert_non_null(probe);
    assert_int_equal(r.calls, 0); /* never called inside start */
    run_until_done(&r);
    return r;
}

static probe_result_t probe_url(const char *url, long timeout_ms)
{
    kiln_ready_check_t check = check_of(KILN_READY_HTTP, url, timeout_ms);
    return probe_once(&check);
}

/* Expects start to refuse check with KILN_EINVAL and a message containing
 * want, and the callback never to run. */
static void assert_refused(kiln_ready_kind_t kind, const char *target, const char *want)
{
    probe_result_t r = {0};
    kiln_err_t err = {0};
    kiln_probe_t *probe = (kiln_probe_t *)&r;
    kiln_ready_check_t check = check_of(kind, target, 0);
    assert_int_equal(kiln_probe_start(&loop, &check, on_probe_done, &r, &probe, &err), KILN_EINVAL);
    assert_null(probe);
    if (!strstr(err.msg, want))
        fail_msg("target \"%s\": message \"%s\" lacks \"%s\"", target, err.msg, want);
    assert_false(uv_loop_alive(&loop)); /* nothing was opened */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 0);
}

/* ---- HTTP ----------------------------------------------------------------- */

static void http_probe_ok_on_200_and_fails_on_503(void **state)
{
    const char *replies[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 302 Found\r\nLocation: /ui\r\n\r\n",
    };
    test_server_t s;
    server_start(&s, replies, 3);
    char url[128], want_request[256];

    snprintf(url, sizeof url, "http://127.0.0.1:%d/system_stats?x=1", s.port);
    probe_result_t r = probe_url(url, 2000);
    assert_true(r.ok);
    assert_string_equal(r.detail, "HTTP 200");
    snprintf(want_request, sizeof want_request,
             "GET /system_stats?x=1 HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
             s.port);
    assert_string_equal(s.first_request, want_request);

    snprintf(url, sizeof url, "http://localhost:%d", s.port); /* path defaults to / */
    r = probe_url(url, 2000);
    assert_false(r.ok);
    assert_string_equal(r.detail, "HTTP 503");

    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    r = probe_url(url, 2000);
    assert_true(r.ok);
    assert_string_equal(r.detail, "HTTP 302");
    server_stop(&s);
}

static void http_probe_connection_refused(void **state)
{
    int port;
    int fd = bind_free_port(false, &port); /* bound, not listening: refuses */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/health", port);
    probe_result_t r = probe_url(url, 2000);
    assert_false(r.ok);
    assert_string_equal(r.detail, "connection refused");
    close(fd);
}

static void http_probe_times_out_on_a_silent_server(void **state)
{
    const char *replies[] = {NULL};
    test_server_t s;
    server_start(&s, replies, 1);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    int64_t started = kiln_test_now_ms();
    probe_result_t r = probe_url(url, 200);
    int64_t took = kiln_test_now_ms() - started;
    assert_false(r.ok);
    assert_string_equal(r.detail, "timed out after 200 ms");
    assert_true(took >= 150 && took < 5000);
    assert_int_equal(atomic_load(&s.requests_seen), 1); /* it did connect and ask */
    /* The probe closed its connection, which lets the server thread finish. */
    uv_run(&loop, UV_RUN_DEFAULT);
    server_stop(&s);
}

static void http_probe_rejects_malformed_status_line(void **state)
{
    const char *replies[] = {
        "SSH-2.0-OpenSSH_9.2\r\n", "HTTP/1.1 2OO OK\r\n\r\n", "", /* closes without a word */
        "HTTP/1.1 200",                                           /* closes before the line ends */
    };
    test_server_t s;
    server_start(&s, replies, 4);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    for (size_t i = 0; i < 4; i++) {
        probe_result_t r = probe_url(url, 2000);
        assert_false(r.ok);
        assert_string_equal(r.detail, "malformed response");
    }
    server_stop(&s);
}

static void http_probe_with_https_url_is_refused_clearly(void **state)
{
    assert_refused(KILN_READY_HTTP, "https://127.0.0.1:8443/health",
                   "https probes are not supported");
    assert_refused(KILN_READY_HTTP, "HTTPS://example.com/", "https probes are not supported");
}

static void bad_urls_are_refused(void **state)
{
    assert_refused(KILN_READY_HTTP, "http://", "\"http://\": the host is missing");
    assert_refused(KILN_READY_HTTP, "http://host:99999/", "expected a port 1-65535");
    assert_refused(KILN_READY_HTTP, "http://host:/", "expected a port 1-65535");
    assert_refused(KILN_READY_HTTP, "ftp://x", "expected an http://host:port/path URL");
    assert_refused(KILN_READY_HTTP, "http://a b/", "the host must be an IPv4 address");
    assert_refused(KILN_READY_HTTP, "http://user@host/", "the host must be an IPv4 address");
    assert_refused(KILN_READY_HTTP, "http://127.0.0.1:80/a b", "percent-encode it");
    assert_refused(KILN_READY_HTTP, NULL, "expected an http://host:port/path URL");
    assert_refused(KILN_READY_TCP, "127.0.0.1", "the port is missing");
    assert_refused(KILN_READY_TCP, ":8188", "the host is missing");
    assert_refused(KILN_READY_TCP, "127.0.0.1:0", "expected a port 1-65535");
    assert_refused(KILN_READY_COMMAND, NULL, "argv is empty");
    assert_refused(KILN_READY_FD, NULL, "cannot be probed");
}

/* ---- TCP ------------------------------------------------------------------- */

/* This machine's own name when it resolves to 127.0.0.1 first (as
 * /etc/hosts commonly says), to exercise the resolver path; else false. */
static bool own_name_is_loopback(char *name, size_t size)
{
    if (gethostname(name, size) != 0 || !name[0])
        return false;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(name, "1", &hints, &res) != 0 || !res)
        return false;
    bool loopback = res->ai_family == AF_INET &&
                    ((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
    freeaddrinfo(res);
    return loopback && strcmp(name, "localhost") != 0;
}

static void tcp_probe_ok_and_refused(void **state)
{
    int port;
    int listening = bind_free_port(true, &port);
    char target[320];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    kiln_ready_check_t check = check_of(KILN_READY_TCP, target, 2000);
    probe_result_t r = probe_once(&check);
    assert_true(r.ok);

    char name[256];
    if (own_name_is_loopback(name, sizeof name)) {
        snprintf(target, sizeof target, "%s:%d", name, port);
        r = probe_once(&check);
        assert_true(r.ok);
    }
    close(listening);

    int refusing = bind_free_port(false, &port);
    snprintf(target, sizeof target, "localhost:%d", port);
    r = probe_once(&check);
    assert_false(r.ok);
    assert_string_equal(r.detail, "connection refused");
    close(refusing);
}

/* ---- COMMAND --------------------------------------------------------------- */

static probe_result_t run_command(char **argv, long timeout_ms, pid_t *pid_out)
{
    kiln_ready_check_t check = {.kind = KILN_READY_COMMAND, .argv = argv, .timeout_ms = timeout_ms};
    probe_result_t r = {0};
    kiln_err_t err = {0};
    kiln_probe_t *probe = NULL;
    if (kiln_probe_start(&loop, &check, on_probe_done, &r, &probe, &err) != 0)
        fail_msg("kiln_probe_start: %s", err.msg);
    if (pid_out)
        *pid_out = kiln_probe_pid(probe);
    run_until_done(&r);
    return r;
}

/* Gone, or a zombie waiting for a reaper that is not us. */
static bool process_gone(void *ctx)
{
    pid_t pid = *(pid_t *)ctx;
    char path[64], stat[256] = "";
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *in = fopen(path, "r");
    if (!in)
        return true;
    size_t n = fread(stat, 1, sizeof stat - 1, in);
    fclose(in);
    stat[n] = '\0';
    const char *paren = strrchr(stat, ')');
    return paren && paren[1] == ' ' && paren[2] == 'Z';
}

static void a_command_probe_leaves_no_background_child_behind(void **state)
{
    char pid_file[] = "/tmp/kiln-probe-bg-XXXXXX";
    int fd = mkstemp(pid_file);
    assert_true(fd >= 0);
    close(fd);
    char script[256];
    snprintf(script, sizeof script, "sleep 1000 & echo $! > %s; exit 0", pid_file);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    probe_result_t r = run_command(argv, 2000, NULL);
    assert_true(r.ok);
    FILE *in = fopen(pid_file, "r");
    int bg = 0;
    assert_true(in && fscanf(in, "%d", &bg) == 1 && bg > 0);
    fclose(in);
    unlink(pid_file);
    pid_t pid = bg;
    assert_true(kiln_test_wait_until(process_gone, &pid, 5000));
}

static void command_probe_exit_codes_and_timeout_kills_it(void **state)
{
    char *yes[] = {"/bin/true", NULL};
    probe_result_t r = run_command(yes, 2000, NULL);
    assert_true(r.ok);
    assert_string_equal(r.detail, "exit 0");

    char *no[] = {"/bin/false", NULL};
    r = run_command(no, 2000, NULL);
    assert_false(r.ok);
    assert_string_equal(r.detail, "exit 1");

    char *two[] = {"/bin/sh", "-c", "exit 2", NULL};
    r = run_command(two, 2000, NULL);
    assert_false(r.ok);
    assert_string_equal(r.detail, "exit 2");

    char *self_kill[] = {"/bin/sh", "-c", "kill -9 $$", NULL};
    r = run_command(self_kill, 2000, NULL);
    assert_false(r.ok);
    assert_string_equal(r.detail, "killed by signal 9");

    char *missing[] = {"/nonexistent/kiln-probe-check", NULL};
    r = run_command(missing, 2000, NULL);
    assert_false(r.ok);
    assert_string_equal(r.detail,
                        "cannot run /nonexistent/kiln-probe-check: No such file or directory");

    char *slow[] = {"/bin/sleep", "30", NULL};
    pid_t pid = 0;
    int64_t started = kiln_test_now_ms();
    r = run_command(slow, 200, &pid);
    int64_t took = kiln_test_now_ms() - started;
    assert_false(r.ok);
    assert_string_equal(r.detail, "timed out after 200 ms");
    assert_true(took >= 150 && took < 5000);
    assert_true(pid > 0);
    /* Killed and reaped before the callback: no process, not even a zombie. */
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
}

/* ---- cancel ---------------------------------------------------------------- */

typedef struct cancel_when_asked {
    test_server_t *server;
    kiln_probe_t *probe;
} cancel_when_asked_t;

/* Cancels the probe once the server has its request (polled on the loop). */
static void on_check_server(uv_timer_t *timer)
{
    cancel_when_asked_t *c = timer->data;
    if (atomic_load(&c->server->requests_seen) == 0)
        return;
    kiln_probe_cancel(c->probe);
    uv_close((uv_handle_t *)timer, NULL);
}

static void cancel_before_completion_calls_nothing_and_leaks_nothing(void **state)
{
    const char *replies[] = {NULL, NULL};
    test_server_t s;
    server_start(&s, replies, 2);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    probe_result_t r = {0};
    kiln_err_t err = {0};
    kiln_ready_check_t http = check_of(KILN_READY_HTTP, url, 5000);

    /* Before the loop ever ran: connect in flight. */
    kiln_probe_t *probe = NULL;
    assert_int_equal(kiln_probe_start(&loop, &http, on_probe_done, &r, &probe, &err), 0);
    kiln_probe_cancel(probe);

    /* After the request went out, while waiting for the answer. */
    assert_int_equal(kiln_probe_start(&loop, &http, on_probe_done, &r, &probe, &err), 0);
    cancel_when_asked_t c = {.server = &s, .probe = probe};
    uv_timer_t check_timer;
    uv_timer_init(&loop, &check_timer);
    check_timer.data = &c;
    uv_timer_start(&check_timer, on_check_server, 5, 5);

    /* A name lookup in flight (when this machine's name resolves locally). */
    char name[256];
    if (own_name_is_loopback(name, sizeof name)) {
        char target[320];
        snprintf(target, sizeof target, "%s:1", name);
        kiln_ready_check_t tcp = check_of(KILN_READY_TCP, target, 5000);
        assert_int_equal(kiln_probe_start(&loop, &tcp, on_probe_done, &r, &probe, &err), 0);
        kiln_probe_cancel(probe);
    }

    /* A running command: killed, and reaped on the loop. */
    char *slow[] = {"/bin/sleep", "30", NULL};
    kiln_ready_check_t command = {.kind = KILN_READY_COMMAND, .argv = slow, .timeout_ms = 5000};
    assert_int_equal(kiln_probe_start(&loop, &command, on_probe_done, &r, &probe, &err), 0);
    pid_t pid = kiln_probe_pid(probe);
    assert_true(pid > 0);
    kiln_probe_cancel(probe);

    /* A failure waiting to be delivered from the loop. */
    char *missing[] = {"/nonexistent/kiln-probe-check", NULL};
    command.argv = missing;
    assert_int_equal(kiln_probe_start(&loop, &command, on_probe_done, &r, &probe, &err), 0);
    kiln_probe_cancel(probe);

    /* Everything closes and the loop runs dry well before any probe timeout. */
    int64_t started = kiln_test_now_ms();
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(kiln_test_now_ms() - started < 4000);
    assert_int_equal(r.calls, 0);
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    server_stop(&s);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    /* The server writes to connections the probe may have closed already. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        TEST(http_probe_ok_on_200_and_fails_on_503),
        TEST(http_probe_connection_refused),
        TEST(http_probe_times_out_on_a_silent_server),
        TEST(http_probe_rejects_malformed_status_line),
        TEST(http_probe_with_https_url_is_refused_clearly),
        TEST(bad_urls_are_refused),
        TEST(tcp_probe_ok_and_refused),
        TEST(a_command_probe_leaves_no_background_child_behind),
        TEST(command_probe_exit_codes_and_timeout_kills_it),
        TEST(cancel_before_completion_calls_nothing_and_leaks_nothing),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
