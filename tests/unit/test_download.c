/*
 * Downloads against a real HTTP server: civetweb, started in this process on
 * a free loopback port, serving a document root from a temporary folder (its
 * static files support Range requests) plus request handlers that inject
 * faults: failures, Retry-After, a stall, redirects, a server that ignores
 * Range, one that answers 416.
 */
#include "kiln/download.h"
#include "kiln_test.h"

#include <civetweb.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_SIZE       (3 * 1024 * 1024 + 123) /* odd, so halves are not round */
#define HALF            (FILE_SIZE / 2)
#define SLOW_RELEASE_MS 30000 /* a stalled handler gives up after this, whatever happens */

/* ---- the server -------------------------------------------------------------- */

typedef struct server {
    struct mg_context *ctx;
    int port;
    char dir[256]; /* temporary folder: www/ and one folder per test */
    char out[300]; /* this test's folder, where downloads go */
    int test_number;
    char file_path[320]; /* www/model.bin */
    unsigned char *body; /* its FILE_SIZE bytes */
    char sha_hex[65];
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t changed;
    int requests[16];      /* per handler, indexed by handler_id_t */
    char last_range[64];   /* the Range header of the last request a handler saw */
    int64_t request_ms[4]; /* /429: when each of the first requests came */
    bool release_slow;
    int slow_active; /* /slow handlers still stalling */
} server_t;

typedef enum {
    H_TRACK,
    H_FLAKY,
    H_429,
    H_NORANGE,
    H_SLOW,
    H_416,
    H_FORBIDDEN,
    H_COUNT
} handler_id_t;

static server_t srv;

static int count_request(struct mg_connection *conn, handler_id_t id)
{
    const char *range = mg_get_header(conn, "Range");
    pthread_mutex_lock(&srv.mu);
    int n = ++srv.requests[id];
    snprintf(srv.last_range, sizeof srv.last_range, "%s", range ? range : "");
    if (id == H_429 && n <= 4)
        srv.request_ms[n - 1] = kiln_test_now_ms();
    pthread_mutex_unlock(&srv.mu);
    return n;
}

static int requests_of(handler_id_t id)
{
    pthread_mutex_lock(&srv.mu);
    int n = srv.requests[id];
    pthread_mutex_unlock(&srv.mu);
    return n;
}

static void last_range(char *out, size_t size)
{
    pthread_mutex_lock(&srv.mu);
    snprintf(out, size, "%s", srv.last_range);
    pthread_mutex_unlock(&srv.mu);
}

static int send_status(struct mg_connection *conn, int status, const char *reason,
                       const char *extra_header)
{
    mg_printf(conn, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n%s\r\n", status,
              reason, extra_header ? extra_header : "");
    return status;
}

/* /track/...: the real file (Range honoured by civetweb), counted. */
static int on_track(struct mg_connection *conn, void *cbdata)
{
    count_request(conn, H_TRACK);
    mg_send_file(conn, srv.file_path);
    return 200;
}

/* /flaky: 500 twice, then the file. */
static int on_flaky(struct mg_connection *conn, void *cbdata)
{
    if (count_request(conn, H_FLAKY) <= 2)
        return send_status(conn, 500, "Internal Server Error", NULL);
    mg_send_file(conn, srv.file_path);
    return 200;
}

/* /429: "Too Many Requests, Retry-After: 1" once, then the file. */
static int on_429(struct mg_connection *conn, void *cbdata)
{
    if (count_request(conn, H_429) == 1)
        return send_status(conn, 429, "Too Many Requests", "Retry-After: 1\r\n");
    mg_send_file(conn, srv.file_path);
    return 200;
}

/* /norange: the whole file with 200, whatever Range asked for. */
static int on_norange(struct mg_connection *conn, void *cbdata)
{
    count_request(conn, H_NORANGE);
    mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
              FILE_SIZE);
    mg_write(conn, srv.body, FILE_SIZE);
    return 200;
}

/* /slow: announces the whole file, sends half, then stalls until the test
 * releases it. A Range request (the resume) gets the rest at once. */
