/*
 * What the civetweb fakes of outside services share (fake_ollama.c,
 * fake_a1111.c, fake_openai.c, fake_comfyui.c, and through fake_remote.h
 * fake_replicate.c and fake_runpod.c): a stop flag with a condition to wait on, per-key request
 * counts for "fail the first time" faults, JSON in and out, and the main
 * loop that prints the port and waits for SIGTERM.
 *
 * Header-only (static inline), as each fake is one program built from one
 * file.
 */
#ifndef KILN_FAKE_COMMON_H
#define KILN_FAKE_COMMON_H

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

#define FAKE_BODY_MAX    (8 * 1024 * 1024)
#define FAKE_STALL_MAX_S 60 /* a stalled handler gives up after this, whatever happens */
#define FAKE_MAX_KEYS    64
#define FAKE_KEY_LEN     128

static struct {
    pthread_mutex_t mu;
    pthread_cond_t changed;
    bool stopping;
    bool keep_alive; /* fake_serve_with: responses keep the connection */
    int port;
    char keys[FAKE_MAX_KEYS][FAKE_KEY_LEN];
    int key_requests[FAKE_MAX_KEYS];
} fake_common = {.mu = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER};

static inline bool fake_starts_with(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Counts a request for key; returns how many key has had, this one included. */
static inline int fake_count(const char *key)
{
    pthread_mutex_lock(&fake_common.mu);
    int n = 0;
    for (int i = 0; i < FAKE_MAX_KEYS; i++) {
        if (fake_common.keys[i][0] == '\0')
            snprintf(fake_common.keys[i], FAKE_KEY_LEN, "%s", key);
        if (strncmp(fake_common.keys[i], key, FAKE_KEY_LEN - 1) == 0) {
            n = ++fake_common.key_requests[i];
            break;
        }
    }
    pthread_mutex_unlock(&fake_common.mu);
    return n;
}

/* Waits up to ms (and at most FAKE_STALL_MAX_S); false once the fake is stopping. */
static inline bool fake_pause_ms(long ms)
{
    if (ms > FAKE_STALL_MAX_S * 1000L)
        ms = FAKE_STALL_MAX_S * 1000L;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&fake_common.mu);
    while (!fake_common.stopping)
        if (pthread_cond_timedwait(&fake_common.changed, &fake_common.mu, &until) != 0)
            break;
    bool go_on = !fake_common.stopping;
    pthread_mutex_unlock(&fake_common.mu);
    return go_on;
}

/* Sends a response of len bytes of body with the given type (and
 * extra_headers, each ending "\r\n", may be NULL), closing the connection
 * unless the fake keeps connections alive; returns status. Head and body go
 * out in one write: two small ones on a kept-alive connection meet the
 * client's delayed ACK (Nagle) and stall 40 ms. */
static inline int fake_send(struct mg_connection *conn, int status, const char *reason,
                            const char *type, const char *extra_headers, const char *body,
                            size_t len)
{
    char head[1024];
    int n = snprintf(
        head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
        status, reason, type, len, fake_common.keep_alive ? "" : "Connection: close\r\n",
        extra_headers ? extra_headers : "");
    size_t head_len = n < 0 ? 0 : (size_t)n < sizeof head ? (size_t)n : sizeof head - 1;
    char *all = malloc(head_len + len);
    if (!all)
        return 500;
    memcpy(all, head, head_len);
    if (len)
        memcpy(all + head_len, body, len);
    mg_write(conn, all, head_len + len);
    free(all);
    return status;
}

/* Sends body (stolen) as a JSON response that closes the connection; returns status. */
static inline int fake_send_json(struct mg_connection *conn, int status, const char *reason,
                                 const char *extra_headers, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    fake_send(conn, status, reason, "application/json", extra_headers, text ? text : "",
              text ? strlen(text) : 0);
    free(text);
    return status;
}

/* Sends raw text as a 200 response of the given type. */
static inline void fake_send_raw(struct mg_connection *conn, const char *type, const char *text)
{
    fake_send(conn, 200, "OK", type, NULL, text, strlen(text));
}

/* Reads the request body as a JSON object (NULL when it is not one). */
static inline json_t *fake_read_body(struct mg_connection *conn)
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

typedef struct fake_route {
    const char *uri;
    mg_request_handler handler;
} fake_route_t;

/* How fake_serve_with serves. */
typedef struct fake_serve_options {
    bool keep_alive; /* keep connections (160 threads, enough for 64 busy clients) */
    int (*on_connection)(const struct mg_connection *conn, void **conn_data); /* may be NULL */
    void (*on_listening)(struct mg_context *ctx); /* more setup before the port is printed */
} fake_serve_options_t;

/* Serves routes (ending with a NULL uri) on 127.0.0.1:port_text, prints
 * "NAME: listening on 127.0.0.1:PORT" once ready, and runs until SIGTERM or
 * SIGINT. Returns the exit status. */
static inline int fake_serve_with(const char *name, const char *port_text,
                                  const fake_route_t *routes, const fake_serve_options_t *o)
{
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* civetweb's threads inherit it */
    signal(SIGPIPE, SIG_IGN);

    fake_common.keep_alive = o->keep_alive;
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%s", port_text);
    /* A kept-alive connection holds its civetweb thread while idle. */
    const char *options[] = {"listening_ports",
                             listen,
                             "num_threads",
                             o->keep_alive ? "160" : "32",
                             "enable_keep_alive",
                             o->keep_alive ? "yes" : "no",
                             "keep_alive_timeout_ms",
                             "60000",
                             NULL};
    mg_init_library(0);
    struct mg_callbacks callbacks = {.init_connection = o->on_connection};
    struct mg_context *ctx = mg_start(&callbacks, NULL, options);
    if (!ctx) {
        fprintf(stderr, "%s: cannot listen on %s\n", name, listen);
        return 2;
    }
    struct mg_server_port ports[2];
    if (mg_get_server_ports(ctx, 2, ports) < 1) {
        fprintf(stderr, "%s: no listening port\n", name);
        return 2;
    }
    fake_common.port = ports[0].port;
    for (const fake_route_t *r = routes; r->uri; r++)
        mg_set_request_handler(ctx, r->uri, r->handler, NULL);
    if (o->on_listening)
        o->on_listening(ctx);
    printf("%s: listening on 127.0.0.1:%d\n", name, fake_common.port);
    fflush(stdout);

    int sig = 0;
    sigwait(&stop_signals, &sig);
    pthread_mutex_lock(&fake_common.mu);
    fake_common.stopping = true;
    pthread_cond_broadcast(&fake_common.changed);
    pthread_mutex_unlock(&fake_common.mu);
    /* mg_stop takes seconds to wind its threads down; a fake has nothing to
     * save, so it leaves at once and lets the kernel close its sockets. */
    _exit(0);
}

/* fake_serve_with, closing every connection after its response. */
static inline int fake_serve(const char *name, const char *port_text, const fake_route_t *routes)
{
    const fake_serve_options_t o = {0};
    return fake_serve_with(name, port_text, routes, &o);
}

#endif
