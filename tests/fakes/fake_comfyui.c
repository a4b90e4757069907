/*
 * fake_comfyui: a small ComfyUI for the comfyui connector's tests, following
 * the HTTP and WebSocket API of a stock ComfyUI server:
 *
 *   POST /prompt          {"prompt": <API-format graph>, "client_id"} ->
 *                         {"prompt_id","number","node_errors"}; 400 with
 *                         {"error","node_errors"} for an invalid graph
 *   GET  /ws?clientId=ID  the progress socket: status, execution_start,
 *                         execution_cached, executing, progress, executed,
 *                         execution_success / execution_error /
 *                         execution_interrupted, executing {node: null}
 *   GET  /history/ID      {ID: {"prompt","outputs","status"}} once run, else {}
 *   GET  /view?filename=&subfolder=&type=   the bytes of a generated file
 *   GET  /queue           {"queue_running": [...], "queue_pending": [...]}
 *   POST /queue           {"delete": [ID...]} or {"clear": true}
 *   POST /interrupt       stops the running prompt ({"prompt_id"}: only that one)
 *   GET  /system_stats    {"system": {...}, "devices": [...]}
 *   GET  /fake/stats      what it saw (prompts, interrupts, queue deletes, ...)
 *
 * Prompts run one at a time in a thread, node by node in id order;
 * CheckpointLoader nodes are reported cached; a node with a "steps" input sends that
 * many progress messages (KSampler); SaveImage nodes output one PNG named
 * after their filename_prefix. A node {"class_type": "KilnFakeFault",
 * "inputs": {"mode": M}} chooses a fault:
 *   429-then-ok / 500-then-ok  the first POST /prompt with that mode fails so
 *   malformed          POST /prompt answers 200 with a body that is not JSON
 *   slow               the sampler stops at step 5 until interrupted
 *   execution-error    the sampler fails with a RuntimeError
 *   hostile-names      outputs are named "../../escape.png" in "../.."
 *   noise              junk on the socket, then a message over 1 MiB
 *
 *   fake_comfyui PORT [--ws ok|refuse|drop]   (PORT 0: pick one)
 *
 * --ws refuse refuses every socket; --ws drop closes each socket after its
 * first progress message. Prints "fake_comfyui: listening on
 * 127.0.0.1:PORT" once ready and runs until SIGTERM or SIGINT.
 */
#include "fake_common.h"

#define MAX_PROMPTS 256
#define MAX_SOCKETS 64
#define FILE_BYTES  2048
#define STEP_MS     2
#define STALL_STEP  5

typedef enum { P_PENDING, P_RUNNING, P_DONE, P_DELETED } prompt_state_t;

typedef struct prompt {
    char id[40];
    int number;
    char client_id[160];
    json_t *graph;
    char mode[64];
    prompt_state_t state;
    bool interrupt;
} prompt_t;

/* The prompts and what the fake saw, under fake_common.mu (its condition
 * wakes the executor and interrupted prompts). */
static struct {
    const char *ws_mode;
    prompt_t prompts[MAX_PROMPTS];
    int n_prompts;
    json_t *history;
    json_t *files; /* "subfolder/filename" -> true */
    long prompts_posted, interrupts, queue_deletes, ws_connects, view_requests, history_requests;
} fake;

/* The open sockets by client id, under their own lock (writes happen under it). */
static struct {
    pthread_mutex_t mu;
    struct mg_connection *conn[MAX_SOCKETS];
    char client_id[MAX_SOCKETS][160];
    bool progressed[MAX_SOCKETS];
} sockets = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- HTTP helpers ------------------------------------------------------------ */

/* ComfyUI's error shape: {"error": {type, message, details, extra_info}, "node_errors"}. */
/* ComfyUI answers POST /queue and /interrupt with an empty 200. */
static int send_empty_ok(struct mg_connection *conn)
{
    mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return 200;
}