static int on_slow(struct mg_connection *conn, void *cbdata)
{
    count_request(conn, H_SLOW);
    if (mg_get_header(conn, "Range")) {
        mg_send_file(conn, srv.file_path);
        return 200;
    }
    mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
              FILE_SIZE);
    mg_write(conn, srv.body, HALF);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += SLOW_RELEASE_MS / 1000;
    pthread_mutex_lock(&srv.mu);
    srv.slow_active++;
    while (!srv.release_slow)
        if (pthread_cond_timedwait(&srv.changed, &srv.mu, &until) == ETIMEDOUT)
            break;
    srv.slow_active--;
    pthread_mutex_unlock(&srv.mu);
    return 200;
}

/* /416: refuses every Range with 416, as a server does for a range past the end. */
static int on_416(struct mg_connection *conn, void *cbdata)
{
    count_request(conn, H_416);
    if (mg_get_header(conn, "Range")) {
        char header[64];
        snprintf(header, sizeof header, "Content-Range: bytes */%d\r\n", FILE_SIZE);
        return send_status(conn, 416, "Range Not Satisfiable", header);
    }
    mg_send_file(conn, srv.file_path);
    return 200;
}

static int on_forbidden(struct mg_connection *conn, void *cbdata)
{
    count_request(conn, H_FORBIDDEN);
    return send_status(conn, 403, "Forbidden", NULL);
}

/* /chunked: the file with no Content-Length (the length is unknown until the end). */
static int on_unknown_length(struct mg_connection *conn, void *cbdata)
{
    mg_printf(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    mg_write(conn, srv.body, FILE_SIZE);
    return 200;
}

static int on_redirect(struct mg_connection *conn, void *cbdata)
{
    char header[128];
    snprintf(header, sizeof header, "Location: %s\r\n", (const char *)cbdata);
    return send_status(conn, 302, "Found", header);
}

static void fill_body(unsigned char *body, size_t size)
{
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        body[i] = (unsigned char)x;
    }
}

static void sha256_hex(const void *data, size_t size, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(data, size, md, &len, EVP_sha256(), NULL), 1);
    for (unsigned int i = 0; i < len; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fail_msg("create %s: %s", path, strerror(errno));
        return;
    }
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

/* One server for all tests: civetweb's mg_stop takes two seconds. */
static int server_start(void **state)
{
    memset(&srv, 0, sizeof srv);
    pthread_mutex_init(&srv.mu, NULL);
    pthread_cond_init(&srv.changed, NULL);
    kiln_test_tmpdir(srv.dir, sizeof srv.dir);
    char root[300];
    snprintf(root, sizeof root, "%s/www", srv.dir);
    assert_int_equal(mkdir(root, 0755), 0);
    snprintf(srv.file_path, sizeof srv.file_path, "%s/model.bin", root);
    srv.body = malloc(FILE_SIZE);
    assert_non_null(srv.body);
    fill_body(srv.body, FILE_SIZE);
    sha256_hex(srv.body, FILE_SIZE, srv.sha_hex);
    write_file(srv.file_path, srv.body, FILE_SIZE);

    /* Port 0: the kernel picks a free port and civetweb reports it, so there
     * is no window in which another process could take it. */
    const char *mg_options[] = {"document_root",
                                root,
                                "listening_ports",
                                "127.0.0.1:0",
                                "num_threads",
                                "8",
                                "enable_directory_listing",
                                "no",
                                NULL};
    srv.ctx = mg_start(NULL, NULL, mg_options);
    if (!srv.ctx)
        fail_msg("civetweb did not start on 127.0.0.1:0");
    struct mg_server_port ports[2];
    assert_int_equal(mg_get_server_ports(srv.ctx, 2, ports), 1);
    srv.port = ports[0].port;
    mg_set_request_handler(srv.ctx, "/track", on_track, NULL);
    mg_set_request_handler(srv.ctx, "/flaky", on_flaky, NULL);
    mg_set_request_handler(srv.ctx, "/429", on_429, NULL);
    mg_set_request_handler(srv.ctx, "/norange", on_norange, NULL);
    mg_set_request_handler(srv.ctx, "/slow", on_slow, NULL);
    mg_set_request_handler(srv.ctx, "/416", on_416, NULL);
    mg_set_request_handler(srv.ctx, "/forbidden", on_forbidden, NULL);
    mg_set_request_handler(srv.ctx, "/chunked", on_unknown_length, NULL);
    mg_set_request_handler(srv.ctx, "/redirect", on_redirect, "/model.bin");
    mg_set_request_handler(srv.ctx, "/to-file", on_redirect, "file:///etc/passwd");
    mg_set_request_handler(srv.ctx, "/loop", on_redirect, "/loop");
    *state = &srv;
    return 0;
}

