/*
 * ComfyUI's progress socket over civetweb's WebSocket client
 * (comfyui_ws.h). civetweb calls on_data and on_close from its reading
 * thread; everything they touch is under the lock, and the job's thread
 * only ever takes whole messages out of the queue.
 */
#include "comfyui_ws.h"

#include <civetweb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define WS_HOST_MAX 256
#define WS_PATH_MAX 2048

typedef struct message {
    struct message *next;
    char *text;
    size_t len;
} message_t;

struct kiln_comfyui_ws {
    struct mg_connection *conn;
    int event_fd;
    pthread_mutex_t lock;
    message_t *head, *tail;
    size_t queued, queued_bytes;
    char *partial; /* a text message arriving in fragments */
    size_t partial_len;
    bool in_binary; /* the fragments arriving belong to a binary message */
    bool closed;
    char close_reason[160];
};

static pthread_once_t library_once = PTHREAD_ONCE_INIT;

static void init_library(void)
{
    mg_init_library(0);
}

static void wake(kiln_comfyui_ws_t *ws)
{
    uint64_t one = 1;
    ssize_t n = write(ws->event_fd, &one, sizeof one);
    (void)n; /* a full counter is still readable: nothing is lost */
}

/* Marks the socket closed (the first reason stays); under the lock. */
static void mark_closed(kiln_comfyui_ws_t *ws, const char *reason)
{
    if (!ws->closed)
        snprintf(ws->close_reason, sizeof ws->close_reason, "%s", reason);
    ws->closed = true;
    wake(ws);
}

/* Appends a fragment to the message being assembled; false past the limit. */
static bool append_partial(kiln_comfyui_ws_t *ws, const char *data, size_t len)
{
    if (len > KILN_COMFYUI_WS_MESSAGE_MAX - ws->partial_len)
        return false;
    char *grown = realloc(ws->partial, ws->partial_len + len + 1);
    if (!grown)
        return false;
    memcpy(grown + ws->partial_len, data, len);
    ws->partial = grown;
    ws->partial_len += len;
    ws->partial[ws->partial_len] = '\0';
    return true;
}

/* Queues the assembled message; false when the queue is full. */
static bool queue_partial(kiln_comfyui_ws_t *ws)
{
    bool room = ws->queued < KILN_COMFYUI_WS_QUEUE_MAX &&
                ws->partial_len <= KILN_COMFYUI_WS_QUEUE_BYTES_MAX - ws->queued_bytes;
    message_t *m = room ? malloc(sizeof *m) : NULL;
    if (!m)
        return false;
    m->next = NULL;
    m->text = ws->partial;
    m->len = ws->partial_len;
    ws->queued_bytes += m->len;
    ws->partial = NULL;
    ws->partial_len = 0;
    if (ws->tail)
        ws->tail->next = m;
    else
        ws->head = m;
    ws->tail = m;
    ws->queued++;
    wake(ws);
    return true;
}

/* One frame from the server (civetweb's thread). Returns 1 to keep the
 * socket open, 0 to close it. */
static int on_data(struct mg_connection *conn, int flags, char *data, size_t len, void *user)
{
    kiln_comfyui_ws_t *ws = user;
    int opcode = flags & 0x0f;
    bool fin = (flags & 0x80) != 0;
    int keep = 1;
    pthread_mutex_lock(&ws->lock);
    if (opcode == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE) {
        mark_closed(ws, "the server closed the progress socket");
        keep = 0;
    } else if (opcode == MG_WEBSOCKET_OPCODE_BINARY ||
               (opcode == MG_WEBSOCKET_OPCODE_CONTINUATION && ws->in_binary)) {
        ws->in_binary = !fin;
    } else if (opcode == MG_WEBSOCKET_OPCODE_TEXT || opcode == MG_WEBSOCKET_OPCODE_CONTINUATION) {
        if (!append_partial(ws, data, len)) {
            mark_closed(ws, "a progress message is larger than 1 MiB");
            keep = 0;
        } else if (fin && !queue_partial(ws)) {
            mark_closed(ws, "too many progress messages are waiting");
            keep = 0;
        }
    }
    pthread_mutex_unlock(&ws->lock);
    return keep;
}

static void on_close(const struct mg_connection *conn, void *user)
{
    kiln_comfyui_ws_t *ws = user;
    pthread_mutex_lock(&ws->lock);
    mark_closed(ws, "the progress socket was closed");
    pthread_mutex_unlock(&ws->lock);
}

