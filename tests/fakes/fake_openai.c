/*
 * fake_openai: a small OpenAI-compatible server for the openai connector's
 * tests, following the public API's shapes:
 *
 *   POST /v1/chat/completions    {"model","messages","stream"} -> a completion,
 *                                or server-sent "chat.completion.chunk" events
 *   POST /v1/images/generations  {"model","prompt","n","response_format"}
 *   POST /v1/embeddings          {"model","input","dimensions"}
 *   GET  /fake/stats             what it saw (405 for another method or a body):
 *                                {"requests","auth_ok","auth_bad",
 *                                "connections"}
 *
 * Faults are chosen by the model name's start (or an X-Fake-Fault header):
 *   429-then-ok   the first request of that model gets 429 with Retry-After: 1
 *   429-date-then-ok  the same with Retry-After as an HTTP date, 2 s ahead
 *   500-then-ok   the first request of that model gets 500
 *   400           400 invalid_request_error, every time
 *   slow          stalls before answering (until the client gives up)
 *   malformed     200 with a body that is not JSON (or a broken stream event)
 *   hang-stream   two stream chunks, then nothing but keep-alive comments
 *   echo-key      the reply (or, with echo-key-400, the error) quotes the
 *                 Authorization header it got, as a leaky proxy might
 *
 * With --key KEY every request must carry "Authorization: Bearer KEY";
 * others get 401 and are counted in auth_bad. With --keep-alive, JSON
 * replies keep the connection open for the next request, as OpenAI's do
 * (bench/openai_overhead.c); without it every reply closes it.
 *
 *   fake_openai PORT [--key KEY] [--keep-alive]     (PORT 0: pick one)
 *
 * Prints "fake_openai: listening on 127.0.0.1:PORT" on stdout once ready and
 * runs until SIGTERM or SIGINT.
 */
#include "fake_common.h"

/* A 1x1 transparent PNG. */
static const char tiny_png_b64[] = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPh"
                                   "fDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/* What the fake saw; mu guards the counters. */
static struct {
    pthread_mutex_t mu;
    const char *key;
    long requests, auth_ok, auth_bad, connections;
} fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int send_error(struct mg_connection *conn, int status, const char *reason,
                      const char *extra_headers, const char *type, const char *message)
{
    fake_send_json(conn, status, reason, extra_headers,
                   json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", message, "type", type,
                             "param", "code"));
    return status;
}

/* Counts the request and checks its key; false (401 sent) when it is wrong. */
static bool authorized(struct mg_connection *conn)
{
    const char *auth = mg_get_header(conn, "Authorization");
    char want[512];
    snprintf(want, sizeof want, "Bearer %s", fake.key ? fake.key : "");
    bool ok = !fake.key || (auth && strcmp(auth, want) == 0);
    pthread_mutex_lock(&fake.mu);
    fake.requests++;
    if (fake.key)
        ok ? fake.auth_ok++ : fake.auth_bad++;
    pthread_mutex_unlock(&fake.mu);
    if (!ok) {
        char message[600];
        snprintf(message, sizeof message, "Incorrect API key provided: %.500s",
                 auth ? auth : "(none)");
        send_error(conn, 401, "Unauthorized", NULL, "invalid_request_error", message);
    }
    return ok;
}

static const char *fault_of(struct mg_connection *conn, const char *model)
{
    const char *header = mg_get_header(conn, "X-Fake-Fault");
    return header ? header : model ? model : "";
}

/* Handles the faults shared by every endpoint. Returns a status when it
 * answered, 0 when the request goes on normally. */
static int common_faults(struct mg_connection *conn, const char *fault, const char *model)
{
    if (fake_starts_with(fault, "429-then-ok") && fake_count(model) == 1)
        return send_error(conn, 429, "Too Many Requests", "Retry-After: 1\r\n",
                          "rate_limit_exceeded", "Rate limit reached; try again in 1s");
    if (fake_starts_with(fault, "429-date-then-ok") && fake_count(model) == 1) {
        /* Retry-After as an HTTP date two seconds ahead: a wait of 1-2 s. */
        char header[96];
        time_t when = time(NULL) + 2;
        struct tm tm;
        strftime(header, sizeof header, "Retry-After: %a, %d %b %Y %H:%M:%S GMT\r\n",
                 gmtime_r(&when, &tm));
        return send_error(conn, 429, "Too Many Requests", header, "rate_limit_exceeded",
                          "Rate limit reached; try again later");
    }
    if (fake_starts_with(fault, "500-then-ok") && fake_count(model) == 1)
        return send_error(conn, 500, "Internal Server Error", NULL, "server_error",
                          "The server had an error while processing your request");
    if (fake_starts_with(fault, "400"))
        return send_error(conn, 400, "Bad Request", NULL, "invalid_request_error",
                          "Invalid value for 'temperature': must be at most 2");
    if (fake_starts_with(fault, "echo-key-400")) {
        const char *auth = mg_get_header(conn, "Authorization");
        char message[600];
        snprintf(message, sizeof message, "Bad request from %.500s", auth ? auth : "(none)");
        return send_error(conn, 400, "Bad Request", NULL, "invalid_request_error", message);
    }
    if (fake_starts_with(fault, "slow")) {
        fake_pause_ms(FAKE_STALL_MAX_S * 1000L);
        return send_error(conn, 503, "Service Unavailable", NULL, "server_error", "stalled");
    }
    return 0;
}

