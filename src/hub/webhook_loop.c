/*
 * The webhook delivery loop (kiln_webhooks_start, kiln/hub_webhook.h): one
 * thread, its own broker connection, the consumer group "kiln-webhooks" on
 * every queue's event stream. An event is acknowledged only once its
 * webhook is delivered, has failed for good, or needs none.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/broker_internal.h"
#include "core/curl_util.h"
#include "core/deadline.h"
#include "core/redis_url.h"
#include "hub/registry_internal.h"
#include "kiln/hub_webhook.h"
#include "kiln/log.h"

#define READ_COUNT     16
#define READ_BLOCK_MS  500
#define REDIS_RETRY_MS 500

struct kiln_webhooks {
    char *redis_url, *default_url, *secret, *consumer;
    int max_attempts;
    long backoff_base_ms, backoff_max_ms, timeout_ms, reclaim_idle_ms;
    kiln_broker_t *broker; /* the thread's own */
    json_t *streams;       /* services whose stream has the group */
    bool read_backlog;     /* next read takes this consumer's unacknowledged events */
    unsigned seed;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

/* Waits up to ms unless stopped; returns false when stopped. */
static bool pause_ms(kiln_webhooks_t *w, long ms)
{
    struct timespec until = kiln_deadline_after_ms(CLOCK_REALTIME, ms);
    pthread_mutex_lock(&w->mu);
    while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &until) == 0)
        ;
    bool go_on = !w->stop;
    pthread_mutex_unlock(&w->mu);
    return go_on;
}

static bool stopping(kiln_webhooks_t *w)
{
    pthread_mutex_lock(&w->mu);
    bool stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    return stop;
}

static size_t discard(char *data, size_t size, size_t n, void *ctx)
{
    (void)data;
    (void)ctx;
    return size * n;
}

/* One signed POST; returns the HTTP status (0 when none came) and a short
 * error in why. */
static long post_once(kiln_webhooks_t *w, const char *url, const char *event, const char *body,
                      char *why, size_t why_size)
{
    char signature[KILN_WEBHOOK_SIGNATURE_MAX], header[KILN_WEBHOOK_SIGNATURE_MAX + 32],
        event_header[64];
    kiln_webhook_sign(w->secret, (long long)time(NULL), body, strlen(body), signature);
    snprintf(header, sizeof header, "X-Kiln-Signature: %s", signature);
    snprintf(event_header, sizeof event_header, "X-Kiln-Event: %s", event);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    headers = curl_slist_append(headers, header);
    headers = curl_slist_append(headers, event_header);
    CURL *curl = curl_easy_init();
    long status = 0;
    if (!curl || !headers) {
        snprintf(why, why_size, "out of memory");
    } else {
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, w->timeout_ms);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, w->timeout_ms);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, "kiln-webhook/1");
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
        CURLcode rc = curl_easy_perform(curl);
        if (rc == CURLE_OK)
            curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK)
            snprintf(why, why_size, "%s", curl_easy_strerror(rc));
        else if (status < 200 || status > 299)
            snprintf(why, why_size, "HTTP %ld", status);
        else
            why[0] = '\0';
    }
    if (curl)
        curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    return status;
}

static void record(kiln_webhooks_t *w, const char *key, const char *url, const char *state,
                   int attempts, long status, const char *why)
{
    redisReply *r = redisCommand(w->broker->redis,
                                 "HSET %s url %s state %s attempts %d last_status %ld "
                                 "last_error %s updated_at %lld",
                                 key, url, state, attempts, status, why, kiln_ops_wall_ms());
    if (r)
        freeReplyObject(r);
    r = redisCommand(w->broker->redis, "EXPIRE %s %d", key, KILN_WEBHOOK_STATE_TTL_S);
    if (r)
        freeReplyObject(r);
}