/* Splits base_url into host, port, TLS and the path of its WebSocket. */
static int parse_base(const char *base_url, const char *client_id, char *host, int *port, int *tls,
                      char *path, char *why, size_t why_size)
{
    const char *rest;
    if (strncasecmp(base_url, "http://", 7) == 0)
        rest = base_url + 7, *tls = 0, *port = 80;
    else if (strncasecmp(base_url, "https://", 8) == 0)
        rest = base_url + 8, *tls = 1, *port = 443;
    else
        return snprintf(why, why_size, "%s is not an http(s) URL", base_url), -1;
    const char *at = strchr(rest, '@'), *slash = strchr(rest, '/');
    if (at && (!slash || at < slash))
        rest = at + 1; /* credentials are not sent on the socket */
    size_t authority = strcspn(rest, "/?#");
    const char *prefix = rest + authority;
    const char *colon = NULL;
    for (const char *p = rest; p < rest + authority; p++)
        if (*p == ':')
            colon = p;
    if (colon && memchr(rest, ']', authority) > (void *)colon)
        colon = NULL; /* the colons of an IPv6 address */
    size_t host_len = colon ? (size_t)(colon - rest) : authority;
    if (host_len > 1 && rest[0] == '[' && rest[host_len - 1] == ']')
        rest++, host_len -= 2;
    if (host_len == 0 || host_len >= WS_HOST_MAX)
        return snprintf(why, why_size, "%s has no usable host", base_url), -1;
    snprintf(host, WS_HOST_MAX, "%.*s", (int)host_len, rest);
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (p < 1 || p > 65535 || end != colon + 1 + strspn(colon + 1, "0123456789"))
            return snprintf(why, why_size, "%s has no usable port", base_url), -1;
        *port = (int)p;
    }
    size_t prefix_len = strcspn(prefix, "?#");
    while (prefix_len > 0 && prefix[prefix_len - 1] == '/')
        prefix_len--;
    if ((size_t)snprintf(path, WS_PATH_MAX, "%.*s/ws?clientId=%s", (int)prefix_len, prefix,
                         client_id) >= WS_PATH_MAX)
        return snprintf(why, why_size, "the socket's path is too long"), -1;
    return 0;
}

int kiln_comfyui_ws_open(const char *base_url, const char *client_id, kiln_comfyui_ws_t **out,
                         char *why, size_t why_size)
{
    *out = NULL;
    char host[WS_HOST_MAX], path[WS_PATH_MAX];
    int port = 0, tls = 0;
    if (parse_base(base_url, client_id, host, &port, &tls, path, why, why_size) < 0)
        return -1;
    pthread_once(&library_once, init_library);
    kiln_comfyui_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return snprintf(why, why_size, "out of memory"), -1;
    ws->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ws->event_fd < 0) {
        free(ws);
        return snprintf(why, why_size, "eventfd failed"), -1;
    }
    pthread_mutex_init(&ws->lock, NULL);
    char error[256] = "";
    ws->conn = mg_connect_websocket_client(host, port, tls, error, sizeof error, path, NULL,
                                           on_data, on_close, ws);
    if (!ws->conn) {
        snprintf(why, why_size, "%s", error[0] ? error : "the connection failed");
        kiln_comfyui_ws_close(ws);
        return -1;
    }
    *out = ws;
    return 0;
}

int kiln_comfyui_ws_fd(const kiln_comfyui_ws_t *ws)
{
    return ws->event_fd;
}

int kiln_comfyui_ws_next(kiln_comfyui_ws_t *ws, char **msg, char *why, size_t why_size)
{
    uint64_t count;
    ssize_t n = read(ws->event_fd, &count, sizeof count); /* re-armed below if more wait */
    (void)n;
    pthread_mutex_lock(&ws->lock);
    int rc = 0;
    message_t *m = ws->head;
    if (m) {
        ws->head = m->next;
        if (!ws->head)
            ws->tail = NULL;
        ws->queued--;
        ws->queued_bytes -= m->len;
        *msg = m->text;
        free(m);
        rc = 1;
    } else if (ws->closed) {
        snprintf(why, why_size, "%s", ws->close_reason);
        rc = -1;
    }
    if (ws->head || ws->closed)
        wake(ws);
    pthread_mutex_unlock(&ws->lock);
    return rc;
}

void kiln_comfyui_ws_close(kiln_comfyui_ws_t *ws)
{
    if (!ws)
        return;
    if (ws->conn) {
        /* civetweb's reading thread looks at its stop flag only every 2 s;
         * a close frame makes the server end the connection, which wakes
         * it at once. */
        pthread_mutex_lock(&ws->lock);
        bool open = !ws->closed;
        pthread_mutex_unlock(&ws->lock);
        if (open)
            mg_websocket_client_write(ws->conn, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, "", 0);
        mg_close_connection(ws->conn); /* joins civetweb's reading thread */
    }
    for (message_t *m = ws->head, *next; m; m = next) {
        next = m->next;
        free(m->text);
        free(m);
    }
    free(ws->partial);
    close(ws->event_fd);
    pthread_mutex_destroy(&ws->lock);
    free(ws);
}