static void release_slow(void)
{
    pthread_mutex_lock(&srv.mu);
    srv.release_slow = true;
    pthread_cond_broadcast(&srv.changed);
    pthread_mutex_unlock(&srv.mu);
}

static bool no_slow_handler_active(void *ctx)
{
    pthread_mutex_lock(&srv.mu);
    bool idle = srv.slow_active == 0;
    pthread_mutex_unlock(&srv.mu);
    return idle;
}

/* Each test starts with fresh counters and an empty folder for its files. */
static int test_setup(void **state)
{
    pthread_mutex_lock(&srv.mu);
    memset(srv.requests, 0, sizeof srv.requests);
    memset(srv.request_ms, 0, sizeof srv.request_ms);
    srv.last_range[0] = '\0';
    srv.release_slow = false;
    pthread_mutex_unlock(&srv.mu);
    snprintf(srv.out, sizeof srv.out, "%s/test-%d", srv.dir, ++srv.test_number);
    assert_int_equal(mkdir(srv.out, 0755), 0);
    return 0;
}

/* Lets stalled handlers go, so that none is left to answer the next test. */
static int test_teardown(void **state)
{
    release_slow();
    if (!kiln_test_wait_until(no_slow_handler_active, NULL, 10000))
        fail_msg("a /slow handler did not finish after its release");
    return 0;
}

static int server_stop(void **state)
{
    release_slow();
    mg_stop(srv.ctx);
    char *argv[] = {"/bin/rm", "-rf", srv.dir, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
    free(srv.body);
    pthread_cond_destroy(&srv.changed);
    pthread_mutex_destroy(&srv.mu);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

typedef struct paths {
    char url[256];
    char dest[340];
    char part[350];
} paths_t;

static paths_t paths_for(const char *url_path)
{
    paths_t p;
    snprintf(p.url, sizeof p.url, "http://127.0.0.1:%d%s", srv.port, url_path);
    snprintf(p.dest, sizeof p.dest, "%s/model.bin", srv.out);
    snprintf(p.part, sizeof p.part, "%s.part", p.dest);
    return p;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void assert_holds_the_file(const char *path)
{
    assert_int_equal(file_size(path), FILE_SIZE);
    unsigned char *got = malloc(FILE_SIZE);
    assert_non_null(got);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(got, 1, FILE_SIZE, f), FILE_SIZE);
    fclose(f);
    assert_memory_equal(got, srv.body, FILE_SIZE);
    free(got);
}

typedef struct progress_log {
    atomic_uint_fast64_t last_done; /* read by the test thread while downloading */
    uint64_t first_done, last_total;
    size_t calls;
    size_t mid_transfer; /* calls with the total known and not yet reached */
    bool went_down, total_changed;
} progress_log_t;

static void record_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress_log_t *log = ctx;
    uint64_t prev = atomic_load(&log->last_done);
    if (log->calls == 0)
        log->first_done = done;
    else {
        log->went_down |= done < prev;
        log->total_changed |= total != 0 && log->last_total != 0 && total != log->last_total;
    }
    log->calls++;
    if (total == FILE_SIZE && done < total)
        log->mid_transfer++;
    log->last_total = total;
    atomic_store(&log->last_done, done);
}

static kiln_download_options_t options(const paths_t *p, const char *sha256)
{
    return (kiln_download_options_t){.url = p->url, .dest = p->dest, .sha256 = sha256};
}

static int download(const kiln_download_options_t *opts, kiln_err_t *err)
{
    int rc = kiln_download(opts, err);
    if (rc != 0)
        print_message("kiln_download: %d %s\n", rc, err->msg);
    return rc;
}

/* ---- tests -------------------------------------------------------------------- */

static void downloads_and_verifies_sha256(void **state)
{
    paths_t p = paths_for("/model.bin");
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(file_size(p.part), -1);
    struct stat st;
    assert_int_equal(stat(p.dest, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
}

static void wrong_sha256_fails_and_leaves_nothing(void **state)
{
    paths_t p = paths_for("/model.bin");
    char wrong[65];
    sha256_hex("something else", 14, wrong);
    kiln_download_options_t opts = options(&p, wrong);
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, "sha256 mismatch"));
    char expected[80], actual[80];
    snprintf(expected, sizeof expected, "expected %s", wrong);
    snprintf(actual, sizeof actual, "got %s", srv.sha_hex);
    assert_non_null(strstr(err.msg, expected));
    assert_non_null(strstr(err.msg, actual));
    assert_int_equal(file_size(p.dest), -1);
    assert_int_equal(file_size(p.part), -1);
}

static void resumes_a_partial_download_with_a_range_request(void **state)
{
    paths_t p = paths_for("/track/model.bin");
    write_file(p.part, srv.body, HALF);
    progress_log_t log = {0};
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    opts.progress = record_progress;
    opts.progress_ctx = &log;
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_TRACK), 1);
    char range[64], want[64];
    last_range(range, sizeof range);
    snprintf(want, sizeof want, "bytes=%d-", HALF);
    assert_string_equal(range, want);
    assert_true(log.first_done >= HALF); /* the half on disk counted from the start */
}