/* The stored URL and state of a job's webhook (url owned by the caller). */
static void stored(kiln_webhooks_t *w, const char *key, char **url, char *state, int *attempts)
{
    redisReply *r = redisCommand(w->broker->redis, "HMGET %s url state attempts", key);
    *url = NULL;
    state[0] = '\0';
    *attempts = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        if (r->element[0]->type == REDIS_REPLY_STRING)
            *url = strdup(r->element[0]->str);
        if (r->element[1]->type == REDIS_REPLY_STRING)
            snprintf(state, 16, "%s", r->element[1]->str);
        if (r->element[2]->type == REDIS_REPLY_STRING)
            *attempts = atoi(r->element[2]->str);
    }
    if (r)
        freeReplyObject(r);
}

/* Delivers job_id's webhook: the URL of its delivery state, else the one it
 * was submitted with, else the hub's default. Returns false when stopped
 * before the outcome was final, or when Redis could not say the job's URL
 * (the event then stays unacknowledged, for a later read or reclaim). */
static bool deliver(kiln_webhooks_t *w, const char *job_id, const char *event)
{
    char key[256], state[16], why[256] = "", shown[KILN_WEBHOOK_URL_MAX + 32];
    if (kiln_webhook_key(job_id, key, sizeof key, NULL) != 0)
        return true;
    char *url;
    int attempts;
    stored(w, key, &url, state, &attempts);
    if (!url && kiln_webhook_job_url(w->broker, job_id, &url, NULL) == KILN_EREDIS)
        return false; /* unacknowledged: read again once Redis answers */
    if (!url && w->default_url)
        url = strdup(w->default_url);
    json_t *job = NULL;
    if (!url || !strcmp(state, "delivered") || !strcmp(state, "failed") ||
        kiln_broker_get_job(w->broker, job_id, &job, NULL) != 0) {
        free(url);
        return true;
    }
    char *body = json_dumps(job, JSON_COMPACT);
    json_decref(job);
    kiln_url_redact(url, shown, sizeof shown);
    bool done = true;
    for (;;) {
        long status = post_once(w, url, event, body ? body : "{}", why, sizeof why);
        attempts++;
        bool ok = status >= 200 && status <= 299;
        const char *now = ok ? "delivered" : attempts >= w->max_attempts ? "failed" : "pending";
        record(w, key, url, now, attempts, status, why);
        if (ok || attempts >= w->max_attempts) {
            kiln_log(ok ? KILN_LOG_INFO : KILN_LOG_WARN, "webhook", job_id, NULL,
                     "%s to %s after %d attempt(s)%s%s", now, shown, attempts, ok ? "" : ": ", why);
            break;
        }
        long delay = w->backoff_base_ms << (attempts - 1 < 20 ? attempts - 1 : 20);
        if (delay > w->backoff_max_ms || delay <= 0)
            delay = w->backoff_max_ms;
        delay = delay / 2 + (long)(rand_r(&w->seed) % (unsigned)(delay / 2 + 1));
        if (!pause_ms(w, delay)) {
            done = false;
            break;
        }
    }
    free(body);
    free(url);
    return done;
}

/* Handles one stream entry [id, [field, value, ...]]; acknowledges it when
 * its outcome is final. */
static void handle_entry(kiln_webhooks_t *w, const char *stream, redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[1]->type != REDIS_REPLY_ARRAY)
        return;
    const char *job = NULL, *type = "";
    redisReply *fields = entry->element[1];
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        if (!strcmp(fields->element[i]->str, "job"))
            job = fields->element[i + 1]->str;
        else if (!strcmp(fields->element[i]->str, "type"))
            type = fields->element[i + 1]->str;
    }
    bool terminal = !strcmp(type, "completed") || !strcmp(type, "failed") || !strcmp(type, "dead");
    if (terminal && job && !deliver(w, job, type))
        return;
    redisReply *r = redisCommand(w->broker->redis, "XACK %s %s %s", stream, KILN_WEBHOOK_GROUP,
                                 entry->element[0]->str);
    if (r)
        freeReplyObject(r);
}