static int send_error(struct mg_connection *conn, int status, const char *reason,
                      const char *extra_headers, const char *type, const char *message,
                      const char *details, json_t *node_errors)
{
    fake_send_json(conn, status, reason, extra_headers,
                   json_pack("{s:{s:s, s:s, s:s, s:{}}, s:o}", "error", "type", type, "message",
                             message, "details", details, "extra_info", "node_errors",
                             node_errors ? node_errors : json_object()));
    return status;
}

/* ---- the progress socket ------------------------------------------------------ */

/* Sends {"type": type, "data": data} to client_id's socket, if it has one. */
static void ws_send(const char *client_id, const char *type, json_t *data)
{
    json_t *msg = json_pack("{s:s, s:o}", "type", type, "data", data);
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    pthread_mutex_lock(&sockets.mu);
    for (int i = 0; text && i < MAX_SOCKETS; i++) {
        if (!sockets.conn[i] || strcmp(sockets.client_id[i], client_id) != 0)
            continue;
        mg_websocket_write(sockets.conn[i], MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text));
        if (strcmp(type, "progress") == 0 && strcmp(fake.ws_mode, "drop") == 0 &&
            !sockets.progressed[i]) {
            sockets.progressed[i] = true;
            mg_websocket_write(sockets.conn[i], MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, "", 0);
            sockets.conn[i] = NULL; /* nothing more goes to it */
        }
    }
    pthread_mutex_unlock(&sockets.mu);
    free(text);
}

static int ws_connect(const struct mg_connection *conn, void *cbdata)
{
    return strcmp(fake.ws_mode, "refuse") == 0; /* non-zero refuses */
}

static void ws_ready(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char client_id[160] = "";
    if (ri->query_string)
        mg_get_var(ri->query_string, strlen(ri->query_string), "clientId", client_id,
                   sizeof client_id);
    pthread_mutex_lock(&sockets.mu);
    for (int i = 0; i < MAX_SOCKETS; i++) {
        if (!sockets.conn[i]) {
            sockets.conn[i] = conn;
            sockets.progressed[i] = false;
            snprintf(sockets.client_id[i], sizeof sockets.client_id[i], "%s", client_id);
            break;
        }
    }
    pthread_mutex_unlock(&sockets.mu);
    pthread_mutex_lock(&fake_common.mu);
    fake.ws_connects++;
    int pending = 0;
    for (int i = 0; i < fake.n_prompts; i++)
        pending += fake.prompts[i].state == P_PENDING || fake.prompts[i].state == P_RUNNING;
    pthread_mutex_unlock(&fake_common.mu);
    ws_send(client_id, "status",
            json_pack("{s:{s:{s:i}}, s:s}", "status", "exec_info", "queue_remaining", pending,
                      "sid", client_id));
}

static int ws_data(struct mg_connection *conn, int flags, char *data, size_t len, void *cbdata)
{
    return 1; /* ComfyUI ignores what clients send */
}

static void ws_close(const struct mg_connection *conn, void *cbdata)
{
    pthread_mutex_lock(&sockets.mu);
    for (int i = 0; i < MAX_SOCKETS; i++)
        if (sockets.conn[i] == conn)
            sockets.conn[i] = NULL;
    pthread_mutex_unlock(&sockets.mu);
}

/* ---- running prompts ------------------------------------------------------------ */

/* Waits up to ms or until woken; false once stopping or p is interrupted. */
static bool pause_ms(prompt_t *p, long ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += ms * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&fake_common.mu);
    while (!fake_common.stopping && !p->interrupt)
        if (pthread_cond_timedwait(&fake_common.changed, &fake_common.mu, &until) != 0)
            break;
    bool go_on = !fake_common.stopping && !p->interrupt;
    pthread_mutex_unlock(&fake_common.mu);
    return go_on;
}

static int node_order(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    int d = atoi(x) - atoi(y);
    return d ? d : strcmp(x, y);
}

static const char *class_of(json_t *graph, const char *node)
{
    const char *c = json_string_value(json_object_get(json_object_get(graph, node), "class_type"));
    return c ? c : "";
}

