/*
 * fake_runpod: a small server following RunPod's serverless endpoint API
 * for the runpod connector's tests:
 *
 *   POST /v2/{endpoint}/run            {"input", "policy"?} -> {"id","status":"IN_QUEUE"}
 *   GET  /v2/{endpoint}/status/{id}    the job, one step further each time
 *   POST /v2/{endpoint}/cancel/{id}    {"id","status":"CANCELLED"}
 *   GET  /v2/{endpoint}/health         {"jobs":{...},"workers":{...}}
 *   GET  /files/...                    output files
 *   GET  /fake/stats                   what it saw (fake_remote.h)
 *
 * Only the endpoint given with --endpoint exists (default "ep-test");
 * others get 404. A job is IN_QUEUE when created and on the first poll,
 * then IN_PROGRESS with a worker's progress update as "output" (the text
 * runpod.serverless.progress_update sends, "denoising 25%", or with
 * input.progress "object" an object {"progress": 25, "message": ...}),
 * and COMPLETED after input.steps + 1 polls (default 4) with output
 * {"images": [input.outputs file URLs]}. Faults by input.fault, as in
 * fake_replicate.c: 429-then-ok, 500-then-ok, poll-500-then-ok, slow,
 * malformed, hang, fail (FAILED with an error), canceled-remote
 * (CANCELLED), timed-out (TIMED_OUT), big-output, echo-key, no-status
 * (polls answer an object without "status").
 * With --key KEY requests must carry "Authorization: Bearer KEY" or the
 * bare key (both are accepted by RunPod); others get 401.
 *
 *   fake_runpod PORT [--key KEY] [--endpoint ID]    (PORT 0: pick one)
 */
#include "fake_remote.h"

static const char *endpoint_id = "ep-test";

static int send_error(struct mg_connection *conn, int status, const char *reason,
                      const char *extra_headers, const char *message)
{
    return fake_send_json(conn, status, reason, extra_headers,
                          json_pack("{s:s}", "error", message));
}

/* The progress update a worker sent by the poll'th status request. */
static json_t *update_of(const fake_job_t *j, int step)
{
    int percent = step * 100 / j->steps;
    char text[64];
    snprintf(text, sizeof text, "denoising %d%%", percent);
    const char *style = json_string_value(json_object_get(j->input, "progress"));
    if (style && strcmp(style, "object") == 0)
        return json_pack("{s:i, s:s}", "progress", percent, "message", "denoising");
    return json_string(text);
}

/* The job's status document (lock held). */
static json_t *status_json(const fake_job_t *j, const char *auth)
{
    int running = j->polls - 1; /* polls since it left the queue */
    if (j->cancelled || (fake_starts_with(j->fault, "canceled-remote") && running >= 0))
        return json_pack("{s:s, s:s}", "id", j->id, "status", "CANCELLED");
    if (j->polls <= 1)
        return json_pack("{s:s, s:s}", "id", j->id, "status", "IN_QUEUE");
    if (fake_starts_with(j->fault, "hang"))
        return json_pack("{s:s, s:s, s:s, s:i}", "id", j->id, "status", "IN_PROGRESS", "output",
                         "loading model", "delayTime", 120);
    if (fake_starts_with(j->fault, "fail") || fake_starts_with(j->fault, "echo-key")) {
        char text[600];
        snprintf(text, sizeof text, "%s %.500s",
                 fake_starts_with(j->fault, "fail") ? "handler raised: CUDA out of memory;"
                                                    : "worker saw header",
                 fake_starts_with(j->fault, "fail") ? "" : (auth ? auth : "(none)"));
        return json_pack("{s:s, s:s, s:s, s:i, s:i}", "id", j->id, "status", "FAILED", "error",
                         text, "delayTime", 120, "executionTime", 300);
    }
    if (fake_starts_with(j->fault, "timed-out"))
        return json_pack("{s:s, s:s, s:i}", "id", j->id, "status", "TIMED_OUT", "delayTime", 120);
    if (running < j->steps)
        return json_pack("{s:s, s:s, s:o, s:i}", "id", j->id, "status", "IN_PROGRESS", "output",
                         update_of(j, running), "delayTime", 120);
    return json_pack("{s:s, s:s, s:{s:o}, s:i, s:i, s:s}", "id", j->id, "status", "COMPLETED",
                     "output", "images", fake_output_urls(j), "delayTime", 120, "executionTime",
                     2500, "workerId", "fake-worker-1");
}