/* Creates the group on every known queue's stream (from its start, so a
 * queue created while no hub ran loses nothing). */
static int join_streams(kiln_webhooks_t *w)
{
    redisReply *r = redisCommand(w->broker->redis, "SMEMBERS kiln:services");
    if (!r)
        return KILN_EREDIS;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const char *service = r->element[i]->str;
        if (json_object_get(w->streams, service) || !kiln_ops_service_name_ok(service))
            continue;
        redisReply *g =
            redisCommand(w->broker->redis, "XGROUP CREATE kiln:{%s}:events %s 0 MKSTREAM", service,
                         KILN_WEBHOOK_GROUP);
        bool ok = g && (g->type != REDIS_REPLY_ERROR || strstr(g->str, "BUSYGROUP"));
        if (g)
            freeReplyObject(g);
        if (ok)
            json_object_set_new(w->streams, service, json_true());
    }
    freeReplyObject(r);
    return 0;
}

/* Takes over events other consumers read but left unacknowledged for
 * reclaim_idle_ms (a hub that died), then handles them. */
static void reclaim(kiln_webhooks_t *w, const char *stream)
{
    redisReply *r = redisCommand(w->broker->redis, "XAUTOCLAIM %s %s %s %ld 0-0 COUNT %d", stream,
                                 KILN_WEBHOOK_GROUP, w->consumer, w->reclaim_idle_ms, READ_COUNT);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
        r->element[1]->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->element[1]->elements && !stopping(w); i++)
            handle_entry(w, stream, r->element[1]->element[i]);
    if (r)
        freeReplyObject(r);
}

/* One XREADGROUP over every stream: new events, or (read_backlog) this
 * consumer's own unacknowledged ones. */
static void read_once(kiln_webhooks_t *w)
{
    size_t n = json_object_size(w->streams);
    kiln_argv_t a;
    kiln_argv_init(&a);
    kiln_argv_addf(&a, "XREADGROUP");
    kiln_argv_addf(&a, "GROUP");
    kiln_argv_addf(&a, "%s", KILN_WEBHOOK_GROUP);
    kiln_argv_addf(&a, "%s", w->consumer);
    kiln_argv_addf(&a, "COUNT");
    kiln_argv_addf(&a, "%d", READ_COUNT);
    if (!w->read_backlog) {
        kiln_argv_addf(&a, "BLOCK");
        kiln_argv_addf(&a, "%d", READ_BLOCK_MS);
    }
    kiln_argv_addf(&a, "STREAMS");
    const char *service;
    json_t *unused;
    json_object_foreach(w->streams, service, unused)
        kiln_argv_addf(&a, "kiln:{%s}:events", service);
    for (size_t i = 0; i < n; i++)
        kiln_argv_addf(&a, "%s", w->read_backlog ? "0" : ">");
    redisReply *r = kiln_broker_command(w->broker, &a, NULL);
    if (!r) {
        /* NOGROUP (a stream deleted and made again) or a lost connection:
         * join the streams afresh after a short pause. */
        json_object_clear(w->streams);
        pause_ms(w, REDIS_RETRY_MS / 5);
        return;
    }
    bool any = false;
    for (size_t s = 0; r && r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        redisReply *stream = r->element[s], *entries = stream->element[1];
        for (size_t e = 0; e < entries->elements && !stopping(w); e++, any = true)
            handle_entry(w, stream->element[0]->str, entries->element[e]);
    }
    if (w->read_backlog && !any)
        w->read_backlog = false; /* the backlog is done: read new events from now on */
    if (r)
        freeReplyObject(r);
}