/* A SaveImage node's output: one file, registered for /view. */
static json_t *save_image(prompt_t *p, const char *node)
{
    json_t *inputs = json_object_get(json_object_get(p->graph, node), "inputs");
    const char *prefix = json_string_value(json_object_get(inputs, "filename_prefix"));
    char name[200], key[300];
    const char *subfolder = "";
    if (strcmp(p->mode, "hostile-names") == 0) {
        snprintf(name, sizeof name, "../../escape.png");
        subfolder = "../..";
    } else {
        snprintf(name, sizeof name, "%s_%05d_.png", prefix ? prefix : "ComfyUI", p->number);
    }
    snprintf(key, sizeof key, "%s/%s", subfolder, name);
    pthread_mutex_lock(&fake_common.mu);
    json_object_set_new(fake.files, key, json_true());
    pthread_mutex_unlock(&fake_common.mu);
    return json_pack("{s:[{s:s, s:s, s:s}]}", "images", "filename", name, "subfolder", subfolder,
                     "type", "output");
}

/* Runs a sampler's steps; false when it was interrupted or failed. */
static bool sample(prompt_t *p, const char *node, json_t *messages)
{
    json_t *steps_v =
        json_object_get(json_object_get(json_object_get(p->graph, node), "inputs"), "steps");
    int steps = json_is_integer(steps_v) ? (int)json_integer_value(steps_v) : 1;
    if (steps > 100)
        steps = 100;
    for (int s = 1; s <= steps; s++) {
        if (strcmp(p->mode, "execution-error") == 0 && s == 3) {
            json_t *data = json_pack(
                "{s:s, s:s, s:s, s:[], s:s, s:s, s:[s], s:{}, s:{}}", "prompt_id", p->id, "node_id",
                node, "node_type", class_of(p->graph, node), "executed", "exception_message",
                "Expected all tensors to be on the same device", "exception_type", "RuntimeError",
                "traceback", "Traceback (most recent call)", "current_inputs", "current_outputs");
            json_array_append_new(messages, json_pack("[s, O]", "execution_error", data));
            ws_send(p->client_id, "execution_error", data);
            return false;
        }
        ws_send(p->client_id, "progress",
                json_pack("{s:i, s:i, s:s, s:s}", "value", s, "max", steps, "prompt_id", p->id,
                          "node", node));
        long wait =
            strcmp(p->mode, "slow") == 0 && s >= STALL_STEP ? FAKE_STALL_MAX_S * 1000L : STEP_MS;
        if (!pause_ms(p, wait) && p->interrupt) {
            json_t *data = json_pack("{s:s, s:s, s:s, s:[]}", "prompt_id", p->id, "node_id", node,
                                     "node_type", class_of(p->graph, node), "executed");
            json_array_append_new(messages, json_pack("[s, O]", "execution_interrupted", data));
            ws_send(p->client_id, "execution_interrupted", data);
            return false;
        }
    }
    return true;
}

/* The "noise" fault: text that is not JSON, messages of the wrong shape or
 * about another prompt, then one message over the client's 1 MiB limit. */
static void send_noise(prompt_t *p)
{
    static const char *const junk[] = {
        "not json",
        "[1,2]",
        "{\"type\": 42}",
        "{\"type\": \"progress\", \"data\": \"x\"}",
        "{\"type\": \"executing\", \"data\": {\"node\": null, \"prompt_id\": \"other\"}}",
        "{\"type\": \"progress\", \"data\": {\"value\": 5, \"max\": -1}}"};
    pthread_mutex_lock(&sockets.mu);
    for (int i = 0; i < MAX_SOCKETS; i++) {
        if (!sockets.conn[i] || strcmp(sockets.client_id[i], p->client_id) != 0)
            continue;
        for (size_t k = 0; k < sizeof junk / sizeof junk[0]; k++)
            mg_websocket_write(sockets.conn[i], MG_WEBSOCKET_OPCODE_TEXT, junk[k], strlen(junk[k]));
        size_t huge = 2 * 1024 * 1024;
        char *big = malloc(huge);
        if (big) {
            memset(big, 'x', huge);
            mg_websocket_write(sockets.conn[i], MG_WEBSOCKET_OPCODE_TEXT, big, huge);
            free(big);
        }
    }
    pthread_mutex_unlock(&sockets.mu);
}

