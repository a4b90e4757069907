/*
 * fake_replicate: a small server following Replicate's HTTP API for the
 * replicate connector's tests:
 *
 *   POST /v1/predictions                      {"version","input"} -> 201 prediction
 *   POST /v1/models/{owner}/{name}/predictions {"input"}           -> 201 prediction
 *   GET  /v1/predictions/{id}                 the prediction, one step further each time
 *   POST /v1/predictions/{id}/cancel          status "canceled"
 *   GET  /v1/account                          {"type","username","name"}
 *   GET  /files/...                           output files (no auth, like replicate.delivery)
 *   GET  /fake/stats                          what it saw (fake_remote.h)
 *
 * A prediction is "starting" when created, "processing" on the first
 * polls with tqdm bars in its logs ("50%|#####     | 2/4"), and "succeeded"
 * after input.steps + 1 polls (default 4) with input.outputs file URLs (default
 * 1) as output. With "Prefer: wait=N" it is answered finished at once.
 * Faults are chosen by input.fault:
 *   429-then-ok       the first create gets 429 with Retry-After: 1
 *   500-then-ok       the first create gets 500
 *   poll-500-then-ok  the first poll gets 500
 *   slow              the create stalls until the client gives up
 *   malformed         the create answers 201 with a body that is not JSON
 *   hang              processing at 10% for ever (until cancelled)
 *   fail              fails on the second poll with a CUDA error
 *   canceled-remote   canceled (by someone else) on the first poll
 *   echo-key          fails quoting the Authorization header it got
 *   big-output        the output file is 4 MiB
 *   text-output       the output is a list of strings, no files
 *   no-status         polls answer a JSON object without "status"
 *   bad-id            the created prediction's id is a path ("../../v1/account?x=")
 * With --key KEY requests must carry "Authorization: Bearer KEY" (401 otherwise).
 *
 *   fake_replicate PORT [--key KEY]     (PORT 0: pick one)
 */
#include "fake_remote.h"

static int send_problem(struct mg_connection *conn, int status, const char *reason,
                        const char *extra_headers, const char *title, const char *detail)
{
    return fake_send_json(
        conn, status, reason, extra_headers,
        json_pack("{s:s, s:s, s:i}", "title", title, "detail", detail, "status", status));
}

/* The logs after k of steps steps: a seed line, then one tqdm bar per step. */
static json_t *logs_of(int k, int steps)
{
    char logs[4096] = "Using seed: 42\n";
    size_t used = strlen(logs);
    for (int s = 1; s <= k && used < sizeof logs - 80; s++)
        used += (size_t)snprintf(logs + used, sizeof logs - used,
                                 "%3d%%|%-10.*s| %d/%d [00:0%d<00:0%d]\n", s * 100 / steps,
                                 s * 10 / steps, "##########", s, steps, s, steps - s);
    return json_string(logs);
}

