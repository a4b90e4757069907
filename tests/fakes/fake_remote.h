/*
 * What the fakes of the remote-job APIs (fake_replicate.c, fake_runpod.c)
 * share: a civetweb server on 127.0.0.1, JSON replies, request bodies,
 * a table of remote jobs advanced one step per status request (so tests
 * see progress without timing), per-fault counters, stalls that end when
 * the fake stops, and files served for download.
 *
 * Header-only (static functions): each fake is one program.
 */
#ifndef KILN_FAKE_REMOTE_H
#define KILN_FAKE_REMOTE_H

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FAKE_BODY_MAX    (1024 * 1024)
#define FAKE_STALL_MAX_S 60
#define FAKE_JOBS_MAX    256
#define FAKE_FAULTS_MAX  64
#define FAKE_NAME_LEN    128

/* One remote job. */
typedef struct fake_job {
    char id[64];
    char fault[FAKE_NAME_LEN];
    char model[FAKE_NAME_LEN]; /* Replicate: "owner/name" when created by model */
    json_t *input;
    int polls;   /* status requests so far */
    int steps;   /* processing steps before it ends */
    int outputs; /* output files */
    bool cancelled;
    bool faulted;          /* a one-time poll fault was served */
    bool finished_at_once; /* answered finished on create (Prefer: wait) */
} fake_job_t;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t changed;
    bool stopping;
    const char *key;
    int port;
    long requests, auth_ok, auth_bad, creates, polls, cancels, downloads, prefer_wait;
    char last_cancelled[64];
    fake_job_t jobs[FAKE_JOBS_MAX];
    int n_jobs;
    long seq;
    char faults[FAKE_FAULTS_MAX][FAKE_NAME_LEN];
    int fault_count[FAKE_FAULTS_MAX];
} fake = {.mu = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER};

static bool starts_with(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Counts one more request with this fault; returns the count, this one included. */
static int fake_count_fault(const char *fault)
{
    pthread_mutex_lock(&fake.mu);
    int n = 0;
    for (int i = 0; i < FAKE_FAULTS_MAX; i++) {
        if (fake.faults[i][0] == '\0')
            snprintf(fake.faults[i], FAKE_NAME_LEN, "%s", fault);
        if (strncmp(fake.faults[i], fault, FAKE_NAME_LEN - 1) == 0) {
            n = ++fake.fault_count[i];
            break;
        }
    }
    pthread_mutex_unlock(&fake.mu);
    return n;
}

/* Waits up to ms (or FAKE_STALL_MAX_S when ms < 0); false once stopping. */
static bool fake_pause(long ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (ms < 0) {
        until.tv_sec += FAKE_STALL_MAX_S;
    } else {
        until.tv_nsec += (ms % 1000) * 1000000L;
        until.tv_sec += ms / 1000 + until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
    }
    pthread_mutex_lock(&fake.mu);
    while (!fake.stopping)
        if (pthread_cond_timedwait(&fake.changed, &fake.mu, &until) != 0)
            break;
    bool go_on = !fake.stopping;
    pthread_mutex_unlock(&fake.mu);
    return go_on;
}

static void fake_send_raw(struct mg_connection *conn, int status, const char *reason,
                          const char *type, const char *extra_headers, const char *body, size_t len)
{
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: "
              "close\r\n%s\r\n",
              status, reason, type, len, extra_headers ? extra_headers : "");
    if (len)
        mg_write(conn, body, len);
}

/* Sends body (stolen) as JSON; returns status. */
static int fake_send_json(struct mg_connection *conn, int status, const char *reason,
                          const char *extra_headers, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    fake_send_raw(conn, status, reason, "application/json", extra_headers, text ? text : "",
                  text ? strlen(text) : 0);
    free(text);
    return status;
}

/* Reads the request body as a JSON object (NULL when it is not one). */
static json_t *fake_read_body(struct mg_connection *conn)
{
    char *buf = malloc(FAKE_BODY_MAX + 1);
    if (!buf)
        return NULL;
    size_t got = 0;
    for (int n; got < FAKE_BODY_MAX && (n = mg_read(conn, buf + got, FAKE_BODY_MAX - got)) > 0;)
        got += (size_t)n;
    json_t *doc = json_loadb(buf, got, 0, NULL);
    free(buf);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* Counts the request and checks "Authorization: Bearer KEY" (or the bare
 * key, which RunPod accepts too). False when wrong: the caller answers 401. */
static bool fake_authorized(struct mg_connection *conn, bool bare_ok)
{
    const char *auth = mg_get_header(conn, "Authorization");
    char want[512];
    snprintf(want, sizeof want, "Bearer %s", fake.key ? fake.key : "");
    bool ok = !fake.key ||
              (auth && (strcmp(auth, want) == 0 || (bare_ok && strcmp(auth, fake.key) == 0)));
    pthread_mutex_lock(&fake.mu);
    fake.requests++;
    if (fake.key)
        ok ? fake.auth_ok++ : fake.auth_bad++;
    pthread_mutex_unlock(&fake.mu);
    return ok;
}

/* Adds a job (called with the lock held); NULL when the table is full. */
static fake_job_t *fake_job_add_locked(const char *id_prefix, json_t *input)
{
    if (fake.n_jobs >= FAKE_JOBS_MAX)
        return NULL;
    fake_job_t *j = &fake.jobs[fake.n_jobs++];
    memset(j, 0, sizeof *j);
    snprintf(j->id, sizeof j->id, "%s%04ld", id_prefix, ++fake.seq);
    const char *fault = json_string_value(json_object_get(input, "fault"));
    snprintf(j->fault, sizeof j->fault, "%s", fault ? fault : "");
    json_int_t steps = json_integer_value(json_object_get(input, "steps"));
    json_int_t outputs = json_integer_value(json_object_get(input, "outputs"));
    j->steps = steps > 0 && steps <= 100 ? (int)steps : 4;
    j->outputs =
        json_is_integer(json_object_get(input, "outputs")) && outputs >= 0 && outputs <= 200
            ? (int)outputs
            : 1;
    j->input = json_incref(input);
    fake.creates++;
    return j;
}

/* The job with this id (lock held), or NULL. */
static fake_job_t *fake_job_find_locked(const char *id)
{
    for (int i = 0; i < fake.n_jobs; i++)
        if (strcmp(fake.jobs[i].id, id) == 0)
            return &fake.jobs[i];
    return NULL;
}

/* The output file URLs of a job: /files/<id>-<i>.png, or /files/big-... */
static json_t *fake_output_urls(const fake_job_t *j)
{
    json_t *urls = json_array();
    for (int i = 0; i < j->outputs; i++) {
        char url[160];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/files/%s%s-%d.png?sig=abc", fake.port,
                 starts_with(j->fault, "big-output") ? "big-" : "", j->id, i);
        json_array_append_new(urls, json_string(url));
    }
    return urls;
}

