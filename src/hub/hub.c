/*
 * The hub's lifecycle: configuration copied in, civetweb started with the
 * route dispatcher and the WebSocket handlers, the event reader, and one
 * synchronous broker connection per request thread.
 */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mg_server.h"
#include "hub/hub_internal.h"
#include "kiln/log.h"

#define COMPONENT "hub"

/* Each civetweb thread keeps its own connection: brokers are not
 * thread-safe, and a connection per request would cost a connect and
 * AUTH per call. */
static __thread kiln_broker_t *thread_broker;
static __thread kiln_hub_t *thread_broker_hub;

kiln_broker_t *hub_thread_broker(kiln_hub_t *hub, kiln_err_t *err)
{
    if (thread_broker && thread_broker_hub == hub)
        return thread_broker;
    hub_broker_reset();
    if (kiln_broker_connect(&hub->broker_opts, &thread_broker, err) != 0) {
        atomic_fetch_add(&hub->redis_errors, 1);
        return NULL;
    }
    thread_broker_hub = hub;
    return thread_broker;
}

kiln_broker_t *hub_broker(hub_req_t *req)
{
    kiln_err_t err = {0};
    kiln_broker_t *b = hub_thread_broker(req->hub, &err);
    if (!b)
        hub_reply_error(req, 503, NULL, "%s", err.msg);
    return b;
}

void hub_broker_reset(void)
{
    kiln_broker_free(thread_broker);
    thread_broker = NULL;
    thread_broker_hub = NULL;
}

static void on_exit_thread(const struct mg_context *ctx, int thread_type, void *thread_pointer)
{
    (void)ctx;
    (void)thread_type;
    (void)thread_pointer;
    hub_broker_reset();
}

/* civetweb's own messages go to our log. They hold request lines at most,
 * never header values, so no token reaches the log. */
static int on_civetweb_log(const struct mg_connection *conn, const char *message)
{
    (void)conn;
    kiln_log(KILN_LOG_WARN, COMPONENT, NULL, NULL, "civetweb: %s", message);
    return 1;
}

static bool is_loopback(const char *listen)
{
    return !strchr(listen, ':') || strncmp(listen, "127.", 4) == 0;
}

static int copy_config(kiln_hub_t *hub, const kiln_config_t *cfg, kiln_err_t *err)
{
    kiln_broker_options_from_config(&hub->broker_opts, cfg);
    hub->redis_url = strdup(cfg->redis_url);
    hub->broker_opts.redis_url = hub->redis_url;
    hub->max_body_bytes = cfg->hub.max_body_bytes;
    hub->threads = cfg->hub.threads > 0 ? cfg->hub.threads : 64;
    hub->retention_age_s = cfg->broker.retention_age_s;
    const char *listen = cfg->hub.listen ? cfg->hub.listen : KILN_CONFIG_HUB_LISTEN_DEFAULT;
    if (cfg->hub.n_tokens == 0 && !is_loopback(listen)) {
        const char *colon = strrchr(listen, ':');
        snprintf(hub->listen, sizeof hub->listen, "127.0.0.1:%s", colon + 1);
        kiln_log(KILN_LOG_WARN, COMPONENT, NULL, NULL,
                 "hub.tokens is empty: listening on %s (loopback only) instead of %s; add "
                 "tokens (hub.tokens, KILN_HUB_TOKENS) to serve other hosts",
                 hub->listen, listen);
    } else {
        snprintf(hub->listen, sizeof hub->listen, "%s", listen);
    }
    hub->tokens = calloc(cfg->hub.n_tokens + 1, sizeof *hub->tokens);
    hub->rate_limit_per_s = cfg->hub.rate_limit_per_s;
    hub->rate_buckets = calloc(cfg->hub.n_tokens + 1, sizeof *hub->rate_buckets);
    hub->rate_refill_ms = calloc(cfg->hub.n_tokens + 1, sizeof *hub->rate_refill_ms);
    hub->origins = calloc(cfg->hub.n_cors_origins + 1, sizeof *hub->origins);
    if (!hub->redis_url || !hub->tokens || !hub->origins || !hub->rate_buckets ||
        !hub->rate_refill_ms)
        return kiln_err_set(err, KILN_ENOMEM, "hub: out of memory");
    for (size_t i = 0; i < cfg->hub.n_tokens; i++) {
        const kiln_hub_token_config_t *t = &cfg->hub.tokens[i];
        snprintf(hub->tokens[i].name, sizeof hub->tokens[i].name, "%s", t->name);
        SHA256((const unsigned char *)t->token, strlen(t->token), hub->tokens[i].digest);
        hub->tokens[i].role = t->role;
        hub->rate_buckets[i] = hub->rate_limit_per_s; /* a full second's worth to start */
    }
    hub->n_tokens = cfg->hub.n_tokens;
    for (size_t i = 0; i < cfg->hub.n_cors_origins; i++) {
        if (!(hub->origins[i] = strdup(cfg->hub.cors_origins[i])))
            return kiln_err_set(err, KILN_ENOMEM, "hub: out of memory");
        hub->n_origins++;
    }
    return 0;
}

