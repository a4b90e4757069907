/*
 * The status/event publisher: a thread with a synchronous Redis connection
 * and a queue. The loop thread only appends under a mutex.
 */
#include "kiln/publisher.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/ops.h"
#include "core/deadline.h"
#include "core/redis_url.h"
#include "kiln/log.h"

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000

typedef struct event {
    char *fields_json; /* type, time and fields serialized */
    char type[48];
    long long time_ms;
    struct event *next;
} event_t;

struct kiln_publisher {
    kiln_redis_url_t url;
    char machine_id[129];
    long status_ttl_ms;
    long stream_max_len;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* work arrived or stop */
    pthread_cond_t drained; /* the queue went empty */
    bool held;              /* queue, write nothing (kiln_publisher_hold) */
    int flushers;           /* kiln_publisher_flush calls waiting: they write even when held */
    char *status;           /* latest status to write, or NULL */
    event_t *head, *tail;
    size_t queued;
    unsigned long dropped;
    bool busy; /* the thread holds items being written */
    bool stop;

    redisContext *redis; /* publisher thread only */
    long backoff_ms;
};

static void wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, long ms)
{
    struct timespec until = kiln_deadline_after_ms(CLOCK_REALTIME, ms);
    pthread_cond_timedwait(cv, mu, &until);
}

static bool ensure_connected(kiln_publisher_t *p)
{
    if (p->redis && !p->redis->err)
        return true;
    if (p->redis)
        redisFree(p->redis);
    struct timeval tv = {1, 0};
    p->redis = redisConnectWithTimeout(p->url.host, p->url.port, tv);
    kiln_err_t err = {0};
    if (!p->redis || p->redis->err || kiln_redis_url_prepare(p->redis, &p->url, &err) != 0) {
        if (p->redis)
            redisFree(p->redis);
        p->redis = NULL;
        return false;
    }
    redisSetTimeout(p->redis, tv);
    return true;
}

static bool write_status(kiln_publisher_t *p, const char *status)
{
    char key[160], ttl[32], now[32];
    snprintf(key, sizeof key, "kiln:machine:%s", p->machine_id);
    snprintf(ttl, sizeof ttl, "%ld", p->status_ttl_ms);
    snprintf(now, sizeof now, "%lld", kiln_ops_wall_ms());
    const char *set[] = {"SET", key, status, "PX", ttl};
    const char *zadd[] = {"ZADD", "kiln:machines", now, p->machine_id};
    redisAppendCommandArgv(p->redis, 5, set, NULL);
    redisAppendCommandArgv(p->redis, 4, zadd, NULL);
    bool ok = true;
    for (int i = 0; i < 2; i++) {
        redisReply *r = NULL;
        if (redisGetReply(p->redis, (void **)&r) != REDIS_OK || !r)
            return false;
        ok = ok && r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
    }
    return ok;
}