static void server_ignoring_range_restarts_from_zero(void **state)
{
    paths_t p = paths_for("/norange");
    unsigned char *junk = malloc(HALF);
    assert_non_null(junk);
    memset(junk, 0xAA, HALF); /* not a prefix of the file: kept, it would fail the hash */
    write_file(p.part, junk, HALF);
    free(junk);
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_NORANGE), 1);
    char range[64];
    last_range(range, sizeof range);
    assert_string_not_equal(range, ""); /* we did ask for a range */
}

static void retries_500_then_succeeds(void **state)
{
    paths_t p = paths_for("/flaky");
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_FLAKY), 3);
}

static void gives_up_when_the_retries_run_out(void **state)
{
    paths_t p = paths_for("/flaky");
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    opts.max_retries = 1;
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, "HTTP 500"));
    assert_int_equal(requests_of(H_FLAKY), 2);
    assert_int_equal(file_size(p.dest), -1);
}

static void client_errors_are_not_retried(void **state)
{
    paths_t p = paths_for("/forbidden");
    kiln_download_options_t opts = options(&p, NULL);
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, "HTTP 403"));
    assert_int_equal(requests_of(H_FORBIDDEN), 1);

    p = paths_for("/missing.bin");
    opts = options(&p, NULL);
    assert_int_equal(kiln_download(&opts, &err), KILN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "HTTP 404"));
}

static void honours_retry_after_on_429(void **state)
{
    paths_t p = paths_for("/429");
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_429), 2);
    /* Our own first backoff is at most 250 ms; only Retry-After explains a second. */
    int64_t gap = srv.request_ms[1] - srv.request_ms[0];
    if (gap < 1000)
        fail_msg("the retry came %lld ms after the 429; Retry-After asked for 1000",
                 (long long)gap);
}

typedef struct background {
    kiln_download_options_t opts;
    kiln_err_t err;
    int rc;
    atomic_bool finished;
} background_t;

static void *download_thread(void *arg)
{
    background_t *bg = arg;
    bg->rc = kiln_download(&bg->opts, &bg->err);
    atomic_store(&bg->finished, true);
    return NULL;
}

static bool half_arrived(void *ctx)
{
    return atomic_load(&((progress_log_t *)ctx)->last_done) >= HALF;
}

static bool background_finished(void *ctx)
{
    return atomic_load(&((background_t *)ctx)->finished);
}