/* The reply text: "Hello! You said: <last message's content>" or, for
 * echo-key, the Authorization header. */
static void reply_text(struct mg_connection *conn, json_t *req, const char *fault, char *out,
                       size_t size)
{
    if (fake_starts_with(fault, "echo-key")) {
        const char *auth = mg_get_header(conn, "Authorization");
        snprintf(out, size, "Your header was %s", auth ? auth : "(none)");
        return;
    }
    json_t *messages = json_object_get(req, "messages");
    json_t *last = json_array_get(messages, json_array_size(messages) - 1);
    const char *content = json_string_value(json_object_get(last, "content"));
    snprintf(out, size, "Hello! You said: %s", content ? content : "");
}

static json_t *usage_of(const char *text)
{
    long words = 1;
    for (const char *p = text; *p; p++)
        words += *p == ' ';
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", 7, "completion_tokens", (int)words,
                     "total_tokens", (int)words + 7);
}

static bool send_event(struct mg_connection *conn, json_t *chunk)
{
    char *text = json_dumps(chunk, JSON_COMPACT);
    json_decref(chunk);
    bool ok = text && mg_printf(conn, "data: %s\n\n", text) > 0;
    free(text);
    return ok;
}

static json_t *chunk_of(const char *model, const char *content, const char *finish)
{
    return json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s?}, s:s?}]}", "id", "chatcmpl-fake",
                     "object", "chat.completion.chunk", "created", (int)time(NULL), "model", model,
                     "choices", "index", 0, "delta", "content", content, "finish_reason", finish);
}

/* Streams text word by word as chat.completion.chunk events. */
static int stream_chat(struct mg_connection *conn, json_t *req, const char *model,
                       const char *fault, const char *text)
{
    mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: "
                    "no-cache\r\nConnection: close\r\n\r\n");
    if (fake_starts_with(fault, "malformed")) {
        mg_printf(conn, "data: {\"id\": \"chatcmpl-fake\", \"choices\": [\n\n");
        return 200;
    }
    int sent = 0;
    for (const char *p = text; *p;) {
        size_t n = strcspn(p + 1, " ") + 1; /* a word with its leading space */
        char word[256];
        snprintf(word, sizeof word, "%.*s", (int)(n < sizeof word ? n : sizeof word - 1), p);
        if (!send_event(conn, chunk_of(model, word, NULL)))
            return 200;
        p += n;
        if (fake_starts_with(fault, "hang-stream") && ++sent == 2) {
            /* Keep-alive comments until the client goes away. */
            while (fake_pause_ms(50) && mg_printf(conn, ": keep-alive\n\n") > 0)
                ;
            return 200;
        }
    }
    send_event(conn, chunk_of(model, NULL, "stop"));
    json_t *options = json_object_get(req, "stream_options");
    if (json_is_true(json_object_get(options, "include_usage")))
        send_event(conn, json_pack("{s:s, s:s, s:s, s:[], s:o}", "id", "chatcmpl-fake", "object",
                                   "chat.completion.chunk", "model", model, "choices", "usage",
                                   usage_of(text)));
    mg_printf(conn, "data: [DONE]\n\n");
    return 200;
}

static int on_chat(struct mg_connection *conn, void *cbdata)
{
    if (!authorized(conn))
        return 401;
    json_t *req = fake_read_body(conn);
    if (!req)
        return send_error(conn, 400, "Bad Request", NULL, "invalid_request_error",
                          "We could not parse the JSON body of your request.");
    const char *model = json_string_value(json_object_get(req, "model"));
    const char *fault = fault_of(conn, model);
    int status = common_faults(conn, fault, model ? model : "");
    if (!status && !json_is_array(json_object_get(req, "messages")))
        status = send_error(conn, 400, "Bad Request", NULL, "invalid_request_error",
                            "'messages' is a required property");
    if (status) {
        json_decref(req);
        return status;
    }
    char text[1024];
    reply_text(conn, req, fault, text, sizeof text);
    if (json_is_true(json_object_get(req, "stream"))) {
        status = stream_chat(conn, req, model, fault, text);
    } else if (fake_starts_with(fault, "malformed")) {
        static const char broken[] = "{\"choices\": [{\"message\": ";
        mg_printf(conn,
                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  "%zu\r\nConnection: close\r\n\r\n%s",
                  strlen(broken), broken);
        status = 200;
    } else {
        fake_send_json(conn, 200, "OK", NULL,
                       json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:o}", "id",
                                 "chatcmpl-fake", "object", "chat.completion", "created",
                                 (int)time(NULL), "model", model, "choices", "index", 0, "message",
                                 "role", "assistant", "content", text, "finish_reason", "stop",
                                 "usage", usage_of(text)));
        status = 200;
    }
    json_decref(req);
    return status;
}