static bool write_event(kiln_publisher_t *p, const event_t *e)
{
    char maxlen[32], time_ms[32];
    snprintf(maxlen, sizeof maxlen, "%ld", p->stream_max_len);
    snprintf(time_ms, sizeof time_ms, "%lld", e->time_ms);
    const char *argv[] = {"XADD",    KILN_MACHINE_EVENTS_STREAM,
                          "MAXLEN",  "~",
                          maxlen,    "*",
                          "machine", p->machine_id,
                          "type",    e->type,
                          "time",    time_ms,
                          "fields",  e->fields_json};
    redisReply *r = redisCommandArgv(p->redis, 14, argv, NULL);
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Writes the status and the queued events in order; on a failure puts
 * back what was not written. Called with mu unlocked. */
static bool write_batch(kiln_publisher_t *p, char *status, event_t *events)
{
    bool ok = ensure_connected(p);
    if (ok && status)
        ok = write_status(p, status);
    event_t *e = events;
    while (ok && e) {
        ok = write_event(p, e);
        if (ok) {
            event_t *next = e->next;
            free(e->fields_json);
            free(e);
            e = next;
        }
    }
    pthread_mutex_lock(&p->mu);
    if (!ok) {
        if (status && !p->status) { /* a newer status wins over a failed one */
            p->status = status;
            status = NULL;
        }
        if (e) { /* unwritten events go back in front, order kept */
            event_t *last = e;
            size_t n = 1;
            while (last->next) {
                last = last->next;
                n++;
            }
            last->next = p->head;
            if (!p->head)
                p->tail = last;
            p->head = e;
            p->queued += n;
        }
    }
    p->busy = false;
    pthread_mutex_unlock(&p->mu);
    free(status);
    return ok;
}

static void *publisher_main(void *arg)
{
    kiln_publisher_t *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        if (!p->status && !p->head) {
            pthread_cond_broadcast(&p->drained);
            pthread_cond_wait(&p->wake, &p->mu);
            continue;
        }
        if (p->held && !p->flushers) {
            pthread_cond_wait(&p->wake, &p->mu);
            continue;
        }
        char *status = p->status;
        event_t *events = p->head;
        p->status = NULL;
        p->head = p->tail = NULL;
        p->queued = 0;
        p->busy = true;
        pthread_mutex_unlock(&p->mu);
        bool ok = write_batch(p, status, events);
        pthread_mutex_lock(&p->mu);
        if (!ok && !p->stop) {
            p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : RECONNECT_MIN_MS;
            if (p->backoff_ms > RECONNECT_MAX_MS)
                p->backoff_ms = RECONNECT_MAX_MS;
            wait_ms(&p->wake, &p->mu, p->backoff_ms);
        } else {
            p->backoff_ms = 0;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int kiln_publisher_new(const char *redis_url, const char *machine_id, long status_ttl_ms,
                       long stream_max_len, kiln_publisher_t **out, kiln_err_t *err)
{
    *out = NULL;
    kiln_publisher_t *p = calloc(1, sizeof *p);
    if (!p)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    if (kiln_redis_url_parse(redis_url, &p->url, err) != 0) {
        free(p);
        return KILN_EINVAL;
    }
    snprintf(p->machine_id, sizeof p->machine_id, "%s", machine_id);
    p->status_ttl_ms = status_ttl_ms > 0 ? status_ttl_ms : 45000;
    p->stream_max_len = stream_max_len > 0 ? stream_max_len : 100000;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->drained, NULL);
    if (pthread_create(&p->thread, NULL, publisher_main, p) != 0) {
        free(p);
        return kiln_err_set(err, KILN_ENOMEM, "cannot start the status publisher thread");
    }
    *out = p;
    return 0;
}

void kiln_publisher_status(kiln_publisher_t *p, json_t *status)
{
    char *text = json_dumps(status, JSON_COMPACT);
    if (!text)
        return;
    pthread_mutex_lock(&p->mu);
    free(p->status);
    p->status = text;
    if (!p->held)
        pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

void kiln_publisher_event(kiln_publisher_t *p, const char *type, json_t *fields)
{
    event_t *e = calloc(1, sizeof *e);
    if (!e)
        return;
    snprintf(e->type, sizeof e->type, "%s", type);
    e->time_ms = kiln_ops_wall_ms();
    e->fields_json = fields ? json_dumps(fields, JSON_COMPACT) : strdup("{}");
    if (!e->fields_json) {
        free(e);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (p->queued >= KILN_PUBLISHER_QUEUE_MAX && p->head) {
        event_t *oldest = p->head;
        p->head = oldest->next;
        if (!p->head)
            p->tail = NULL;
        free(oldest->fields_json);
        free(oldest);
        p->queued--;
        p->dropped++;
    }
    if (p->tail)
        p->tail->next = e;
    else
        p->head = e;
    p->tail = e;
    p->queued++;
    if (!p->held)
        pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

void kiln_publisher_hold(kiln_publisher_t *p, bool hold)
{
    pthread_mutex_lock(&p->mu);
    p->held = hold;
    if (!hold && (p->status || p->head))
        pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

int kiln_publisher_flush(kiln_publisher_t *p, long timeout_ms, kiln_err_t *err)
{
    long long deadline = kiln_ops_wall_ms() + timeout_ms;
    pthread_mutex_lock(&p->mu);
    p->flushers++;
    while ((p->status || p->head || p->busy) && kiln_ops_wall_ms() < deadline) {
        pthread_cond_signal(&p->wake);
        wait_ms(&p->drained, &p->mu, 50);
    }
    p->flushers--;
    size_t left = p->queued + (p->status ? 1 : 0) + (p->busy ? 1 : 0);
    pthread_mutex_unlock(&p->mu);
    if (left)
        return kiln_err_set(err, KILN_ETIMEOUT,
                            "status publisher: %zu items not written to redis within %ld ms", left,
                            timeout_ms);
    return 0;
}

void kiln_publisher_free(kiln_publisher_t *p, bool remove_status)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    if (remove_status && ensure_connected(p)) {
        redisReply *r = redisCommand(p->redis, "DEL kiln:machine:%s", p->machine_id);
        if (r)
            freeReplyObject(r);
    }
    if (p->redis)
        redisFree(p->redis);
    while (p->head) {
        event_t *next = p->head->next;
        free(p->head->fields_json);
        free(p->head);
        p->head = next;
    }
    free(p->status);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->drained);
    free(p);
}

unsigned long kiln_publisher_dropped(kiln_publisher_t *p)
{
    pthread_mutex_lock(&p->mu);
    unsigned long dropped = p->dropped;
    pthread_mutex_unlock(&p->mu);
    return dropped;
}