/* The prediction as JSON (lock held). */
static json_t *prediction_json(const fake_job_t *j, const char *auth)
{
    const char *status = "starting";
    json_t *logs = json_string(""), *output = json_null(), *error = json_null();
    if (j->cancelled) {
        status = "canceled";
    } else if (fake_starts_with(j->fault, "hang") && j->polls > 0) {
        status = "processing";
        json_decref(logs);
        logs = json_string("Using seed: 42\n 10%|#         | 1/10 [00:01<00:09]\n");
    } else if (fake_starts_with(j->fault, "canceled-remote") && j->polls > 0) {
        status = "canceled";
    } else if ((fake_starts_with(j->fault, "fail") || fake_starts_with(j->fault, "echo-key")) &&
               j->polls >= 2) {
        status = "failed";
        json_decref(error);
        char text[600];
        if (fake_starts_with(j->fault, "echo-key"))
            snprintf(text, sizeof text, "upstream refused the header %.500s",
                     auth ? auth : "(none)");
        else
            snprintf(text, sizeof text, "CUDA out of memory. Tried to allocate 2.00 GiB");
        error = json_string(text);
    } else if (j->finished_at_once || j->polls > j->steps) {
        status = "succeeded";
        json_decref(logs);
        logs = logs_of(j->steps, j->steps);
        json_decref(output);
        output = fake_starts_with(j->fault, "text-output") ? json_pack("[s, s]", "Hello", " world")
                                                           : fake_output_urls(j);
    } else if (j->polls > 0) {
        status = "processing";
        json_decref(logs);
        logs = logs_of(j->polls - 1, j->steps);
    }
    char get[160], cancel[176];
    snprintf(get, sizeof get, "http://127.0.0.1:%d/v1/predictions/%s", fake_common.port, j->id);
    snprintf(cancel, sizeof cancel, "%s/cancel", get);
    return json_pack("{s:s, s:o, s:s, s:O, s:o, s:o, s:o, s:s, s:s, s:{s:s, s:s}, s:{s:f}}", "id",
                     j->id, "model", j->model[0] ? json_string(j->model) : json_null(), "version",
                     "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa", "input",
                     j->input, "logs", logs, "output", output, "error", error, "status", status,
                     "created_at", "2026-11-22T08:00:00.000Z", "urls", "get", get, "cancel", cancel,
                     "metrics", "predict_time", 1.5);
}

/* Faults of a create request; a status when answered, else 0. */
static int create_faults(struct mg_connection *conn, const char *fault)
{
    if (fake_starts_with(fault, "429-then-ok") && fake_count(fault) == 1)
        return send_problem(conn, 429, "Too Many Requests", "Retry-After: 1\r\n",
                            "Request was throttled",
                            "Request was throttled. Expected available "
                            "in 1 second.");
    if (fake_starts_with(fault, "500-then-ok") && fake_count(fault) == 1)
        return send_problem(conn, 500, "Internal Server Error", NULL, "Internal Server Error",
                            "Something went wrong");
    if (fake_starts_with(fault, "slow")) {
        fake_pause_ms(FAKE_STALL_MAX_S * 1000L);
        return send_problem(conn, 503, "Service Unavailable", NULL, "Unavailable", "stalled");
    }
    if (fake_starts_with(fault, "malformed")) {
        static const char broken[] = "{\"id\": \"abc\", \"status\": ";
        fake_send(conn, 201, "Created", "application/json", NULL, broken, strlen(broken));
        return 201;
    }
    return 0;
}

/* POST /v1/predictions or /v1/models/{owner}/{name}/predictions. */
static int create(struct mg_connection *conn, const char *model)
{
    json_t *req = fake_read_body(conn);
    json_t *input = json_object_get(req, "input");
    if (!json_is_object(input) || (!model && !json_is_string(json_object_get(req, "version")))) {
        json_decref(req);
        return send_problem(conn, 422, "Unprocessable Entity", NULL, "Input validation failed",
                            "input and version are required");
    }
    const char *fault = json_string_value(json_object_get(input, "fault"));
    int status = create_faults(conn, fault ? fault : "");
    if (status) {
        json_decref(req);
        return status;
    }
    const char *prefer = mg_get_header(conn, "Prefer");
    pthread_mutex_lock(&fake.mu);
    fake_job_t *j = fake_job_add_locked("rp", input);
    json_t *body = NULL;
    if (j) {
        snprintf(j->model, sizeof j->model, "%s", model ? model : "");
        if (fake_starts_with(prefer, "wait")) {
            fake.prefer_wait++;
            j->finished_at_once = !fake_starts_with(j->fault, "hang");
        }
        body = prediction_json(j, mg_get_header(conn, "Authorization"));
        if (fake_starts_with(j->fault, "bad-id")) /* hostile: a path in the id */
            json_object_set_new(body, "id", json_string("../../v1/account?x="));
    }
    pthread_mutex_unlock(&fake.mu);
    json_decref(req);
    if (!body)
        return send_problem(conn, 429, "Too Many Requests", "Retry-After: 1\r\n", "Full",
                            "too many predictions");
    return fake_send_json(conn, 201, "Created", NULL, body);
}