static void cancel_keeps_the_part_for_later(void **state)
{
    paths_t p = paths_for("/slow");
    atomic_int cancel = 0;
    progress_log_t log = {0};
    background_t bg = {.opts = options(&p, srv.sha_hex)};
    bg.opts.cancel = &cancel;
    bg.opts.progress = record_progress;
    bg.opts.progress_ctx = &log;
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, download_thread, &bg), 0);
    bool arrived = kiln_test_wait_until(half_arrived, &log, 10000);
    atomic_store(&cancel, 1);
    /* libcurl calls the progress function about once a second during a stall. */
    bool finished = kiln_test_wait_until(background_finished, &bg, 10000);
    if (!finished)
        release_slow(); /* let the thread end so the failure is reported, not a hang */
    pthread_join(thread, NULL);
    assert_true(arrived);
    assert_true(finished);
    assert_int_equal(bg.rc, KILN_ECANCELLED);
    assert_int_equal(file_size(p.part), HALF);
    assert_int_equal(file_size(p.dest), -1);

    /* A later call resumes from the half that is on disk. */
    release_slow();
    kiln_download_options_t again = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&again, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_SLOW), 2);
    char range[64], want[64];
    last_range(range, sizeof range);
    snprintf(want, sizeof want, "bytes=%d-", HALF);
    assert_string_equal(range, want);
}

static void timeout_bounds_the_whole_download(void **state)
{
    paths_t p = paths_for("/slow");
    kiln_download_options_t opts = options(&p, NULL);
    opts.timeout_ms = 500;
    kiln_err_t err;
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_download(&opts, &err), KILN_ETIMEOUT);
    assert_true(kiln_test_now_ms() - start < 5000);
    assert_non_null(strstr(err.msg, "timeout_ms=500"));
    assert_true(file_size(p.part) > 0); /* kept: what arrived is good for a resume */
    assert_int_equal(file_size(p.dest), -1);
}

static void existing_verified_file_is_not_downloaded_again(void **state)
{
    paths_t p = paths_for("/track/model.bin");
    write_file(p.dest, srv.body, FILE_SIZE);
    progress_log_t log = {0};
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    opts.progress = record_progress;
    opts.progress_ctx = &log;
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_int_equal(requests_of(H_TRACK), 0);
    assert_int_equal(atomic_load(&log.last_done), FILE_SIZE);
    assert_int_equal(log.last_total, FILE_SIZE);

    /* A dest with other content is replaced. */
    write_file(p.dest, "stale", 5);
    assert_int_equal(download(&opts, &err), 0);
    assert_int_equal(requests_of(H_TRACK), 1);
    assert_holds_the_file(p.dest);
}

static void complete_part_is_verified_when_the_server_answers_416(void **state)
{
    paths_t p = paths_for("/416");
    write_file(p.part, srv.body, FILE_SIZE);
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_416), 1);

    /* A part of the right size but the wrong bytes is downloaded again. */
    assert_int_equal(unlink(p.dest), 0);
    unsigned char *junk = calloc(1, FILE_SIZE);
    assert_non_null(junk);
    write_file(p.part, junk, FILE_SIZE);
    free(junk);
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);
    assert_int_equal(requests_of(H_416), 3);
}

static void too_big_is_refused(void **state)
{
    paths_t p = paths_for("/model.bin");
    kiln_download_options_t opts = options(&p, NULL);
    opts.max_bytes = FILE_SIZE - 1;
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_ETOOBIG);
    assert_non_null(strstr(err.msg, "max_bytes"));
    assert_int_equal(file_size(p.dest), -1);
    assert_int_equal(file_size(p.part), -1);

    /* Without a Content-Length, the bytes themselves are counted. */
    p = paths_for("/chunked");
    opts = options(&p, NULL);
    opts.max_bytes = 100 * 1000;
    assert_int_equal(kiln_download(&opts, &err), KILN_ETOOBIG);
    assert_int_equal(file_size(p.dest), -1);
    assert_int_equal(file_size(p.part), -1);
}

static void progress_reports_increase_to_the_total(void **state)
{
    paths_t p = paths_for("/model.bin");
    progress_log_t log = {0};
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    opts.progress = record_progress;
    opts.progress_ctx = &log;
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_true(log.calls >= 2);
    assert_true(log.mid_transfer >= 1); /* the total is known from the headers on */
    assert_false(log.went_down);
    assert_false(log.total_changed);
    assert_int_equal(atomic_load(&log.last_done), FILE_SIZE);
    assert_int_equal(log.last_total, FILE_SIZE);
}