/* Runs every node of p in id order and writes its history entry. */
static void execute(prompt_t *p)
{
    if (strcmp(p->mode, "noise") == 0)
        send_noise(p);
    size_t n = json_object_size(p->graph), k = 0;
    const char **ids = calloc(n ? n : 1, sizeof *ids);
    const char *key;
    json_t *value, *outputs = json_object(), *messages = json_array();
    json_object_foreach(p->graph, key, value) ids[k++] = key;
    qsort(ids, n, sizeof *ids, node_order);
    json_t *start =
        json_pack("{s:s, s:I}", "prompt_id", p->id, "timestamp", (json_int_t)time(NULL));
    json_array_append_new(messages, json_pack("[s, O]", "execution_start", start));
    ws_send(p->client_id, "execution_start", start);
    /* Loaders count as cached, as if an earlier prompt had loaded the model. */
    json_t *cached = json_array();
    for (size_t i = 0; i < n; i++)
        if (strncmp(class_of(p->graph, ids[i]), "CheckpointLoader", 16) == 0)
            json_array_append_new(cached, json_string(ids[i]));
    ws_send(p->client_id, "execution_cached",
            json_pack("{s:o, s:s}", "nodes", cached, "prompt_id", p->id));
    bool ok = true;
    for (size_t i = 0; ok && i < n; i++) {
        if (strncmp(class_of(p->graph, ids[i]), "CheckpointLoader", 16) == 0)
            continue;
        ws_send(p->client_id, "executing",
                json_pack("{s:s, s:s, s:s}", "node", ids[i], "display_node", ids[i], "prompt_id",
                          p->id));
        json_t *inputs = json_object_get(json_object_get(p->graph, ids[i]), "inputs");
        if (json_object_get(inputs, "steps"))
            ok = sample(p, ids[i], messages);
        if (ok && strcmp(class_of(p->graph, ids[i]), "SaveImage") == 0) {
            json_t *out = save_image(p, ids[i]);
            json_object_set(outputs, ids[i], out);
            ws_send(p->client_id, "executed",
                    json_pack("{s:s, s:s, s:o, s:s}", "node", ids[i], "display_node", ids[i],
                              "output", out, "prompt_id", p->id));
        }
    }
    if (ok)
        ws_send(p->client_id, "execution_success",
                json_pack("{s:s, s:I}", "prompt_id", p->id, "timestamp", (json_int_t)time(NULL)));
    json_t *entry =
        json_pack("{s:[i, s, O, {s:s}, []], s:o, s:{s:s, s:b, s:o}}", "prompt", p->number, p->id,
                  p->graph, "client_id", p->client_id, "outputs", outputs, "status", "status_str",
                  ok ? "success" : "error", "completed", ok, "messages", messages);
    pthread_mutex_lock(&fake_common.mu);
    json_object_set_new(fake.history, p->id, entry);
    p->state = P_DONE;
    pthread_mutex_unlock(&fake_common.mu);
    /* As ComfyUI does: the history is written, then "executing" with no node. */
    ws_send(p->client_id, "executing", json_pack("{s:n, s:s}", "node", "prompt_id", p->id));
    free(ids);
}

static void *executor_main(void *arg)
{
    for (;;) {
        pthread_mutex_lock(&fake_common.mu);
        prompt_t *next = NULL;
        while (!fake_common.stopping && !next) {
            for (int i = 0; i < fake.n_prompts && !next; i++)
                if (fake.prompts[i].state == P_PENDING)
                    next = &fake.prompts[i];
            if (!next)
                pthread_cond_wait(&fake_common.changed, &fake_common.mu);
        }
        if (next)
            next->state = P_RUNNING;
        pthread_mutex_unlock(&fake_common.mu);
        if (!next)
            return NULL;
        execute(next);
    }
}

/* ---- HTTP endpoints -------------------------------------------------------------- */

/* Checks the graph as ComfyUI's validate_prompt does, in brief. Returns a
 * status when it answered (400), 0 when the graph is fine. */
