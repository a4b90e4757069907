/*
 * Live event streams: GET /v1/events (Server-Sent Events), the same as a
 * WebSocket at /v1/events/ws, and GET /v1/jobs/{id}/events (one job's
 * events so far, then live, ending at a final state). Each client is one
 * subscriber of the hub's event reader (hub_events.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/hub_internal.h"

#define KEEPALIVE_MS  15000
#define WS_REASON_MAX 120

static int no_room(hub_req_t *req)
{
    return hub_reply_error(req, 503, NULL,
                           "%d live clients already hold the hub's request threads; raise "
                           "hub.threads (KILN_HUB_THREADS) or use another hub",
                           req->hub->threads - HUB_THREADS_SPARE);
}

/* Reads job, service, machine and since (or Last-Event-ID) from the
 * request. 0, or the status of the reply sent. */
static int parse_filter(hub_req_t *req, hub_filter_t *f, char *since, size_t since_size)
{
    memset(f, 0, sizeof *f);
    if (hub_query(req, "job", f->job, sizeof f->job) < 0 || (f->job[0] && !hub_job_id_ok(f->job)))
        return hub_reply_error(req, 422, "job", "job: expected a job id (<service>.<number>)");
    if (hub_query(req, "service", f->service, sizeof f->service) < 0)
        return hub_reply_error(req, 422, "service", "service: at most %d characters",
                               KILN_SERVICE_NAME_MAX);
    if (hub_query(req, "machine", f->machine, sizeof f->machine) < 0)
        return hub_reply_error(req, 422, "machine", "machine: at most 128 characters");
    int found = hub_query(req, "since", since, since_size);
    const char *last = mg_get_header(req->conn, "Last-Event-ID");
    if (found == 0 && last)
        found = snprintf(since, since_size, "%s", last) < (int)since_size ? 1 : -1;
    if (found < 0)
        return hub_reply_error(req, 422, "since", "since: a cursor is at most %d characters",
                               KILN_HUB_CURSOR_MAX);
    return 0;
}

static int sse_start(hub_req_t *req)
{
    mg_response_header_start(req->conn, 200);
    mg_response_header_add(req->conn, "Content-Type", "text/event-stream", -1);
    mg_response_header_add(req->conn, "Cache-Control", "no-store", -1);
    mg_response_header_add(req->conn, "X-Accel-Buffering", "no", -1);
    /* Chunked, so the end of a stream is the end of a reply and the
     * connection may serve the next request. */
    mg_response_header_add(req->conn, "Transfer-Encoding", "chunked", -1);
    hub_http_cors_headers(req);
    return mg_response_header_send(req->conn);
}

/* Sends text as one chunk; 0 or -1. */
static int send_chunk(struct mg_connection *conn, const char *text)
{
    return mg_send_chunk(conn, text, (unsigned)strlen(text)) > 0 ? 0 : -1;
}

/* Writes one event as id/event/data lines. */
static int sse_write(struct mg_connection *conn, json_t *event)
{
    char *data = json_dumps(event, JSON_COMPACT);
    const char *cursor = json_string_value(json_object_get(event, "cursor")) ?: "";
    const char *type = json_string_value(json_object_get(event, "type")) ?: "event";
    size_t size = (data ? strlen(data) : 0) + strlen(cursor) + strlen(type) + 32;
    char *text = data ? malloc(size) : NULL;
    int rc = -1;
    if (text) {
        snprintf(text, size, "id: %s\nevent: %s\ndata: %s\n\n", cursor, type, data);
        rc = send_chunk(conn, text);
    }
    free(text);
    free(data);
    return rc;
}

/* Streams sub's events until it ends, the client goes, or (end_at_final)
 * the job reaches a final state; idle_end: end once nothing is queued. */
static int sse_pump(hub_req_t *req, hub_sub_t *sub, bool end_at_final, bool idle_end)
{
    for (;;) {
        json_t *event;
        const char *reason = NULL;
        int got = hub_sub_next(sub, idle_end ? 0 : KEEPALIVE_MS, &event, &reason);
        if (got < 0) {
            json_t *why = json_pack("{s:s}", "reason", reason ? reason : "closed");
            char *text = json_dumps(why, JSON_COMPACT), line[600];
            snprintf(line, sizeof line, "event: end\ndata: %.500s\n\n", text ? text : "{}");
            send_chunk(req->conn, line);
            free(text);
            json_decref(why);
            break;
        }
        if (got == 0) {
            if (idle_end || send_chunk(req->conn, ": keep-alive\n\n") != 0)
                break;
            continue;
        }
        bool last =
            end_at_final && hub_state_final(json_string_value(json_object_get(event, "state")));
        int rc = sse_write(req->conn, event);
        json_decref(event);
        if (rc || last)
            break;
    }
    hub_sub_free(sub);
    mg_send_chunk(req->conn, "", 0); /* the last chunk */
    return 200;
}

int hub_stream_events_sse(hub_req_t *req)
{
    hub_filter_t filter;
    char since[KILN_HUB_CURSOR_MAX + 1];
    int rc = parse_filter(req, &filter, since, sizeof since);
    if (rc)
        return rc;
    if (!hub_events_room(req->hub))
        return no_room(req);
    kiln_broker_t *b = since[0] ? hub_broker(req) : NULL;
    if (since[0] && !b)
        return 503;
    kiln_err_t err = {0};
    hub_sub_t *sub = hub_sub_new(req->hub, b, &filter, since, &err);
    if (!sub)
        return hub_reply_kiln_error(req, &err);
    if (sse_start(req) < 0) {
        hub_sub_free(sub);
        return 200;
    }
    return sse_pump(req, sub, false, false);
}

