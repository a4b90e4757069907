/*
 * End-to-end tests of how `kiln hub` frames its replies on the wire: the
 * hub writes status line, headers and body itself (one write for a small
 * reply), so these tests read the raw bytes from a plain socket and check
 * what clients rely on: keep-alive with several requests on one connection,
 * Content-Length that matches the body (also for a reply larger than one
 * write), HEAD without a body, closing for HTTP/1.0, and a 401 on a kept
 * connection.
 * A real hub against a real redis-server; every wait is for a condition.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kiln_test.h"

#define TOKEN_ADMIN "admin-token-0123456789abcdef"

static kiln_test_redis_t redis;
static char log_dir[256];
static int test_seq;

typedef struct fixture {
    pid_t hub;
    char log_path[400];
    int port;
    bool passed;
} fixture_t;

static bool log_has_listening(void *ctx)
{
    fixture_t *f = ctx;
    char buf[4096] = {0};
    FILE *file = fopen(f->log_path, "r");
    if (!file)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, file);
    fclose(file);
    buf[n] = '\0';
    const char *at = strstr(buf, "kiln hub listening on http://127.0.0.1:");
    if (!at)
        return false;
    f->port = atoi(at + strlen("kiln hub listening on http://127.0.0.1:"));
    return f->port > 0;
}

/* Starts `kiln hub` on a free loopback port (with env1 set, if given). */
static void start_hub(fixture_t *f, const char *env1)
{
    snprintf(f->log_path, sizeof f->log_path, "%s/%02d-hub.log", log_dir, ++test_seq);
    char *argv[] = {KILN_BIN,      "hub",          "--redis", redis.url, "--listen",
                    "127.0.0.1:0", "--log-format", "text",    NULL};
    char *env[] = {(char *)env1, NULL};
    f->hub = kiln_test_spawn(argv, env1 ? env : NULL, f->log_path);
    assert_true(kiln_test_wait_until(log_has_listening, f, 10000));
}

static int setup(void **state)
{
    static fixture_t f;
    memset(&f, 0, sizeof f);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->hub > 0)
        kiln_test_kill(f->hub, SIGTERM, 10000);
    if (!f->passed)
        kiln_test_dump_file("hub log", f->log_path);
    return 0;
}

static int connect_hub(const fixture_t *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    addr.sin_port = htons((uint16_t)f->port);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    return fd;
}

static void send_text(int fd, const char *text)
{
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
}

/* One reply as read off the socket. */
typedef struct reply {
    int status;
    char head[2048]; /* status line and headers, NUL-terminated */
    char *body;      /* Content-Length bytes (none for HEAD) */
    long content_length;
} reply_t;

/* Reads exactly n bytes (10 s at most); false at EOF or timeout. */
static bool read_exact(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) != 1)
            return false;
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

/* Reads one reply: the head byte by byte up to the blank line, then the
 * body by its Content-Length (skipped when head_only). */
static void read_reply(int fd, reply_t *r, bool head_only)
{
    memset(r, 0, sizeof *r);
    size_t n = 0;
    while (n < 4 || memcmp(r->head + n - 4, "\r\n\r\n", 4) != 0) {
        assert_true(n < sizeof r->head - 1);
        assert_true(read_exact(fd, r->head + n, 1));
        n++;
    }
    assert_int_equal(sscanf(r->head, "HTTP/1.%*d %d", &r->status), 1);
    const char *cl = strcasestr(r->head, "\r\nContent-Length: ");
    assert_non_null(cl);
    r->content_length = strtol(cl + strlen("\r\nContent-Length: "), NULL, 10);
    size_t len = head_only ? 0 : (size_t)r->content_length;
    r->body = calloc(1, len + 1);
    assert_non_null(r->body);
    assert_true(read_exact(fd, r->body, len));
}

/* True when the peer closes the connection (read gives EOF) in 10 s. */
static bool closed_by_peer(int fd)
{
    char c;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 10000) == 1 && read(fd, &c, 1) == 0;
}