static int on_images(struct mg_connection *conn, void *cbdata)
{
    if (!authorized(conn))
        return 401;
    json_t *req = fake_read_body(conn);
    const char *model = json_string_value(json_object_get(req, "model"));
    const char *prompt = json_string_value(json_object_get(req, "prompt"));
    int status = req ? common_faults(conn, fault_of(conn, model), model ? model : "") : 0;
    if (!status && !prompt)
        status = send_error(conn, 400, "Bad Request", NULL, "invalid_request_error",
                            "'prompt' is a required property");
    if (status) {
        json_decref(req);
        return status;
    }
    json_int_t n = json_integer_value(json_object_get(req, "n"));
    const char *format = json_string_value(json_object_get(req, "response_format"));
    bool b64 = (format && strcmp(format, "b64_json") == 0) || fake_starts_with(model, "gpt-image");
    json_t *data = json_array();
    for (json_int_t i = 0; i < (n > 0 && n <= 10 ? n : 1); i++) {
        char url[128];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/files/img-%d.png", fake_common.port, (int)i);
        json_array_append_new(
            data, b64 ? json_pack("{s:s, s:s}", "b64_json", tiny_png_b64, "revised_prompt", prompt)
                      : json_pack("{s:s}", "url", url));
    }
    fake_send_json(conn, 200, "OK", NULL,
                   json_pack("{s:i, s:o}", "created", (int)time(NULL), "data", data));
    json_decref(req);
    return 200;
}

static int on_embeddings(struct mg_connection *conn, void *cbdata)
{
    if (!authorized(conn))
        return 401;
    json_t *req = fake_read_body(conn);
    const char *model = json_string_value(json_object_get(req, "model"));
    json_t *input = json_object_get(req, "input");
    int status = req ? common_faults(conn, fault_of(conn, model), model ? model : "") : 0;
    if (!status && !json_is_string(input) && !json_is_array(input))
        status = send_error(conn, 400, "Bad Request", NULL, "invalid_request_error",
                            "'input' is a required property");
    if (status) {
        json_decref(req);
        return status;
    }
    json_int_t dims = json_integer_value(json_object_get(req, "dimensions"));
    if (dims <= 0 || dims > 64)
        dims = 4;
    size_t count = json_is_array(input) ? json_array_size(input) : 1;
    json_t *data = json_array();
    /* Last first: clients must order by "index", not by position. */
    for (size_t k = count; k-- > 0;) {
        json_t *vector = json_array();
        for (json_int_t d = 0; d < dims; d++)
            json_array_append_new(vector, json_real((double)k + (double)d / 10.0));
        json_array_append_new(data, json_pack("{s:s, s:i, s:o}", "object", "embedding", "index",
                                              (int)k, "embedding", vector));
    }
    fake_send_json(conn, 200, "OK", NULL,
                   json_pack("{s:s, s:o, s:s, s:{s:i, s:i}}", "object", "list", "data", data,
                             "model", model ? model : "", "usage", "prompt_tokens", (int)count * 3,
                             "total_tokens", (int)count * 3));
    json_decref(req);
    return 200;
}

/* civetweb's callback for each accepted connection: counts it. */
static int on_connection(const struct mg_connection *conn, void **conn_data)
{
    pthread_mutex_lock(&fake.mu);
    fake.connections++;
    pthread_mutex_unlock(&fake.mu);
    return 0;
}

static int on_stats(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (strcmp(ri->request_method, "GET") != 0 || ri->content_length > 0)
        return fake_send_json(conn, 405, "Method Not Allowed", "Allow: GET\r\n",
                              json_pack("{s:s}", "error", "GET /fake/stats, without a body"));
    pthread_mutex_lock(&fake.mu);
    json_t *stats = json_pack("{s:I, s:I, s:I, s:I}", "connections", (json_int_t)fake.connections,
                              "requests", (json_int_t)fake.requests, "auth_ok",
                              (json_int_t)fake.auth_ok, "auth_bad", (json_int_t)fake.auth_bad);
    pthread_mutex_unlock(&fake.mu);
    fake_send_json(conn, 200, "OK", NULL, stats);
    return 200;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fake_openai PORT [--key KEY] [--keep-alive]\n");
        return 64;
    }
    fake_serve_options_t o = {.on_connection = on_connection};
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            fake.key = argv[++i];
        else if (strcmp(argv[i], "--keep-alive") == 0)
            o.keep_alive = true;
    }
    static const fake_route_t routes[] = {{"/v1/chat/completions", on_chat},
                                          {"/v1/images/generations", on_images},
                                          {"/v1/embeddings", on_embeddings},
                                          {"/fake/stats", on_stats},
                                          {NULL, NULL}};
    return fake_serve_with("fake_openai", argv[1], routes, &o);
}