int hub_stream_job_events(hub_req_t *req)
{
    if (!hub_events_room(req->hub))
        return no_room(req);
    kiln_broker_t *b = hub_broker(req);
    if (!b)
        return 503;
    kiln_err_t err = {0};
    json_t *job = NULL;
    if (kiln_broker_get_job(b, req->param, &job, &err) != 0)
        return hub_reply_kiln_error(req, &err);
    bool was_final = hub_state_final(json_string_value(json_object_get(job, "state")));
    hub_filter_t filter = {0};
    snprintf(filter.job, sizeof filter.job, "%s", req->param);
    snprintf(filter.service, sizeof filter.service, "%s",
             json_string_value(json_object_get(job, "service")));
    json_decref(job);
    char since[KILN_SERVICE_NAME_MAX + 8];
    snprintf(since, sizeof since, "%s=0-0", filter.service);
    hub_sub_t *sub = hub_sub_new(req->hub, b, &filter, since, &err);
    if (!sub)
        return hub_reply_kiln_error(req, &err);
    if (sse_start(req) < 0) {
        hub_sub_free(sub);
        return 200;
    }
    /* A job already final has all its events in the stream: they are
     * queued by now, so the stream ends once they are sent. */
    return sse_pump(req, sub, true, was_final);
}

/* ---- WebSocket ------------------------------------------------------------------ */

typedef struct ws_client {
    kiln_hub_t *hub;
    struct mg_connection *conn;
    hub_sub_t *sub;
    pthread_t writer;
    bool writer_started;
} ws_client_t;

/* Sends a close frame: 2-byte code, then the reason. */
void hub_ws_close(struct mg_connection *conn, unsigned code, const char *reason)
{
    char frame[2 + WS_REASON_MAX];
    size_t n = strlen(reason);
    if (n > WS_REASON_MAX)
        n = WS_REASON_MAX;
    frame[0] = (char)(code >> 8);
    frame[1] = (char)(code & 0xff);
    memcpy(frame + 2, reason, n);
    mg_websocket_write(conn, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, frame, n + 2);
}

int hub_ws_send_json(struct mg_connection *conn, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    if (!text)
        return -1;
    int rc = mg_websocket_write(conn, MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text));
    free(text);
    return rc > 0 ? 0 : -1;
}

static void *ws_writer(void *arg)
{
    ws_client_t *c = arg;
    for (;;) {
        json_t *event;
        const char *reason = NULL;
        int got = hub_sub_next(c->sub, KEEPALIVE_MS, &event, &reason);
        if (got < 0) {
            /* 1001 going away (hub stopping), 1008 for a dropped client. */
            bool stopping = atomic_load(&c->hub->stopping);
            hub_ws_close(c->conn, stopping ? 1001 : 1008, reason ? reason : "closed");
            break;
        }
        if (got == 0) {
            if (mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_PING, "", 0) <= 0)
                break;
            continue;
        }
        int rc = hub_ws_send_json(c->conn, event);
        json_decref(event);
        if (rc)
            break;
    }
    return NULL;
}

static int ws_connect(const struct mg_connection *conn, void *cbdata)
{
    kiln_hub_t *hub = cbdata;
    if (!hub_events_room(hub))
        return 1;
    ws_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return 1;
    c->hub = hub;
    c->conn = (struct mg_connection *)conn;
    hub_req_t req = {.hub = hub, .conn = c->conn, .ri = mg_get_request_info(conn)};
    hub_filter_t filter;
    char since[KILN_HUB_CURSOR_MAX + 1];
    memset(&filter, 0, sizeof filter);
    /* Bad filters refuse the upgrade (the client sees the handshake fail). */
    int found = hub_query(&req, "since", since, sizeof since);
    if (hub_query(&req, "job", filter.job, sizeof filter.job) < 0 ||
        hub_query(&req, "service", filter.service, sizeof filter.service) < 0 ||
        hub_query(&req, "machine", filter.machine, sizeof filter.machine) < 0 || found < 0) {
        free(c);
        return 1;
    }
    kiln_err_t err = {0};
    kiln_broker_t *b = NULL;
    if (found > 0 && kiln_broker_connect(&hub->broker_opts, &b, &err) != 0) {
        free(c);
        return 1;
    }
    c->sub = hub_sub_new(hub, b, &filter, found > 0 ? since : NULL, &err);
    kiln_broker_free(b);
    if (!c->sub) {
        free(c);
        return 1;
    }
    mg_set_user_connection_data(conn, c);
    return 0;
}

static void ws_ready(struct mg_connection *conn, void *cbdata)
{
    ws_client_t *c = mg_get_user_connection_data(conn);
    if (c && pthread_create(&c->writer, NULL, ws_writer, c) == 0)
        c->writer_started = true;
}

static int ws_data(struct mg_connection *conn, int flags, char *data, size_t len, void *cbdata)
{
    /* The client's frames are not commands here; a close frame ends it. */
    return (flags & 0xf) != MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE;
}

static void ws_closed(const struct mg_connection *conn, void *cbdata)
{
    ws_client_t *c = mg_get_user_connection_data(conn);
    if (!c)
        return;
    hub_sub_close(c->sub, "client closed");
    if (c->writer_started)
        pthread_join(c->writer, NULL);
    hub_sub_free(c->sub);
    free(c);
}

void hub_stream_register_ws(kiln_hub_t *hub)
{
    mg_set_websocket_handler(hub->mg, "/v1/events/ws$", ws_connect, ws_ready, ws_data, ws_closed,
                             hub);
}
