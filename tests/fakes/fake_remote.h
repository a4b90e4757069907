/*
 * What the fakes of the remote-job APIs (fake_replicate.c, fake_runpod.c)
 * share: a civetweb server on 127.0.0.1, JSON replies, request bodies,
 * a table of remote jobs advanced one step per status request (so tests
 * see progress without timing), per-fault counters, stalls that end when
 * the fake stops, and files served for download.
 *
 * Header-only (static functions): each fake is one program. Built on
 * fake_common.h (stop flag, stalls, fault counts, sending, serving).
 */
#ifndef KILN_FAKE_REMOTE_H
#define KILN_FAKE_REMOTE_H

#include "fake_common.h"

#define FAKE_JOBS_MAX 256
#define FAKE_NAME_LEN 128

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

/* The remote jobs and what the fake saw; mu guards them. */
static struct {
    pthread_mutex_t mu;
    const char *key;
    long requests, auth_ok, auth_bad, creates, polls, cancels, downloads, prefer_wait;
    char last_cancelled[64];
    fake_job_t jobs[FAKE_JOBS_MAX];
    int n_jobs;
    long seq;
} fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

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
        snprintf(url, sizeof url, "http://127.0.0.1:%d/files/%s%s-%d.png?sig=abc", fake_common.port,
                 fake_starts_with(j->fault, "big-output") ? "big-" : "", j->id, i);
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
    fake_send(conn, 200, "OK", "image/png", NULL, (const char *)fake_png, sizeof fake_png);
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

#define FAKE_ROUTES_MAX 16

/* Serves routes (ending with a NULL uri) plus /files/ and /fake/stats on
 * 127.0.0.1:argv[1] (fake_serve), with --key KEY required as the bearer
 * token when given. */
static int fake_main(const char *name, int argc, char **argv, const fake_route_t *routes)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [--key KEY]\n", name);
        return 64;
    }
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--key") == 0)
            fake.key = argv[i + 1];
    fake_route_t all[FAKE_ROUTES_MAX + 3] = {{"/files/", fake_on_file},
                                             {"/fake/stats", fake_on_stats}};
    for (int i = 0; routes[i].uri && i < FAKE_ROUTES_MAX; i++)
        all[2 + i] = routes[i];
    return fake_serve(name, argv[1], all);
}

#endif
