/*
 * fake_a1111: a small AUTOMATIC1111 web UI API for the a1111 connector's
 * tests, following the shapes of modules/api/api.py and models.py:
 *
 *   POST /sdapi/v1/txt2img   {"prompt","steps","batch_size","n_iter",...}
 *   POST /sdapi/v1/img2img   the same plus "init_images" (required, else 422)
 *        -> {"images": [base64 PNG...], "parameters": {...}, "info": "<JSON text>"}
 *        after "sampling" steps x 20 ms, one image per batch_size x n_iter
 *   GET  /sdapi/v1/progress  {"progress","eta_relative","state": {"skipped",
 *        "interrupted","job","job_count","job_timestamp","job_no",
 *        "sampling_step","sampling_steps"},"current_image","textinfo"}
 *   POST /sdapi/v1/interrupt {} (the running generation stops early, as A1111's
 *        does, and answers with what it has)
 *   GET  /sdapi/v1/options   a few settings
 *   GET  /fake/stats         what it saw: {"requests","generations",
 *        "interrupts","progress_polls","polls_without_skip","auth_bad"}
 *
 * Faults are chosen by the prompt's start:
 *   429-then-ok   the first request with that prompt gets 429 with Retry-After: 1
 *   500-then-ok   the first request with that prompt gets 500
 *   slow          stalls until interrupted (or the fake stops)
 *   malformed     200 with a body that is not JSON
 *   bad-base64    200 with an image that is not base64
 *
 * With --auth USER:PASS every request must carry that HTTP Basic auth, as
 * A1111's --api-auth asks; others get 401 and are counted in auth_bad.
 *
 *   fake_a1111 PORT [--auth USER:PASS]     (PORT 0: pick one)
 */
#include "fake_common.h"

#include <openssl/evp.h>

#define STEP_MS 20

/* A 1x1 transparent PNG. */
static const char tiny_png_b64[] = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPh"
                                   "fDwAChwGA60e6kgAAAABJRU5ErkJggg==";

static struct {
    const char *auth; /* "Basic <base64 of USER:PASS>", or NULL */
    long requests, generations, interrupts, progress_polls, polls_without_skip, auth_bad;
    bool running, interrupted;
    long step, steps, job_no, job_count;
} a1111;

static void count(long *counter)
{
    pthread_mutex_lock(&fake_common.mu);
    (*counter)++;
    pthread_mutex_unlock(&fake_common.mu);
}

/* Counts the request and checks its Basic auth; false (401 sent) when wrong. */
static bool authorized(struct mg_connection *conn)
{
    count(&a1111.requests);
    const char *got = mg_get_header(conn, "Authorization");
    if (!a1111.auth || (got && strcmp(got, a1111.auth) == 0))
        return true;
    count(&a1111.auth_bad);
    fake_send_json(conn, 401, "Unauthorized", "WWW-Authenticate: Basic\r\n",
                   json_pack("{s:s}", "detail", "Incorrect username or password"));
    return false;
}

/* Runs the sampler: steps x STEP_MS per image, updating what /progress
 * reports; stops early once interrupted. */
static void sample(long steps, long images)
{
    pthread_mutex_lock(&fake_common.mu);
    a1111.running = true;
    a1111.interrupted = false;
    a1111.steps = steps;
    a1111.job_count = images;
    pthread_mutex_unlock(&fake_common.mu);
    for (long image = 0; image < images; image++) {
        for (long step = 1; step <= steps; step++) {
            pthread_mutex_lock(&fake_common.mu);
            a1111.job_no = image;
            a1111.step = step;
            bool stop = a1111.interrupted;
            pthread_mutex_unlock(&fake_common.mu);
            if (stop || !fake_pause_ms(STEP_MS))
                goto done;
        }
    }
done:
    pthread_mutex_lock(&fake_common.mu);
    a1111.running = false;
    pthread_mutex_unlock(&fake_common.mu);
}

/* Stalls until an interrupt comes (or the fake stops). */
static void stall_until_interrupted(void)
{
    pthread_mutex_lock(&fake_common.mu);
    a1111.running = true;
    a1111.interrupted = false;
    pthread_mutex_unlock(&fake_common.mu);
    for (bool stop = false; !stop && fake_pause_ms(20);) {
        pthread_mutex_lock(&fake_common.mu);
        stop = a1111.interrupted;
        pthread_mutex_unlock(&fake_common.mu);
    }
    pthread_mutex_lock(&fake_common.mu);
    a1111.running = false;
    pthread_mutex_unlock(&fake_common.mu);
}