static void follows_redirects_but_not_loops(void **state)
{
    paths_t p = paths_for("/redirect");
    kiln_download_options_t opts = options(&p, srv.sha_hex);
    kiln_err_t err;
    assert_int_equal(download(&opts, &err), 0);
    assert_holds_the_file(p.dest);

    p = paths_for("/loop");
    opts = options(&p, NULL);
    assert_int_equal(kiln_download(&opts, &err), KILN_EIO);
    assert_non_null(strstr(err.msg, "redirects"));
}

static void hostile_urls_are_refused(void **state)
{
    paths_t p = paths_for("/model.bin");
    char gopher[128];
    snprintf(gopher, sizeof gopher, "gopher://127.0.0.1:%d/model.bin", srv.port);
    const char *urls[] = {"",          "file:///etc/passwd", "FILE:///etc/passwd",
                          gopher,      "ftp://127.0.0.1/x",  "dict://127.0.0.1:11211/stat",
                          "/model.bin"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        kiln_download_options_t opts = options(&p, NULL);
        opts.url = urls[i];
        kiln_err_t err;
        if (kiln_download(&opts, &err) != KILN_EINVAL)
            fail_msg("url \"%s\" was not refused: %s", urls[i], err.msg);
    }
    kiln_download_options_t opts = options(&p, NULL);
    opts.url = NULL;
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_EINVAL);
    assert_int_equal(kiln_download(NULL, &err), KILN_EINVAL);

    /* Nor may a redirect lead to one. */
    p = paths_for("/to-file");
    opts = options(&p, NULL);
    assert_int_equal(kiln_download(&opts, &err), KILN_EINVAL);
    assert_int_equal(file_size(p.dest), -1);
    assert_null(strstr(err.msg, "root:")); /* nothing of /etc/passwd */
}

static void messages_never_show_credentials_or_query(void **state)
{
    paths_t p;
    snprintf(p.url, sizeof p.url,
             "http://alice:hunter2@127.0.0.1:%d/missing.bin?X-Amz-Signature=SECRET#frag", srv.port);
    snprintf(p.dest, sizeof p.dest, "%s/model.bin", srv.out);
    kiln_download_options_t opts = options(&p, NULL);
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_ENOTFOUND);
    assert_null(strstr(err.msg, "hunter2"));
    assert_null(strstr(err.msg, "alice"));
    assert_null(strstr(err.msg, "SECRET"));
    assert_non_null(strstr(err.msg, "127.0.0.1"));
    assert_non_null(strstr(err.msg, "/missing.bin?[redacted]"));
}

static void bad_options_are_refused_with_the_field_named(void **state)
{
    paths_t p = paths_for("/model.bin");
    kiln_download_options_t opts = options(&p, "abc");
    kiln_err_t err;
    assert_int_equal(kiln_download(&opts, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "sha256"));
    opts = options(&p, NULL);
    opts.dest = "";
    assert_int_equal(kiln_download(&opts, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "dest"));
    opts = options(&p, NULL);
    opts.max_retries = KILN_DOWNLOAD_RETRIES_MAX + 1;
    assert_int_equal(kiln_download(&opts, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "max_retries"));
    opts = options(&p, NULL);
    opts.dest = "/nonexistent/kiln-test/model.bin";
    assert_int_equal(kiln_download(&opts, &err), KILN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/kiln-test/model.bin.part"));
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    umask(022);
#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, test_teardown)
    const struct CMUnitTest tests[] = {
        T(downloads_and_verifies_sha256),
        T(wrong_sha256_fails_and_leaves_nothing),
        T(resumes_a_partial_download_with_a_range_request),
        T(server_ignoring_range_restarts_from_zero),
        T(retries_500_then_succeeds),
        T(gives_up_when_the_retries_run_out),
        T(client_errors_are_not_retried),
        T(honours_retry_after_on_429),
        T(cancel_keeps_the_part_for_later),
        T(timeout_bounds_the_whole_download),
        T(existing_verified_file_is_not_downloaded_again),
        T(complete_part_is_verified_when_the_server_answers_416),
        T(too_big_is_refused),
        T(progress_reports_increase_to_the_total),
        T(follows_redirects_but_not_loops),
        T(hostile_urls_are_refused),
        T(messages_never_show_credentials_or_query),
        T(bad_options_are_refused_with_the_field_named),
    };
#undef T
    return cmocka_run_group_tests(tests, server_start, server_stop);
}