static void submits_on_one_keep_alive_connection_each_get_a_whole_reply(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL);
    int fd = connect_hub(f);
    static const char body[] = "{\"service\":\"frames\",\"payload\":{\"n\":1}}";
    char request[512];
    snprintf(request, sizeof request,
             "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             sizeof body - 1, body);
    /* Two sent back to back, then a third after both replies. */
    send_text(fd, request);
    send_text(fd, request);
    reply_t r[3];
    read_reply(fd, &r[0], false);
    read_reply(fd, &r[1], false);
    send_text(fd, request);
    read_reply(fd, &r[2], false);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].status, 201);
        assert_non_null(strstr(r[i].head, "\r\nContent-Type: application/json\r\n"));
        assert_non_null(strstr(r[i].head, "\r\nConnection: keep-alive\r\n"));
        assert_int_equal((long)strlen(r[i].body), r[i].content_length);
        char expect[64];
        snprintf(expect, sizeof expect, "{\"id\":\"frames.%d\"}", i + 1);
        assert_string_equal(r[i].body, expect);
        free(r[i].body);
    }
    close(fd);
    f->passed = true;
}

static void a_reply_larger_than_one_write_arrives_whole(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL);
    int fd = connect_hub(f);
    send_text(fd, "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n");
    reply_t r;
    read_reply(fd, &r, false);
    assert_int_equal(r.status, 200);
    assert_true(r.content_length > 4096);
    assert_int_equal((long)strlen(r.body), r.content_length);
    assert_non_null(strstr(r.body, "\"openapi\""));
    assert_non_null(strstr(r.body + r.content_length - 3, "}")); /* the document's end */
    free(r.body);
    /* The connection is still good for the next request. */
    send_text(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    read_reply(fd, &r, false);
    assert_int_equal(r.status, 200);
    free(r.body);
    close(fd);
    f->passed = true;
}

static void head_gets_the_length_without_a_body(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL);
    int fd = connect_hub(f);
    send_text(fd, "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    reply_t r;
    read_reply(fd, &r, true);
    assert_int_equal(r.status, 200);
    assert_true(r.content_length > 0);
    free(r.body);
    /* No body bytes came: the next reply starts right after the head. */
    send_text(fd, "GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n");
    read_reply(fd, &r, false);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "no endpoint /nothing-here"));
    free(r.body);
    close(fd);
    f->passed = true;
}

static void http_1_0_without_keep_alive_gets_close_and_the_connection_ends(void **state)
{
    fixture_t *f = *state;
    start_hub(f, NULL);
    int fd = connect_hub(f);
    send_text(fd, "GET /health HTTP/1.0\r\n\r\n");
    reply_t r;
    read_reply(fd, &r, false);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "HTTP/1.0 200 "));
    assert_non_null(strstr(r.head, "\r\nConnection: close\r\n"));
    free(r.body);
    assert_true(closed_by_peer(fd));
    close(fd);
    f->passed = true;
}

static void an_unauthorized_request_gets_the_challenge_and_the_connection_stays_usable(void **state)
{
    fixture_t *f = *state;
    start_hub(f, "KILN_HUB_TOKENS=ops:admin:" TOKEN_ADMIN);
    int fd = connect_hub(f);
    send_text(fd, "GET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n");
    reply_t r;
    read_reply(fd, &r, false);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.head, "\r\nWWW-Authenticate: Bearer realm=\"kiln-hub\"\r\n"));
    assert_non_null(strstr(r.body, "\"code\":\"unauthorized\""));
    assert_null(strstr(r.body, "wrong")); /* the token is never echoed */
    free(r.body);
    send_text(fd, "GET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " TOKEN_ADMIN
                  "\r\n\r\n");
    read_reply(fd, &r, false);
    assert_int_equal(r.status, 200);
    free(r.body);
    close(fd);
    f->passed = true;
}

int main(void)
{
    kiln_test_tmpdir(log_dir, sizeof log_dir);
    kiln_test_redis_start(&redis, false);
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(submits_on_one_keep_alive_connection_each_get_a_whole_reply),
        T(a_reply_larger_than_one_write_arrives_whole),
        T(head_gets_the_length_without_a_body),
        T(http_1_0_without_keep_alive_gets_close_and_the_connection_ends),
        T(an_unauthorized_request_gets_the_challenge_and_the_connection_stays_usable),
#undef T
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    kiln_test_redis_destroy(&redis);
    return failed;
}
