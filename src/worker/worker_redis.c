/*
 * The worker's Redis connections: a command connection for the broker's
 * scripts and the registry, and a subscriber connection for the queues'
 * notify channels. Both reconnect with exponential backoff and jitter; the
 * worker keeps running its jobs while Redis is away.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kiln/log.h"
#include "worker/redis_uv.h"
#include "worker/worker_internal.h"

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000

int64_t kiln_worker_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_reconnect_timer(uv_timer_t *t)
{
    kiln_worker_t *w = t->data;
    w->reconnect_armed = false;
    if (w->cmd && !w->cmd_ready) {
        /* A command connection that failed a send but is still open: close
         * it for good; its disconnect callback schedules the next attempt. */
        redisAsyncFree(w->cmd);
        return;
    }
    kiln_worker_redis_connect(w);
}

/* Schedules a reconnect attempt after the current backoff. */
static void arm_reconnect(kiln_worker_t *w)
{
    if (w->closing || w->reconnect_armed)
        return;
    int delay = w->reconnect_delay_ms ? w->reconnect_delay_ms : RECONNECT_MIN_MS;
    w->reconnect_delay_ms = delay * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : delay * 2;
    delay = delay * 4 / 5 + rand() % (delay * 2 / 5 + 1);
    w->reconnect_armed = true;
    uv_timer_start(&w->reconnect_timer, on_reconnect_timer, (uint64_t)delay, 0);
}

/* The command connection is unusable: stop sending and reconnect. */
void kiln_worker_redis_lost(kiln_worker_t *w, const char *why)
{
    if (w->closing)
        return;
    if (w->cmd_ready)
        KILN_LOG_WARN_("worker", "redis connection lost (%s); reconnecting with backoff", why);
    w->cmd_ready = false;
    arm_reconnect(w);
}

/* The subscriber connection is gone: only it is rebuilt; commands go on. */
static void sub_lost(kiln_worker_t *w, const char *why)
{
    if (w->closing)
        return;
    KILN_LOG_WARN_("worker", "redis subscriber connection lost (%s); resubscribing", why);
    arm_reconnect(w);
}

static void on_setup_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        KILN_LOG_ERROR_("worker", "redis refused %s: %s", (const char *)privdata, reply->str);
}

/* Loads every script on a fresh connection. Redis runs a connection's
 * commands in order, so no EVALSHA sent after this meets an empty cache
 * (Redis restarted, or a new server). */
void kiln_worker_load_scripts(kiln_worker_t *w)
{
    static const char *const names[] = {"step", "heartbeat", "progress", "release_lost", NULL};
    for (size_t i = 0; names[i]; i++) {
        const kiln_script_t *script = kiln_script_get(names[i]);
        const char *argv[] = {"SCRIPT", "LOAD", script->source};
        size_t lens[] = {6, 4, script->length};
        redisAsyncCommandArgv(w->cmd, on_setup_reply, (void *)"SCRIPT LOAD", 3, argv, lens);
    }
}

static void on_cmd_connect(const redisAsyncContext *ac, int status)
{
    kiln_worker_t *w = ac->data;
    if (status != REDIS_OK) {
        w->cmd = NULL; /* hiredis frees a context whose connect failed */
        kiln_worker_redis_lost(w, ac->errstr);
        return;
    }
    w->cmd_ready = true;
    w->reconnect_delay_ms = 0;
    kiln_worker_load_scripts(w);
    KILN_LOG_INFO_("worker", "connected to redis %s:%d", w->url.host, w->url.port);
    kiln_worker_on_connected(w);
}

static void on_cmd_disconnect(const redisAsyncContext *ac, int status)
{
    kiln_worker_t *w = ac->data;
    w->cmd = NULL;
    kiln_worker_redis_lost(w, status == REDIS_OK ? "closed" : ac->errstr);
}

static void on_sub_connect(const redisAsyncContext *ac, int status)
{
    kiln_worker_t *w = ac->data;
    if (status != REDIS_OK) {
        w->sub = NULL;
        sub_lost(w, ac->errstr);
    }
}

static void on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    kiln_worker_t *w = ac->data;
    w->sub = NULL;
    sub_lost(w, status == REDIS_OK ? "closed" : ac->errstr);
}

static void on_message(redisAsyncContext *ac, void *r, void *privdata)
{
    kiln_worker_t *w = privdata;
    redisReply *reply = r;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(reply->element[0]->str, "message") == 0)
        kiln_worker_on_notify(w, reply->element[1]->str, reply->element[2]->str);
    else if (strcmp(reply->element[0]->str, "subscribe") == 0)
        kiln_worker_on_subscribed(w); /* what was submitted meanwhile is found by a claim */
}