static void *loop_main(void *arg)
{
    kiln_webhooks_t *w = arg;
    while (!stopping(w)) {
        if (!w->broker) {
            kiln_broker_options_t opts = {.redis_url = w->redis_url, .connect_timeout_ms = 2000};
            kiln_err_t err = {0};
            if (kiln_broker_connect(&opts, &w->broker, &err) != 0) {
                pause_ms(w, REDIS_RETRY_MS);
                continue;
            }
            w->read_backlog = true;
        }
        if (join_streams(w) != 0 || w->broker->redis->err) {
            kiln_broker_free(w->broker);
            w->broker = NULL;
            continue;
        }
        if (json_object_size(w->streams) == 0) {
            pause_ms(w, READ_BLOCK_MS);
            continue;
        }
        const char *service;
        json_t *unused;
        json_object_foreach(w->streams, service, unused)
        {
            char stream[128];
            snprintf(stream, sizeof stream, "kiln:{%s}:events", service);
            reclaim(w, stream);
        }
        read_once(w);
    }
    return NULL;
}

static int check_options(const kiln_webhook_options_t *o, kiln_err_t *err)
{
    if (!o->secret || !*o->secret)
        return kiln_err_set(err, KILN_EINVAL,
                            "webhooks.secret: expected a shared secret to sign with, got none");
    if (o->default_url &&
        (!kiln_url_is_http(o->default_url) || strlen(o->default_url) > KILN_WEBHOOK_URL_MAX))
        return kiln_err_set(err, KILN_EINVAL,
                            "webhooks.default_url: expected an http:// or https:// URL");
    if (o->max_attempts < 0 || o->max_attempts > KILN_WEBHOOK_ATTEMPTS_MAX)
        return kiln_err_set(err, KILN_EINVAL, "webhooks.max_attempts: expected 1-%d, got %d",
                            KILN_WEBHOOK_ATTEMPTS_MAX, o->max_attempts);
    if (o->backoff_base_ms < 0 || o->backoff_max_ms < 0 || o->timeout_ms < 0 ||
        o->reclaim_idle_ms < 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "webhooks: backoff_base_ms, backoff_max_ms, timeout_ms and "
                            "reclaim_idle_ms must be >= 0 (0 = default)");
    kiln_redis_url_t url;
    return kiln_redis_url_parse(o->redis_url, &url, err);
}

int kiln_webhooks_start(const kiln_webhook_options_t *o, kiln_webhooks_t **out, kiln_err_t *err)
{
    *out = NULL;
    int rc = check_options(o, err);
    if (rc)
        return rc;
    kiln_curl_global_init();
    kiln_webhooks_t *w = calloc(1, sizeof *w);
    char host[64] = "hub", consumer[128];
    gethostname(host, sizeof host - 1);
    snprintf(consumer, sizeof consumer, "%s-%d", host, (int)getpid());
    if (!w)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    w->redis_url = strdup(o->redis_url);
    w->default_url = o->default_url ? strdup(o->default_url) : NULL;
    w->secret = strdup(o->secret);
    w->consumer = strdup(o->consumer ? o->consumer : consumer);
    w->max_attempts = o->max_attempts ? o->max_attempts : 5;
    w->backoff_base_ms = o->backoff_base_ms ? o->backoff_base_ms : 1000;
    w->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : 60000;
    w->timeout_ms = o->timeout_ms ? o->timeout_ms : 10000;
    w->reclaim_idle_ms = o->reclaim_idle_ms ? o->reclaim_idle_ms : 300000;
    w->streams = json_object();
    w->seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (!w->redis_url || !w->secret || !w->consumer || !w->streams ||
        pthread_create(&w->thread, NULL, loop_main, w) != 0) {
        w->thread = 0;
        kiln_webhooks_stop(w);
        return kiln_err_set(err, KILN_ENOMEM, "cannot start the webhook delivery thread");
    }
    *out = w;
    return 0;
}

void kiln_webhooks_stop(kiln_webhooks_t *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->thread)
        pthread_join(w->thread, NULL);
    kiln_broker_free(w->broker);
    json_decref(w->streams);
    if (w->secret)
        memset(w->secret, 0, strlen(w->secret));
    free(w->secret);
    free(w->redis_url);
    free(w->default_url);
    free(w->consumer);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