static int validate(struct mg_connection *conn, json_t *graph)
{
    const char *id;
    json_t *node;
    bool has_output = false;
    json_t *node_errors = json_object();
    json_object_foreach(graph, id, node)
    {
        const char *type = json_string_value(json_object_get(node, "class_type"));
        if (!type) {
            json_decref(node_errors);
            char details[200];
            snprintf(details, sizeof details, "Node ID '#%s'", id);
            return send_error(conn, 400, "Bad Request", NULL, "invalid_prompt",
                              "Cannot execute because a node is missing the class_type "
                              "property.",
                              details, NULL);
        }
        has_output |= strcmp(type, "SaveImage") == 0 || strcmp(type, "PreviewImage") == 0;
        json_t *steps = json_object_get(json_object_get(node, "inputs"), "steps");
        if (steps && (!json_is_integer(steps) || json_integer_value(steps) < 1)) {
            char details[64];
            snprintf(details, sizeof details, "steps: %lld < 1",
                     (long long)json_integer_value(steps));
            json_object_set_new(node_errors, id,
                                json_pack("{s:[{s:s, s:s, s:s, s:{s:s}}], s:[], s:s}", "errors",
                                          "type", "value_smaller_than_min", "message",
                                          "Value smaller than min", "details", details,
                                          "extra_info", "input_name", "steps", "dependent_outputs",
                                          "class_type", type));
        }
    }
    if (!has_output) {
        json_decref(node_errors);
        return send_error(conn, 400, "Bad Request", NULL, "prompt_no_outputs",
                          "Prompt has no outputs", "", NULL);
    }
    if (json_object_size(node_errors) > 0)
        return send_error(conn, 400, "Bad Request", NULL, "prompt_outputs_failed_validation",
                          "Prompt outputs failed validation", "", node_errors);
    json_decref(node_errors);
    return 0;
}

static const char *fault_mode(json_t *graph)
{
    const char *id;
    json_t *node;
    json_object_foreach(graph, id, node)
    {
        const char *type = json_string_value(json_object_get(node, "class_type"));
        if (type && strcmp(type, "KilnFakeFault") == 0) {
            const char *mode =
                json_string_value(json_object_get(json_object_get(node, "inputs"), "mode"));
            return mode ? mode : "";
        }
    }
    return "";
}

/* The faults of POST /prompt itself; a status when it answered. */
static int prompt_faults(struct mg_connection *conn, const char *mode)
{
    int n = mode[0] ? fake_count(mode) : 0;
    if (strcmp(mode, "429-then-ok") == 0 && n == 1)
        return send_error(conn, 429, "Too Many Requests", "Retry-After: 1\r\n", "rate_limited",
                          "Too many requests", "", NULL);
    if (strcmp(mode, "500-then-ok") == 0 && n == 1)
        return send_error(conn, 500, "Internal Server Error", NULL, "server_error",
                          "Internal Server Error", "", NULL);
    if (strcmp(mode, "malformed") == 0) {
        static const char broken[] = "{\"prompt_id\": \"abc\", \"number\": ";
        return fake_send(conn, 200, "OK", "application/json", NULL, broken, strlen(broken));
    }
    return 0;
}