static int send_detail(struct mg_connection *conn, int status, const char *reason,
                       const char *extra_headers, json_t *detail)
{
    fake_send_json(conn, status, reason, extra_headers, json_pack("{s:o}", "detail", detail));
    return status;
}

/* The faults every generation shares. Returns a status when it answered. */
static int faults(struct mg_connection *conn, const char *prompt)
{
    if (fake_starts_with(prompt, "429-then-ok") && fake_count(prompt) == 1)
        return send_detail(conn, 429, "Too Many Requests", "Retry-After: 1\r\n",
                           json_string("Too many requests"));
    if (fake_starts_with(prompt, "500-then-ok") && fake_count(prompt) == 1) {
        fake_send_json(conn, 500, "Internal Server Error", NULL,
                       json_pack("{s:s, s:s, s:s, s:s}", "error", "OutOfMemoryError", "detail", "",
                                 "body", "", "errors", "CUDA out of memory"));
        return 500;
    }
    if (fake_starts_with(prompt, "slow")) {
        stall_until_interrupted();
        return send_detail(conn, 503, "Service Unavailable", NULL, json_string("stalled"));
    }
    if (fake_starts_with(prompt, "malformed")) {
        fake_send_raw(conn, "application/json", "{\"images\": [\"iVBOR");
        return 200;
    }
    return 0;
}

/* {"images", "parameters" (the request without init_images), "info"}. */
static json_t *answer(json_t *req, const char *prompt, long images)
{
    json_t *list = json_array();
    for (long i = 0; i < images; i++)
        json_array_append_new(list, json_string(fake_starts_with(prompt, "bad-base64")
                                                    ? "this is not base64!"
                                                    : tiny_png_b64));
    json_t *info =
        json_pack("{s:s, s:[s], s:i, s:[i], s:i, s:i, s:s, s:i}", "prompt", prompt, "all_prompts",
                  prompt, "seed", 1234, "all_seeds", 1234, "width",
                  (int)json_integer_value(json_object_get(req, "width")), "height",
                  (int)json_integer_value(json_object_get(req, "height")), "sampler_name",
                  "Euler a", "steps", (int)json_integer_value(json_object_get(req, "steps")));
    char *info_text = json_dumps(info, JSON_COMPACT);
    json_decref(info);
    json_t *parameters = json_deep_copy(req);
    json_object_del(parameters, "init_images");
    json_t *body = json_pack("{s:o, s:o, s:s}", "images", list, "parameters", parameters, "info",
                             info_text ? info_text : "");
    free(info_text);
    return body;
}

static int on_generate(struct mg_connection *conn, bool img2img)
{
    if (!authorized(conn))
        return 401;
    json_t *req = fake_read_body(conn);
    if (!req)
        return send_detail(conn, 422, "Unprocessable Entity", NULL,
                           json_pack("[{s:[s], s:s, s:s}]", "loc", "body", "msg",
                                     "value is not a valid dict", "type", "type_error.dict"));
    const char *prompt = json_string_value(json_object_get(req, "prompt"));
    if (!prompt)
        prompt = "";
    int status = faults(conn, prompt);
    if (!status && img2img && !json_array_size(json_object_get(req, "init_images")))
        status = send_detail(conn, 422, "Unprocessable Entity", NULL,
                             json_pack("[{s:[s, s], s:s, s:s}]", "loc", "body", "init_images",
                                       "msg", "field required", "type", "value_error.missing"));
    if (!status) {
        count(&a1111.generations);
        json_int_t steps = json_integer_value(json_object_get(req, "steps"));
        json_int_t batch = json_integer_value(json_object_get(req, "batch_size"));
        json_int_t iterations = json_integer_value(json_object_get(req, "n_iter"));
        long images = (long)((batch > 0 ? batch : 1) * (iterations > 0 ? iterations : 1));
        sample(steps > 0 ? (long)steps : 20, images);
        fake_send_json(conn, 200, "OK", NULL, answer(req, prompt, images));
        status = 200;
    }
    json_decref(req);
    return status;
}