static int start_civetweb(kiln_hub_t *hub, int threads, kiln_err_t *err)
{
    char nthreads[16];
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    const char *options[] = {"listening_ports", hub->listen, "num_threads", nthreads,
                             "request_timeout_ms", "30000", "enable_keep_alive", "yes",
                             /* A kept connection holds a request thread while
                              * it idles, so idle clients are let go soon: with
                              * 30 s, 200 clients that each sent one request
                              * queued behind the 64 threads for 90 s. */
                             "keep_alive_timeout_ms", "1000", "tcp_nodelay", "1",
                             "websocket_timeout_ms", "3600000", "listen_backlog", "512", NULL};
    struct mg_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.begin_request = hub_http_handle;
    callbacks.log_message = on_civetweb_log;
    callbacks.exit_thread = on_exit_thread;
    char why[256];
    hub->mg = kiln_mg_start(&callbacks, hub, options, &hub->port, why, sizeof why);
    if (!hub->mg)
        return kiln_err_set(err, KILN_EIO,
                            "hub: cannot listen on %s: %s; set hub.listen (KILN_HUB_LISTEN) to a "
                            "free address",
                            hub->listen, why);
    char host[64];
    kiln_mg_local_host(hub->listen, host, sizeof host);
    snprintf(hub->url, sizeof hub->url, "http://%s:%d", host, hub->port);
    hub_stream_register_ws(hub);
    hub_compat_register_ws(hub);
    return 0;
}

/* The webhook delivery loop, when a secret is configured. Its consumer
 * name is this hub's host and pid, so hubs side by side share the work. */
static int start_webhooks(kiln_hub_t *hub, const kiln_config_t *cfg, kiln_err_t *err)
{
    if (!cfg->hub.webhooks.secret) {
        kiln_log(KILN_LOG_INFO, COMPONENT, NULL, NULL,
                 "webhooks off: set KILN_HUB_WEBHOOKS_SECRET or hub.webhooks.secret_file to "
                 "deliver them");
        return 0;
    }
    kiln_webhook_options_t opts = {.redis_url = hub->redis_url,
                                   .default_url = cfg->hub.webhooks.default_url,
                                   .secret = cfg->hub.webhooks.secret,
                                   .max_attempts = cfg->hub.webhooks.max_attempts};
    int rc = kiln_webhooks_start(&opts, &hub->webhooks, err);
    if (rc == 0)
        kiln_log(KILN_LOG_INFO, COMPONENT, NULL, NULL,
                 "webhooks on: up to %d attempts per delivery%s", opts.max_attempts,
                 opts.default_url ? ", with a default URL" : "");
    return rc;
}

static void free_memory(kiln_hub_t *hub)
{
    for (size_t i = 0; i < hub->n_origins; i++)
        free(hub->origins[i]);
    free(hub->origins);
    free(hub->tokens);
    free(hub->rate_buckets);
    free(hub->rate_refill_ms);
    pthread_mutex_destroy(&hub->rate_mu);
    free(hub->redis_url);
    free(hub);
}

int kiln_hub_new(const kiln_config_t *cfg, kiln_hub_t **out, kiln_err_t *err)
{
    *out = NULL;
    kiln_hub_t *hub = calloc(1, sizeof *hub);
    if (!hub)
        return kiln_err_set(err, KILN_ENOMEM, "hub: out of memory");
    pthread_mutex_init(&hub->rate_mu, NULL);
    int rc = copy_config(hub, cfg, err);
    if (rc)
        goto error;
    /* Fail at start, not on the first request, when Redis is unreachable. */
    kiln_broker_t *probe = NULL;
    rc = kiln_broker_connect(&hub->broker_opts, &probe, err);
    kiln_broker_free(probe);
    if (rc)
        goto error;
    rc = hub_batcher_start(hub, err);
    if (rc)
        goto error;
    rc = hub_events_start(hub, err);
    if (rc) {
        hub_batcher_stop(hub);
        goto error;
    }
    rc = start_webhooks(hub, cfg, err);
    if (rc) {
        hub_events_stop(hub);
        hub_batcher_stop(hub);
        goto error;
    }
    mg_init_library(MG_FEATURES_WEBSOCKET);
    rc = start_civetweb(hub, hub->threads, err);
    if (rc) {
        kiln_webhooks_stop(hub->webhooks);
        hub_events_stop(hub);
        hub_batcher_stop(hub);
        mg_exit_library();
        goto error;
    }
    if (hub->n_tokens == 0)
        kiln_log(KILN_LOG_WARN, COMPONENT, NULL, NULL,
                 "no tokens configured: every request is allowed, on loopback only");
    kiln_log(KILN_LOG_INFO, COMPONENT, NULL, NULL,
             "hub listening on %s (%zu tokens, %zu CORS "
             "origins)",
             hub->url, hub->n_tokens, hub->n_origins);
    *out = hub;
    return 0;

error:
    free_memory(hub);
    return rc;
}

int kiln_hub_port(const kiln_hub_t *hub)
{
    return hub->port;
}

const char *kiln_hub_url(const kiln_hub_t *hub)
{
    return hub->url;
}

void kiln_hub_free(kiln_hub_t *hub)
{
    if (!hub)
        return;
    /* Live streams see the flag (and their subscriptions closed) and end
     * with a last message before civetweb's threads are joined. */
    atomic_store(&hub->stopping, true);
    hub_events_shutdown(hub);
    kiln_mg_stop(hub->mg, hub->listen, hub->port);
    kiln_webhooks_stop(hub->webhooks);
    hub_batcher_stop(hub);
    hub_events_stop(hub);
    mg_exit_library();
    free_memory(hub);
}
