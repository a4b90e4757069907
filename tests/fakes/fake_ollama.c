/*
 * fake_ollama: a small Ollama server for the ollama connector's tests,
 * following the public API's shapes (docs/api.md of ollama/ollama):
 *
 *   GET  /api/tags      {"models": [{"name", "model", "size", "digest", ...}]}
 *   POST /api/generate  {"model","prompt","stream","options"} -> NDJSON lines
 *                       {"model","created_at","response","done":false}, then
 *                       one with "done":true, "done_reason" and the counts
 *   POST /api/chat      {"model","messages","stream"} -> the same with
 *                       "message": {"role": "assistant", "content"}
 *   POST /api/pull      {"model","stream"} -> NDJSON {"status"} lines, with
 *                       "digest","total","completed" while downloading, then
 *                       {"status":"success"}
 *   GET  /fake/stats    what it saw: {"requests","pulls","disconnects"}
 *
 * Every model is installed except those named "missing...", which answer
 * 404 {"error":"model \"NAME\" not found, try pulling it first"} until
 * pulled; "missing-unknown..." cannot be pulled ("pull model manifest: file
 * does not exist"). Faults are chosen by the model name's start:
 *   429-then-ok    the first request of that model gets 429 with Retry-After: 1
 *   500-then-ok    the first request of that model gets 500
 *   slow           stalls before answering (until the client gives up)
 *   malformed      one good line, then a line that is not JSON
 *   error-stream   one good line, then {"error": "..."} as Ollama sends on a crash
 *   hang           two tokens, then blank lines every 50 ms until the client
 *                  goes away (counted in "disconnects")
 *   huge-line      one line of 2 MiB without a newline, as a broken proxy might send
 *
 *   fake_ollama PORT     (PORT 0: pick one)
 */
#include "fake_common.h"

#define MAX_PULLED 32

static struct {
    long requests, pulls, disconnects;
    char pulled[MAX_PULLED][FAKE_KEY_LEN];
    int n_pulled;
} ollama;

static void count_request(long *counter)
{
    pthread_mutex_lock(&fake_common.mu);
    ollama.requests++;
    if (counter)
        (*counter)++;
    pthread_mutex_unlock(&fake_common.mu);
}

static bool installed(const char *model)
{
    if (!fake_starts_with(model, "missing"))
        return true;
    bool found = false;
    pthread_mutex_lock(&fake_common.mu);
    for (int i = 0; i < ollama.n_pulled && !found; i++)
        found = strcmp(ollama.pulled[i], model) == 0;
    pthread_mutex_unlock(&fake_common.mu);
    return found;
}

static int send_error(struct mg_connection *conn, int status, const char *reason,
                      const char *extra_headers, const char *message)
{
    fake_send_json(conn, status, reason, extra_headers, json_pack("{s:s}", "error", message));
    return status;
}

static void start_ndjson(struct mg_connection *conn)
{
    mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: "
                    "close\r\n\r\n");
}

static bool send_line(struct mg_connection *conn, json_t *line)
{
    char *text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    bool ok = text && mg_printf(conn, "%s\n", text) > 0;
    free(text);
    return ok;
}

static json_t *chunk_of(const char *model, bool chat, const char *piece, bool done)
{
    json_t *chunk = json_pack("{s:s, s:s, s:b}", "model", model, "created_at",
                              "2024-05-01T12:00:00.000000Z", "done", done);
    if (chat)
        json_object_set_new(chunk, "message",
                            json_pack("{s:s, s:s}", "role", "assistant", "content", piece));
    else
        json_object_set_new(chunk, "response", json_string(piece));
    return chunk;
}

/* Streams "Hello! You said: TEXT" word by word, faults included. */
static void stream_reply(struct mg_connection *conn, const char *model, bool chat, const char *said)
{
    char text[8192];
    snprintf(text, sizeof text, "Hello! You said: %s", said);
    start_ndjson(conn);
    if (fake_starts_with(model, "huge-line")) {
        static char chunk[64 * 1024];
        memset(chunk, 'x', sizeof chunk);
        for (int i = 0; i < 32 && mg_write(conn, chunk, sizeof chunk) > 0; i++)
            ;
        return;
    }
    int sent = 0;
    for (const char *p = text; *p;) {
        size_t n = strcspn(p + 1, " ") + 1; /* a word with its leading space */
        char word[256];
        snprintf(word, sizeof word, "%.*s", (int)(n < sizeof word ? n : sizeof word - 1), p);
        if (!send_line(conn, chunk_of(model, chat, word, false)))
            return;
        p += n;
        sent++;
        if (fake_starts_with(model, "malformed")) {
            mg_printf(conn, "{\"model\": \"%s\", \"response\": \n", model);
            return;
        }
        if (fake_starts_with(model, "error-stream")) {
            send_line(conn, json_pack("{s:s}", "error", "llama runner process has terminated"));
            return;
        }
        if (fake_starts_with(model, "hang") && sent == 2) {
            while (fake_pause_ms(50) && mg_printf(conn, "\n") > 0)
                ;
            pthread_mutex_lock(&fake_common.mu);
            ollama.disconnects++;
            pthread_mutex_unlock(&fake_common.mu);
            return;
        }
    }
    json_t *done = chunk_of(model, chat, "", true);
    json_object_update_new(done,
                           json_pack("{s:s, s:I, s:I, s:i, s:I, s:i, s:I}", "done_reason", "stop",
                                     "total_duration", (json_int_t)5043500667, "load_duration",
                                     (json_int_t)5025959, "prompt_eval_count", 26,
                                     "prompt_eval_duration", (json_int_t)325953000, "eval_count",
                                     sent, "eval_duration", (json_int_t)4709213000));
    send_line(conn, done);
}