static int on_prompt(struct mg_connection *conn, void *cbdata)
{
    if (strcmp(mg_get_request_info(conn)->request_method, "POST") != 0)
        return send_error(conn, 405, "Method Not Allowed", NULL, "method", "POST only", "", NULL);
    json_t *req = fake_read_body(conn);
    json_t *graph = json_object_get(req, "prompt");
    const char *client_id = json_string_value(json_object_get(req, "client_id"));
    int status = 0;
    if (!json_is_object(graph))
        status =
            send_error(conn, 400, "Bad Request", NULL, "no_prompt", "No prompt provided", "", NULL);
    if (!status)
        status = prompt_faults(conn, fault_mode(graph));
    if (!status)
        status = validate(conn, graph);
    if (status) {
        json_decref(req);
        return status;
    }
    pthread_mutex_lock(&fake_common.mu);
    fake.prompts_posted++;
    if (fake.n_prompts == MAX_PROMPTS) {
        pthread_mutex_unlock(&fake_common.mu);
        json_decref(req);
        return send_error(conn, 503, "Service Unavailable", NULL, "full", "queue full", "", NULL);
    }
    prompt_t *p = &fake.prompts[fake.n_prompts];
    p->number = fake.n_prompts++;
    snprintf(p->id, sizeof p->id, "8c1f%04x-5b0e-4c2a-9d7e-%012x", (unsigned)p->number,
             (unsigned)(p->number * 7919u + 17u));
    snprintf(p->client_id, sizeof p->client_id, "%s", client_id ? client_id : "");
    snprintf(p->mode, sizeof p->mode, "%s", fault_mode(graph));
    p->graph = json_incref(graph);
    p->state = P_PENDING;
    json_t *answer =
        json_pack("{s:s, s:i, s:{}}", "prompt_id", p->id, "number", p->number, "node_errors");
    pthread_cond_broadcast(&fake_common.changed);
    pthread_mutex_unlock(&fake_common.mu);
    fake_send_json(conn, 200, "OK", NULL, answer);
    json_decref(req);
    return 200;
}

static int on_history(struct mg_connection *conn, void *cbdata)
{
    const char *uri = mg_get_request_info(conn)->local_uri;
    const char *id = strncmp(uri, "/history/", 9) == 0 ? uri + 9 : "";
    pthread_mutex_lock(&fake_common.mu);
    fake.history_requests++;
    json_t *entry = id[0] ? json_object_get(fake.history, id) : NULL;
    json_t *answer = id[0] ? json_object() : json_deep_copy(fake.history);
    if (entry)
        json_object_set_new(answer, id, json_deep_copy(entry));
    pthread_mutex_unlock(&fake_common.mu);
    fake_send_json(conn, 200, "OK", NULL, answer);
    return 200;
}