/* A 1x1 PNG. */
static const unsigned char fake_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
    0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00,
    0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78,
    0xda, 0x63, 0x60, 0x60, 0x60, 0xf8, 0x0f, 0x00, 0x01, 0x04, 0x01, 0x00, 0x5f, 0xe5,
    0xc3, 0x4b, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

#define FAKE_BIG_BYTES (4 * 1024 * 1024)

/* GET /files/<name>: the PNG, or 4 MiB of zeros for "big-" names. No auth:
 * like Replicate's delivery URLs, the URL itself is the capability. */
static int fake_on_file(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    pthread_mutex_lock(&fake.mu);
    fake.downloads++;
    pthread_mutex_unlock(&fake.mu);
    if (strstr(ri->local_uri, "/files/big-")) {
        mg_printf(conn,
                  "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                  "Connection: close\r\n\r\n",
                  FAKE_BIG_BYTES);
        static const char zeros[64 * 1024];
        for (int sent = 0; sent < FAKE_BIG_BYTES; sent += (int)sizeof zeros)
            if (mg_write(conn, zeros, sizeof zeros) <= 0)
                break;
        return 200;
    }
    fake_send_raw(conn, 200, "OK", "image/png", NULL, (const char *)fake_png, sizeof fake_png);
    return 200;
}

/* GET /fake/stats: what the fake saw. */
static int fake_on_stats(struct mg_connection *conn, void *cbdata)
{
    pthread_mutex_lock(&fake.mu);
    json_t *stats = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "requests", (json_int_t)fake.requests,
        "auth_ok", (json_int_t)fake.auth_ok, "auth_bad", (json_int_t)fake.auth_bad, "creates",
        (json_int_t)fake.creates, "polls", (json_int_t)fake.polls, "cancels",
        (json_int_t)fake.cancels, "downloads", (json_int_t)fake.downloads, "prefer_wait",
        (json_int_t)fake.prefer_wait, "last_cancelled", fake.last_cancelled);
    pthread_mutex_unlock(&fake.mu);
    return fake_send_json(conn, 200, "OK", NULL, stats);
}

/* Starts the server on 127.0.0.1:port_text, prints "NAME: listening on
 * 127.0.0.1:PORT", lets add_handlers register its routes, and runs until
 * SIGTERM or SIGINT. */
static int fake_main(const char *name, int argc, char **argv,
                     void (*add_handlers)(struct mg_context *))
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [--key KEY]\n", name);
        return 64;
    }
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--key") == 0)
            fake.key = argv[i + 1];
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* civetweb's threads inherit it */
    signal(SIGPIPE, SIG_IGN);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%s", argv[1]);
    const char *options[] = {"listening_ports",   listen, "num_threads", "16",
                             "enable_keep_alive", "no",   NULL};
    mg_init_library(0);
    struct mg_context *ctx = mg_start(NULL, NULL, options);
    struct mg_server_port ports[2];
    if (!ctx || mg_get_server_ports(ctx, 2, ports) < 1) {
        fprintf(stderr, "%s: cannot listen on %s\n", name, listen);
        return 2;
    }
    fake.port = ports[0].port;
    mg_set_request_handler(ctx, "/files/", fake_on_file, NULL);
    mg_set_request_handler(ctx, "/fake/stats", fake_on_stats, NULL);
    add_handlers(ctx);
    printf("%s: listening on 127.0.0.1:%d\n", name, fake.port);
    fflush(stdout);
    int sig = 0;
    sigwait(&stop_signals, &sig);
    pthread_mutex_lock(&fake.mu);
    fake.stopping = true;
    pthread_cond_broadcast(&fake.changed);
    pthread_mutex_unlock(&fake.mu);
    _exit(0); /* nothing to save; mg_stop would take seconds */
}

#endif