static redisAsyncContext *open_async(kiln_worker_t *w, redisConnectCallback *on_connect,
                                     redisDisconnectCallback *on_disconnect)
{
    redisAsyncContext *ac = redisAsyncConnect(w->url.host, w->url.port);
    if (!ac)
        return NULL;
    if (ac->err) {
        KILN_LOG_WARN_("worker", "redis %s:%d: %s", w->url.host, w->url.port, ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = w;
    /* A silent Redis (a dead peer, a dropped route) is noticed. */
    redisEnableKeepAlive(&ac->c);
    if (kiln_redis_uv_attach(ac, &w->loop) != 0) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (w->url.password[0])
        redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s", w->url.password);
    if (w->url.db)
        redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d", w->url.db);
    /* hiredis 0.14 notices a finished connect only once a write is queued,
     * so every connection starts with a command; the name also shows the
     * worker in CLIENT LIST. */
    char name[160];
    snprintf(name, sizeof name, "kiln-worker:%s", w->who.id);
    for (char *c = name; *c; c++) {
        if (*c <= ' ' || *c > '~')
            *c = '_';
    }
    const char *setname[] = {"CLIENT", "SETNAME", name};
    redisAsyncCommandArgv(ac, on_setup_reply, (void *)"CLIENT SETNAME", 3, setname, NULL);
    return ac;
}

void kiln_worker_redis_connect(kiln_worker_t *w)
{
    if (w->closing)
        return;
    if (!w->cmd && !(w->cmd = open_async(w, on_cmd_connect, on_cmd_disconnect))) {
        kiln_worker_redis_lost(w, "cannot create a connection");
        return;
    }
    if (!w->sub) {
        w->sub = open_async(w, on_sub_connect, on_sub_disconnect);
        if (!w->sub) {
            kiln_worker_redis_lost(w, "cannot create a connection");
            return;
        }
        kiln_argv_t a;
        kiln_argv_init(&a);
        kiln_argv_add(&a, "SUBSCRIBE", SIZE_MAX);
        for (int i = 0; i < w->n_services; i++)
            kiln_argv_add(&a, w->services[i].channel, SIZE_MAX);
        redisAsyncCommandArgv(w->sub, on_message, w, (int)a.count, (const char **)a.items, a.lens);
        kiln_argv_free(&a);
    }
}

void kiln_worker_redis_close(kiln_worker_t *w, bool force)
{
    w->closing = true;
    uv_timer_stop(&w->reconnect_timer);
    /* A clean close waits for the replies in flight; a forced one (the hard
     * stop, Redis not answering) drops them. */
    redisAsyncContext *contexts[] = {w->cmd, w->sub};
    for (int i = 0; i < 2; i++) {
        if (contexts[i] && force)
            redisAsyncFree(contexts[i]);
        else if (contexts[i])
            redisAsyncDisconnect(contexts[i]);
    }
}

int kiln_worker_send(kiln_worker_t *w, kiln_argv_t *argv, redisCallbackFn *cb, void *privdata)
{
    if (!w->cmd || !w->cmd_ready || argv->failed)
        return -1;
    return redisAsyncCommandArgv(w->cmd, cb, privdata, (int)argv->count, (const char **)argv->items,
                                 argv->lens) == REDIS_OK
               ? 0
               : -1;
}

static void on_registry_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        KILN_LOG_WARN_("worker", "registry update refused: %s", reply->str);
}

static json_t *worker_info(kiln_worker_t *w)
{
    json_t *services = json_array();
    for (int i = 0; i < w->n_services; i++)
        json_array_append_new(services, json_string(w->services[i].name));
    json_t *caps = json_loads(w->who.caps_json, 0, NULL);
    return json_pack("{s:s, s:s, s:o, s:o, s:i, s:i, s:i, s:s, s:I, s:I}", "id", w->who.id,
                     "machine_id", w->cfg->machine_id ? w->cfg->machine_id : "", "services",
                     services, "capabilities", caps ? caps : json_object(), "concurrency",
                     w->pool.count, "busy", w->pool.count - kiln_slotpool_idle(&w->pool), "pid",
                     (int)getpid(), "host", w->host, "started_at", (json_int_t)w->started_ms,
                     "seen_at", (json_int_t)kiln_ops_wall_ms());
}

/* Publishes the worker's record with a TTL, so others see it is alive. */
void kiln_worker_register(kiln_worker_t *w)
{
    if (!w->cmd_ready)
        return;
    json_t *info = worker_info(w);
    /* The windows and whether they are open now, so the hub can say why a
     * job waits ("outside active window 22:00-06:00"). */
    char windows[KILN_WINDOWS_TEXT_MAX + 1];
    kiln_windows_format(&w->windows, windows, sizeof windows);
    if (info) {
        json_object_set_new(info, "active_windows", json_string(windows));
        json_object_set_new(info, "claiming",
                            json_boolean(kiln_worker_window_open(w) && kiln_worker_health_any(w)));
        json_object_set_new(info, "health", kiln_worker_health_json(w));
    }
    char *text = info ? json_dumps(info, JSON_COMPACT) : NULL;
    json_decref(info);
    if (!text)
        return;
    char key[192], ttl[32], now[32];
    snprintf(key, sizeof key, "kiln:worker:%s", w->who.id);
    snprintf(ttl, sizeof ttl, "%ld", w->cfg->worker.registry_ttl_ms);
    snprintf(now, sizeof now, "%lld", kiln_ops_wall_ms());
    const char *set[] = {"SET", key, text, "PX", ttl};
    redisAsyncCommandArgv(w->cmd, on_registry_reply, NULL, 5, set, NULL);
    const char *zadd[] = {"ZADD", "kiln:workers", now, w->who.id};
    redisAsyncCommandArgv(w->cmd, on_registry_reply, NULL, 4, zadd, NULL);
    for (int i = 0; i < w->n_services; i++) {
        const char *sadd[] = {"SADD", "kiln:services", w->services[i].name};
        redisAsyncCommandArgv(w->cmd, on_registry_reply, NULL, 3, sadd, NULL);
    }
    free(text);
}

void kiln_worker_deregister(kiln_worker_t *w)
{
    if (!w->cmd_ready)
        return;
    char key[192];
    snprintf(key, sizeof key, "kiln:worker:%s", w->who.id);
    const char *del[] = {"DEL", key};
    redisAsyncCommandArgv(w->cmd, on_registry_reply, NULL, 2, del, NULL);
    const char *zrem[] = {"ZREM", "kiln:workers", w->who.id};
    redisAsyncCommandArgv(w->cmd, on_registry_reply, NULL, 3, zrem, NULL);
}