/* GET /v1/predictions/{id} and POST /v1/predictions/{id}/cancel. */
static int on_predictions(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (!fake_authorized(conn, false))
        return send_problem(conn, 401, "Unauthorized", NULL, "Unauthenticated",
                            "You did not pass a valid authentication token");
    const char *rest = ri->local_uri + strlen("/v1/predictions");
    if (rest[0] == '\0' && strcmp(ri->request_method, "POST") == 0)
        return create(conn, NULL);
    char id[64] = "";
    bool cancel = false;
    if (rest[0] == '/') {
        size_t n = strcspn(rest + 1, "/");
        snprintf(id, sizeof id, "%.*s", (int)(n < sizeof id ? n : sizeof id - 1), rest + 1);
        cancel = strcmp(rest + 1 + n, "/cancel") == 0;
    }
    pthread_mutex_lock(&fake.mu);
    fake_job_t *j = fake_job_find_locked(id);
    json_t *body = NULL;
    bool poll_fault = false, poll_malformed = false;
    if (j && cancel && strcmp(ri->request_method, "POST") == 0) {
        j->cancelled = true;
        fake.cancels++;
        snprintf(fake.last_cancelled, sizeof fake.last_cancelled, "%s", j->id);
        body = prediction_json(j, NULL);
    } else if (j && !cancel && strcmp(ri->request_method, "GET") == 0) {
        fake.polls++;
        poll_fault = fake_starts_with(j->fault, "poll-500-then-ok") && !j->faulted;
        j->faulted = true;
        poll_malformed = fake_starts_with(j->fault, "poll-malformed");
        if (!poll_fault) {
            j->polls++;
            body = fake_starts_with(j->fault, "no-status")
                       ? json_pack("{s:s, s:s}", "id", j->id, "detail", "who knows")
                       : prediction_json(j, mg_get_header(conn, "Authorization"));
        }
    }
    pthread_mutex_unlock(&fake.mu);
    if (poll_fault)
        return send_problem(conn, 500, "Internal Server Error", NULL, "Internal Server Error",
                            "Something went wrong");
    if (poll_malformed) {
        json_decref(body);
        fake_send(conn, 200, "OK", "application/json", NULL, "<html>oops", 10);
        return 200;
    }
    if (!body)
        return send_problem(conn, 404, "Not Found", NULL, "Not found", "Not found.");
    return fake_send_json(conn, 200, "OK", NULL, body);
}

/* POST /v1/models/{owner}/{name}/predictions. */
static int on_models(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (!fake_authorized(conn, false))
        return send_problem(conn, 401, "Unauthorized", NULL, "Unauthenticated",
                            "You did not pass a valid authentication token");
    const char *rest = ri->local_uri + strlen("/v1/models/");
    const char *end = strstr(rest, "/predictions");
    if (!end || end[strlen("/predictions")] != '\0' || strcmp(ri->request_method, "POST") != 0)
        return send_problem(conn, 404, "Not Found", NULL, "Not found", "Not found.");
    char model[FAKE_NAME_LEN];
    snprintf(model, sizeof model, "%.*s", (int)(end - rest), rest);
    return create(conn, model);
}

static int on_account(struct mg_connection *conn, void *cbdata)
{
    if (!fake_authorized(conn, false))
        return send_problem(conn, 401, "Unauthorized", NULL, "Unauthenticated",
                            "You did not pass a valid authentication token");
    return fake_send_json(conn, 200, "OK", NULL,
                          json_pack("{s:s, s:s, s:s, s:n}", "type", "user", "username", "kiln-test",
                                    "name", "Kiln Test", "github_url"));
}

int main(int argc, char **argv)
{
    static const fake_route_t routes[] = {{"/v1/predictions", on_predictions},
                                          {"/v1/models/", on_models},
                                          {"/v1/account", on_account},
                                          {NULL, NULL}};
    return fake_main("fake_replicate", argc, argv, routes);
}