/* The faults every endpoint shares. Returns a status when it answered. */
static int common_faults(struct mg_connection *conn, const char *model)
{
    if (fake_starts_with(model, "429-then-ok") && fake_count(model) == 1)
        return send_error(conn, 429, "Too Many Requests", "Retry-After: 1\r\n",
                          "server busy, please try again.  maximum pending requests exceeded");
    if (fake_starts_with(model, "500-then-ok") && fake_count(model) == 1)
        return send_error(conn, 500, "Internal Server Error", NULL,
                          "llama runner process no longer running");
    if (fake_starts_with(model, "slow")) {
        fake_pause_ms(FAKE_STALL_MAX_S * 1000L);
        return send_error(conn, 503, "Service Unavailable", NULL, "stalled");
    }
    if (!installed(model)) {
        char message[FAKE_KEY_LEN + 64];
        snprintf(message, sizeof message, "model \"%s\" not found, try pulling it first", model);
        return send_error(conn, 404, "Not Found", NULL, message);
    }
    return 0;
}

static int on_generate_or_chat(struct mg_connection *conn, bool chat)
{
    count_request(NULL);
    json_t *req = fake_read_body(conn);
    const char *model = json_string_value(json_object_get(req, "model"));
    if (!req || !model) {
        json_decref(req);
        return send_error(conn, 400, "Bad Request", NULL, "model is required");
    }
    int status = common_faults(conn, model);
    const char *said = NULL;
    if (chat) {
        json_t *messages = json_object_get(req, "messages");
        json_t *last = json_array_get(messages, json_array_size(messages) - 1);
        said = json_string_value(json_object_get(last, "content"));
    } else {
        said = json_string_value(json_object_get(req, "prompt"));
    }
    if (!status && !said)
        status = send_error(conn, 400, "Bad Request", NULL,
                            chat ? "messages are required" : "prompt is required");
    if (!status && json_is_false(json_object_get(req, "stream"))) {
        /* The connector always streams; a non-streamed reply is not faked. */
        status = send_error(conn, 400, "Bad Request", NULL, "fake_ollama: only streams");
    }
    if (!status) {
        stream_reply(conn, model, chat, said);
        status = 200;
    }
    json_decref(req);
    return status;
}

static int on_generate(struct mg_connection *conn, void *cbdata)
{
    return on_generate_or_chat(conn, false);
}

static int on_chat(struct mg_connection *conn, void *cbdata)
{
    return on_generate_or_chat(conn, true);
}

static int on_pull(struct mg_connection *conn, void *cbdata)
{
    count_request(&ollama.pulls);
    json_t *req = fake_read_body(conn);
    const char *model = json_string_value(json_object_get(req, "model"));
    if (!model)
        model = json_string_value(json_object_get(req, "name"));
    if (!model) {
        json_decref(req);
        return send_error(conn, 400, "Bad Request", NULL, "model is required");
    }
    start_ndjson(conn);
    send_line(conn, json_pack("{s:s}", "status", "pulling manifest"));
    if (fake_starts_with(model, "missing-unknown")) {
        send_line(conn, json_pack("{s:s}", "error", "pull model manifest: file does not exist"));
        json_decref(req);
        return 200;
    }
    const json_int_t total = 4000;
    for (json_int_t done = 0; done <= total; done += 1000)
        send_line(
            conn,
            json_pack("{s:s, s:s, s:I, s:I}", "status", "pulling 6a0746a1ec1a", "digest",
                      "sha256:6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa",
                      "total", total, "completed", done));
    send_line(conn, json_pack("{s:s}", "status", "verifying sha256 digest"));
    send_line(conn, json_pack("{s:s}", "status", "writing manifest"));
    pthread_mutex_lock(&fake_common.mu);
    if (ollama.n_pulled < MAX_PULLED)
        snprintf(ollama.pulled[ollama.n_pulled++], FAKE_KEY_LEN, "%s", model);
    pthread_mutex_unlock(&fake_common.mu);
    send_line(conn, json_pack("{s:s}", "status", "success"));
    json_decref(req);
    return 200;
}

static int on_tags(struct mg_connection *conn, void *cbdata)
{
    count_request(NULL);
    fake_send_json(conn, 200, "OK", NULL,
                   json_pack("{s:[{s:s, s:s, s:s, s:I, s:s}]}", "models", "name", "llama3:latest",
                             "model", "llama3:latest", "modified_at", "2024-05-01T12:00:00.000000Z",
                             "size", (json_int_t)4661224676, "digest",
                             "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1"));
    return 200;
}

static int on_stats(struct mg_connection *conn, void *cbdata)
{
    pthread_mutex_lock(&fake_common.mu);
    json_t *stats =
        json_pack("{s:I, s:I, s:I}", "requests", (json_int_t)ollama.requests, "pulls",
                  (json_int_t)ollama.pulls, "disconnects", (json_int_t)ollama.disconnects);
    pthread_mutex_unlock(&fake_common.mu);
    fake_send_json(conn, 200, "OK", NULL, stats);
    return 200;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fake_ollama PORT\n");
        return 64;
    }
    static const fake_route_t routes[] = {{"/api/generate", on_generate}, {"/api/chat", on_chat},
                                          {"/api/pull", on_pull},         {"/api/tags", on_tags},
                                          {"/fake/stats", on_stats},      {NULL, NULL}};
    return fake_serve("fake_ollama", argv[1], routes);
}