static int on_txt2img(struct mg_connection *conn, void *cbdata)
{
    return on_generate(conn, false);
}

static int on_img2img(struct mg_connection *conn, void *cbdata)
{
    return on_generate(conn, true);
}

static int on_progress(struct mg_connection *conn, void *cbdata)
{
    if (!authorized(conn))
        return 401;
    const char *query = mg_get_request_info(conn)->query_string;
    bool skip = query && strstr(query, "skip_current_image=true");
    pthread_mutex_lock(&fake_common.mu);
    a1111.progress_polls++;
    if (!skip)
        a1111.polls_without_skip++;
    bool running = a1111.running;
    double done = a1111.steps > 0 && a1111.job_count > 0
                      ? ((double)a1111.job_no + (double)a1111.step / (double)a1111.steps) /
                            (double)a1111.job_count
                      : 0.0;
    json_t *state = json_pack(
        "{s:b, s:b, s:s, s:i, s:s, s:i, s:i, s:i}", "skipped", 0, "interrupted", a1111.interrupted,
        "job", running ? "txt2img" : "", "job_count", running ? (int)a1111.job_count : 0,
        "job_timestamp", "20240501120000", "job_no", (int)a1111.job_no, "sampling_step",
        running ? (int)a1111.step : 0, "sampling_steps", running ? (int)a1111.steps : 0);
    pthread_mutex_unlock(&fake_common.mu);
    double eta = running && done > 0 ? (1.0 - done) * 2.0 : 0.0;
    fake_send_json(conn, 200, "OK", NULL,
                   json_pack("{s:f, s:f, s:o, s:n, s:n}", "progress", running ? done : 0.0,
                             "eta_relative", eta, "state", state, "current_image", "textinfo"));
    return 200;
}

static int on_interrupt(struct mg_connection *conn, void *cbdata)
{
    if (!authorized(conn))
        return 401;
    pthread_mutex_lock(&fake_common.mu);
    a1111.interrupts++;
    a1111.interrupted = true;
    pthread_cond_broadcast(&fake_common.changed);
    pthread_mutex_unlock(&fake_common.mu);
    fake_send_json(conn, 200, "OK", NULL, json_object());
    return 200;
}

static int on_options(struct mg_connection *conn, void *cbdata)
{
    if (!authorized(conn))
        return 401;
    fake_send_json(conn, 200, "OK", NULL,
                   json_pack("{s:s, s:s, s:b}", "sd_model_checkpoint",
                             "v1-5-pruned-emaonly.safetensors [6ce0161689]", "samples_format",
                             "png", "save_images_add_number", 1));
    return 200;
}

static int on_stats(struct mg_connection *conn, void *cbdata)
{
    pthread_mutex_lock(&fake_common.mu);
    json_t *stats = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I}", "requests", (json_int_t)a1111.requests, "generations",
        (json_int_t)a1111.generations, "interrupts", (json_int_t)a1111.interrupts, "progress_polls",
        (json_int_t)a1111.progress_polls, "polls_without_skip",
        (json_int_t)a1111.polls_without_skip, "auth_bad", (json_int_t)a1111.auth_bad);
    pthread_mutex_unlock(&fake_common.mu);
    fake_send_json(conn, 200, "OK", NULL, stats);
    return 200;
}

/* "Basic " and the base64 of user:pass, as a client sends it. */
static char *basic_auth(const char *user_pass)
{
    size_t len = strlen(user_pass);
    char *header = malloc(6 + 4 * ((len + 2) / 3) + 1);
    if (!header)
        return NULL;
    memcpy(header, "Basic ", 6);
    EVP_EncodeBlock((unsigned char *)header + 6, (const unsigned char *)user_pass, (int)len);
    return header;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fake_a1111 PORT [--auth USER:PASS]\n");
        return 64;
    }
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--auth") == 0)
            a1111.auth = basic_auth(argv[i + 1]);
    static const fake_route_t routes[] = {{"/sdapi/v1/txt2img", on_txt2img},
                                          {"/sdapi/v1/img2img", on_img2img},
                                          {"/sdapi/v1/progress", on_progress},
                                          {"/sdapi/v1/interrupt", on_interrupt},
                                          {"/sdapi/v1/options", on_options},
                                          {"/fake/stats", on_stats},
                                          {NULL, NULL}};
    return fake_serve("fake_a1111", argv[1], routes);
}