static int on_view(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char filename[256] = "", subfolder[256] = "", type[32] = "", key[600];
    const char *qs = ri->query_string ? ri->query_string : "";
    mg_get_var(qs, strlen(qs), "filename", filename, sizeof filename);
    mg_get_var(qs, strlen(qs), "subfolder", subfolder, sizeof subfolder);
    mg_get_var(qs, strlen(qs), "type", type, sizeof type);
    snprintf(key, sizeof key, "%s/%s", subfolder, filename);
    pthread_mutex_lock(&fake_common.mu);
    fake.view_requests++;
    bool known = json_object_get(fake.files, key) != NULL && strcmp(type, "output") == 0;
    pthread_mutex_unlock(&fake_common.mu);
    if (!known) {
        mg_printf(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return 404;
    }
    unsigned char bytes[FILE_BYTES];
    memcpy(bytes, "\x89PNG\r\n\x1a\n", 8);
    for (size_t i = 8; i < sizeof bytes; i++)
        bytes[i] = (unsigned char)(i * 31u + (unsigned char)filename[i % strlen(filename)]);
    mg_printf(conn,
              "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %zu\r\n"
              "Connection: close\r\n\r\n",
              sizeof bytes);
    mg_write(conn, bytes, sizeof bytes);
    return 200;
}

/* [number, prompt_id, prompt, extra_data, outputs_to_execute], as ComfyUI lists them. */
static json_t *queue_item(const prompt_t *p)
{
    return json_pack("[i, s, O, {s:s}, []]", p->number, p->id, p->graph, "client_id", p->client_id);
}

static int on_queue(struct mg_connection *conn, void *cbdata)
{
    bool post = strcmp(mg_get_request_info(conn)->request_method, "POST") == 0;
    json_t *req = post ? fake_read_body(conn) : NULL;
    pthread_mutex_lock(&fake_common.mu);
    json_t *item;
    size_t i;
    json_array_foreach(json_object_get(req, "delete"), i, item)
    {
        for (int k = 0; k < fake.n_prompts; k++)
            if (fake.prompts[k].state == P_PENDING &&
                strcmp(fake.prompts[k].id, json_string_value(item) ?: "") == 0) {
                fake.prompts[k].state = P_DELETED;
                fake.queue_deletes++;
            }
    }
    for (int k = 0; json_is_true(json_object_get(req, "clear")) && k < fake.n_prompts; k++)
        if (fake.prompts[k].state == P_PENDING)
            fake.prompts[k].state = P_DELETED;
    json_t *running = json_array(), *pending = json_array();
    for (int k = 0; !post && k < fake.n_prompts; k++) {
        if (fake.prompts[k].state == P_RUNNING)
            json_array_append_new(running, queue_item(&fake.prompts[k]));
        if (fake.prompts[k].state == P_PENDING)
            json_array_append_new(pending, queue_item(&fake.prompts[k]));
    }
    pthread_mutex_unlock(&fake_common.mu);
    json_decref(req);
    if (post) {
        json_decref(running);
        json_decref(pending);
        send_empty_ok(conn);
    } else {
        fake_send_json(conn, 200, "OK", NULL,
                       json_pack("{s:o, s:o}", "queue_running", running, "queue_pending", pending));
    }
    return 200;
}

static int on_interrupt(struct mg_connection *conn, void *cbdata)
{
    json_t *req = fake_read_body(conn);
    const char *only = json_string_value(json_object_get(req, "prompt_id"));
    pthread_mutex_lock(&fake_common.mu);
    fake.interrupts++;
    for (int k = 0; k < fake.n_prompts; k++)
        if (fake.prompts[k].state == P_RUNNING && (!only || strcmp(only, fake.prompts[k].id) == 0))
            fake.prompts[k].interrupt = true;
    pthread_cond_broadcast(&fake_common.changed);
    pthread_mutex_unlock(&fake_common.mu);
    json_decref(req);
    return send_empty_ok(conn);
}

static int on_system_stats(struct mg_connection *conn, void *cbdata)
{
    fake_send_json(conn, 200, "OK", NULL,
                   json_pack("{s:{s:s, s:s, s:s, s:b}, s:[{s:s, s:s, s:i, s:I, s:I}]}", "system",
                             "os", "posix", "python_version", "3.11.2", "comfyui_version", "0.3.40",
                             "embedded_python", 0, "devices", "name", "cuda:0 Fake GPU", "type",
                             "cuda", "index", 0, "vram_total", (json_int_t)25769803776LL,
                             "vram_free", (json_int_t)21474836480LL));
    return 200;
}

static int on_stats(struct mg_connection *conn, void *cbdata)
{
    pthread_mutex_lock(&fake_common.mu);
    json_t *stats = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I}", "prompts", (json_int_t)fake.prompts_posted, "interrupts",
        (json_int_t)fake.interrupts, "queue_deletes", (json_int_t)fake.queue_deletes, "ws_connects",
        (json_int_t)fake.ws_connects, "view_requests", (json_int_t)fake.view_requests,
        "history_requests", (json_int_t)fake.history_requests);
    pthread_mutex_unlock(&fake_common.mu);
    fake_send_json(conn, 200, "OK", NULL, stats);
    return 200;
}

/* Once listening: the progress socket's handler and the executor. */
static void on_listening(struct mg_context *ctx)
{
    mg_set_websocket_handler(ctx, "/ws$", ws_connect, ws_ready, ws_data, ws_close, NULL);
    pthread_t executor;
    pthread_create(&executor, NULL, executor_main, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fake_comfyui PORT [--ws ok|refuse|drop]\n");
        return 64;
    }
    fake.ws_mode = "ok";
    for (int i = 2; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--ws") == 0)
            fake.ws_mode = argv[i + 1];
    fake.history = json_object();
    fake.files = json_object();
    printf("fake_comfyui: progress socket %s\n", fake.ws_mode);
    static const fake_route_t routes[] = {
        {"/prompt$", on_prompt},       {"/history", on_history},
        {"/view$", on_view},           {"/queue$", on_queue},
        {"/interrupt$", on_interrupt}, {"/system_stats$", on_system_stats},
        {"/fake/stats$", on_stats},    {NULL, NULL}};
    const fake_serve_options_t o = {.on_listening = on_listening};
    return fake_serve_with("fake_comfyui", argv[1], routes, &o);
}