static int create_faults(struct mg_connection *conn, const char *fault)
{
    if (fake_starts_with(fault, "429-then-ok") && fake_count(fault) == 1)
        return send_error(conn, 429, "Too Many Requests", "Retry-After: 1\r\n",
                          "rate limit exceeded");
    if (fake_starts_with(fault, "500-then-ok") && fake_count(fault) == 1)
        return send_error(conn, 500, "Internal Server Error", NULL, "internal error");
    if (fake_starts_with(fault, "slow")) {
        fake_pause_ms(FAKE_STALL_MAX_S * 1000L);
        return send_error(conn, 503, "Service Unavailable", NULL, "stalled");
    }
    if (fake_starts_with(fault, "malformed")) {
        static const char broken[] = "{\"id\": \"x\", \"status\": \"IN_QU";
        fake_send(conn, 200, "OK", "application/json", NULL, broken, strlen(broken));
        return 200;
    }
    return 0;
}

static int run(struct mg_connection *conn)
{
    json_t *req = fake_read_body(conn);
    json_t *input = json_object_get(req, "input");
    if (!json_is_object(input)) {
        json_decref(req);
        return send_error(conn, 400, "Bad Request", NULL, "input is required");
    }
    const char *fault = json_string_value(json_object_get(input, "fault"));
    int status = create_faults(conn, fault ? fault : "");
    if (status) {
        json_decref(req);
        return status;
    }
    pthread_mutex_lock(&fake.mu);
    fake_job_t *j = fake_job_add_locked("c80ffee4-f315-4e25-a146-", input);
    json_t *body = j ? json_pack("{s:s, s:s}", "id", j->id, "status", "IN_QUEUE") : NULL;
    pthread_mutex_unlock(&fake.mu);
    json_decref(req);
    if (!body)
        return send_error(conn, 429, "Too Many Requests", "Retry-After: 1\r\n", "queue full");
    return fake_send_json(conn, 200, "OK", NULL, body);
}

static int health(struct mg_connection *conn)
{
    pthread_mutex_lock(&fake.mu);
    json_t *body = json_pack("{s:{s:I, s:i, s:i, s:i, s:i}, s:{s:i, s:i}}", "jobs", "completed",
                             (json_int_t)fake.creates, "failed", 0, "inProgress", 0, "inQueue", 0,
                             "retried", 0, "workers", "idle", 1, "running", 0);
    pthread_mutex_unlock(&fake.mu);
    return fake_send_json(conn, 200, "OK", NULL, body);
}

/* /v2/{endpoint}/{run | health | status/{id} | cancel/{id}} */
static int on_v2(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (!fake_authorized(conn, true))
        return send_error(conn, 401, "Unauthorized", NULL, "Unauthorized");
    const char *rest = ri->local_uri + strlen("/v2/");
    size_t n = strcspn(rest, "/");
    if (n != strlen(endpoint_id) || strncmp(rest, endpoint_id, n) != 0 || rest[n] != '/')
        return send_error(conn, 404, "Not Found", NULL, "endpoint not found");
    const char *op = rest + n + 1;
    bool post = strcmp(ri->request_method, "POST") == 0;
    if (strcmp(op, "run") == 0 && post)
        return run(conn);
    if (strcmp(op, "health") == 0 && !post)
        return health(conn);
    bool is_status = fake_starts_with(op, "status/") && !post;
    bool is_cancel = fake_starts_with(op, "cancel/") && post;
    if (!is_status && !is_cancel)
        return send_error(conn, 404, "Not Found", NULL, "not found");
    const char *id = op + strlen("status/");
    pthread_mutex_lock(&fake.mu);
    fake_job_t *j = fake_job_find_locked(id);
    json_t *body = NULL;
    bool poll_fault = false, poll_malformed = false;
    if (j && is_cancel) {
        j->cancelled = true;
        fake.cancels++;
        snprintf(fake.last_cancelled, sizeof fake.last_cancelled, "%s", j->id);
        body = json_pack("{s:s, s:s}", "id", j->id, "status", "CANCELLED");
    } else if (j) {
        fake.polls++;
        poll_fault = fake_starts_with(j->fault, "poll-500-then-ok") && !j->faulted;
        j->faulted = true;
        poll_malformed = fake_starts_with(j->fault, "poll-malformed");
        if (!poll_fault) {
            j->polls++;
            body = fake_starts_with(j->fault, "no-status")
                       ? json_pack("{s:s}", "id", j->id)
                       : status_json(j, mg_get_header(conn, "Authorization"));
        }
    }
    pthread_mutex_unlock(&fake.mu);
    if (poll_fault)
        return send_error(conn, 500, "Internal Server Error", NULL, "internal error");
    if (poll_malformed) {
        json_decref(body);
        fake_send(conn, 200, "OK", "application/json", NULL, "<html>oops", 10);
        return 200;
    }
    if (!body)
        return send_error(conn, 404, "Not Found", NULL, "request does not exist");
    return fake_send_json(conn, 200, "OK", NULL, body);
}

int main(int argc, char **argv)
{
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--endpoint") == 0)
            endpoint_id = argv[i + 1];
    static const fake_route_t routes[] = {{"/v2/", on_v2}, {NULL, NULL}};
    return fake_main("fake_runpod", argc, argv, routes);
}
