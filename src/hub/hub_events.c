/*
 * Live events: one reader thread per hub follows every queue's event
 * stream (kiln:{service}:events) with XREAD and hands each event to the
 * subscribers whose filters it passes. Each subscriber has a bounded queue;
 * one that falls KILN_HUB_CLIENT_QUEUE_MAX events behind is dropped with a
 * reason rather than slowing the others.
 *
 * The cursor. Each event carries a cursor "svc=ID,svc2=ID,..." (per-stream
 * positions, stream ids of Redis) valid after that event. A subscriber
 * created with a cursor first gets the events after it, read from the
 * streams with XRANGE up to where the reader stood when it subscribed, then
 * the live ones; a stream the cursor does not name is read from its start
 * (a queue created while the client was away). So a client that resumes
 * with its last cursor, on this hub, another hub or a restarted one, misses
 * nothing the streams still hold and sees nothing twice.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/broker_internal.h"
#include "core/deadline.h"
#include "hub/hub_internal.h"
#include "kiln/log.h"

#define COMPONENT        "hub-events"
#define READ_BLOCK_MS    1000
#define READ_COUNT       1000
#define STREAMS_MAX      1024
#define WATCHED_JOBS_MAX 1024
/* How often an active reader looks for queues created since its last look. */
#define FOLLOW_EVERY_MS 250

typedef struct stream_pos {
    char service[KILN_SERVICE_NAME_MAX + 1];
    char id[48];
} stream_pos_t;

typedef struct node {
    json_t *event;
    struct node *next;
} node_t;

struct hub_sub {
    hub_events_t *ev;
    hub_filter_t filter;
    stream_pos_t *floor; /* the resume cursor: live events at or before it are skipped */
    size_t n_floor;
    node_t *head, *tail;
    size_t count;
    bool closed;
    const char *reason;
    /* qmu guards the queue (head, tail, count), closed and reason, and is
     * what cond waits with: a writer woken for an event takes only its own
     * lock, not the hub-wide mu the reader holds while it hands the event
     * to every subscriber. Lock order: ev->mu, then qmu. */
    pthread_mutex_t qmu;
    pthread_cond_t cond;
    char **watched;
    size_t n_watched;
    hub_sub_t *prev, *next;
    bool linked; /* in the hub's list */
};

struct hub_events {
    kiln_hub_t *hub;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t stop_cond; /* stop, or a subscriber ending the reader's idle */
    bool stop;
    /* With no subscriber the reader reads nothing (idle) and its positions
     * go stale; the first subscriber moves them to the streams' ends
     * before it takes its snapshot. Under mu. */
    bool idle;
    long long last_follow_ms;
    stream_pos_t *streams; /* the reader's positions; under mu */
    size_t n_streams;
    hub_sub_t *subs;
    long n_subs;
    unsigned long long delivered, dropped;
    kiln_broker_t *redis; /* the reader's own connection */
    hub_machines_t *machines;
};

/* ---- stream ids and cursors -------------------------------------------------- */

static bool parse_stream_id(const char *text, unsigned long long *ms, unsigned long long *seq)
{
    char *end;
    if (!(*text >= '0' && *text <= '9'))
        return false;
    errno = 0;
    *ms = strtoull(text, &end, 10);
    *seq = 0;
    if (*end == '-') {
        const char *s = end + 1;
        if (!(*s >= '0' && *s <= '9'))
            return false;
        *seq = strtoull(s, &end, 10);
    }
    return *end == '\0' && errno == 0;
}

/* <0, 0, >0 as stream id a is before, equal to, after b. */
static int compare_ids(const char *a, const char *b)
{
    unsigned long long am, as, bm, bs;
    parse_stream_id(a, &am, &as);
    parse_stream_id(b, &bm, &bs);
    return am != bm ? (am < bm ? -1 : 1) : as != bs ? (as < bs ? -1 : 1) : 0;
}

static stream_pos_t *find_pos(const stream_pos_t *list, size_t n, const char *service)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].service, service) == 0)
            return (stream_pos_t *)&list[i];
    }
    return NULL;
}

static char *format_cursor(const stream_pos_t *list, size_t n)
{
    size_t cap = n * (KILN_SERVICE_NAME_MAX + 50) + 1;
    char *out = malloc(cap);
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; out && i < n; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%s=%s", i ? "," : "", list[i].service,
                                 list[i].id);
    return out;
}

/* Parses "svc=ID,..." into a new array. false when malformed. */
static bool parse_cursor(const char *text, stream_pos_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t len = strlen(text);
    if (len > KILN_HUB_CURSOR_MAX)
        return false;
    size_t max = 1;
    for (const char *c = text; *c; c++)
        max += *c == ',';
    stream_pos_t *list = calloc(max, sizeof *list);
    if (!list)
        return false;
    const char *p = text;
    while (*p) {
        size_t item = strcspn(p, ","), eq = strcspn(p, "=");
        unsigned long long ms, seq;
        if (eq >= item || eq == 0 || eq > KILN_SERVICE_NAME_MAX || item - eq - 1 >= 48)
            goto bad;
        stream_pos_t *pos = &list[*n];
        snprintf(pos->service, sizeof pos->service, "%.*s", (int)eq, p);
        snprintf(pos->id, sizeof pos->id, "%.*s", (int)(item - eq - 1), p + eq + 1);
        if (strspn(pos->service, "abcdefghijklmnopqrstuvwxyz0123456789_-") != eq ||
            !parse_stream_id(pos->id, &ms, &seq) || find_pos(list, *n, pos->service))
            goto bad;
        (*n)++;
        p += item + (p[item] == ',');
    }
    *out = list;
    return true;
bad:
    free(list);
    *n = 0;
    return false;
}

/* ---- events -------------------------------------------------------------------- */

/* An event object from one stream entry: {"id","service","job","type",
 * "state",...the entry's other fields}. */
static json_t *event_from_entry(const char *service, const redisReply *entry)
{
    json_t *event = json_pack("{s:s, s:s}", "id", entry->element[0]->str, "service", service);
    const redisReply *fields = entry->element[1];
    for (size_t f = 0; event && f + 1 < fields->elements; f += 2)
        json_object_set_new(event, fields->element[f]->str,
                            json_string(fields->element[f + 1]->str));
    return event;
}

static bool sub_watches(const hub_sub_t *sub, const char *job)
{
    for (size_t i = 0; job && i < sub->n_watched; i++) {
        if (strcmp(sub->watched[i], job) == 0)
            return true;
    }
    return false;
}

static bool filter_passes(const hub_sub_t *sub, json_t *event)
{
    const hub_filter_t *f = &sub->filter;
    const char *job = json_string_value(json_object_get(event, "job"));
    const char *machine = json_string_value(json_object_get(event, "machine"));
    if (f->job[0] && (!job || strcmp(job, f->job) != 0))
        return false;
    if (f->service[0] && strcmp(json_string_value(json_object_get(event, "service")), f->service))
        return false;
    if (f->machine[0] && (!machine || strcmp(machine, f->machine) != 0))
        return false;
    return !f->own_jobs_only || sub_watches(sub, job);
}

/* Queues event (a new reference is taken) for sub. Called with mu held. */
static void enqueue_locked(hub_events_t *ev, hub_sub_t *sub, json_t *event)
{
    node_t *n = malloc(sizeof *n);
    if (!n)
        return;
    n->event = json_incref(event);
    n->next = NULL;
    pthread_mutex_lock(&sub->qmu);
    if (!sub->closed && sub->count >= KILN_HUB_CLIENT_QUEUE_MAX) {
        sub->closed = true;
        sub->reason = "slow client: more than "
                      "4096"
                      " events waiting; reconnect with the "
                      "last cursor";
        ev->dropped++;
        pthread_cond_signal(&sub->cond);
    }
    bool queued = !sub->closed;
    if (queued) {
        if (sub->tail)
            sub->tail->next = n;
        else
            sub->head = n;
        sub->tail = n;
        sub->count++;
        ev->delivered++;
        pthread_cond_signal(&sub->cond);
    }
    pthread_mutex_unlock(&sub->qmu);
    if (!queued) {
        json_decref(n->event);
        free(n);
    }
}

/* Hands one live event to every subscriber. Called with mu held. */
static void dispatch_locked(hub_events_t *ev, json_t *event, const char *service, const char *id)
{
    for (hub_sub_t *sub = ev->subs; sub; sub = sub->next) {
        const stream_pos_t *floor = find_pos(sub->floor, sub->n_floor, service);
        if (floor && compare_ids(id, floor->id) <= 0)
            continue;
        if (filter_passes(sub, event))
            enqueue_locked(ev, sub, event);
    }
}

/* ---- the reader ------------------------------------------------------------------ */

/* The id of the last entry in service's stream into id ("0-0" when the
 * stream is empty). */
static int stream_end(kiln_broker_t *conn, const char *service, char id[48], kiln_err_t *err)
{
    redisReply *r = redisCommand(conn->redis, "XREVRANGE kiln:{%s}:events + - COUNT 1", service);
    if (!r)
        return kiln_err_set(err, KILN_EREDIS, "redis: %s", conn->redis->errstr);
    snprintf(id, 48, "0-0");
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1)
        snprintf(id, 48, "%s", r->element[0]->element[0]->str);
    freeReplyObject(r);
    return 0;
}

/* Follows every queue's stream, through conn. With at_end, every stream
 * (followed already or not) is followed from its current end: the reader
 * waking from idle, when what it skipped is nobody's live event. Without,
 * only the streams not followed yet are added, from their start (a queue
 * created since the last look). Called with mu held. */
static int follow_streams_locked(hub_events_t *ev, kiln_broker_t *conn, bool at_end,
                                 kiln_err_t *err)
{
    json_t *services = NULL;
    int rc = kiln_broker_list_services(conn, &services, err);
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        const char *name = json_string_value(svc);
        stream_pos_t *pos = find_pos(ev->streams, ev->n_streams, name);
        if (!pos && ev->n_streams < STREAMS_MAX) {
            stream_pos_t *grown = realloc(ev->streams, (ev->n_streams + 1) * sizeof *grown);
            if (!grown)
                break;
            ev->streams = grown;
            pos = &grown[ev->n_streams++];
            *pos = (stream_pos_t){.id = "0-0"};
            snprintf(pos->service, sizeof pos->service, "%s", name);
        }
        if (pos && at_end && (rc = stream_end(conn, name, pos->id, err)) != 0)
            break;
    }
    json_decref(services);
    ev->last_follow_ms = kiln_ops_monotonic_ms();
    return rc;
}

static void handle_reply(hub_events_t *ev, redisReply *r)
{
    for (size_t s = 0; r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        const char *key = r->element[s]->element[0]->str;
        const char *open = strchr(key, '{'), *close = strchr(key, '}');
        if (!open || !close || close - open - 1 > KILN_SERVICE_NAME_MAX)
            continue;
        char service[KILN_SERVICE_NAME_MAX + 1];
        snprintf(service, sizeof service, "%.*s", (int)(close - open - 1), open + 1);
        redisReply *entries = r->element[s]->element[1];
        for (size_t e = 0; e < entries->elements; e++) {
            json_t *event = event_from_entry(service, entries->element[e]);
            if (event)
                hub_machines_annotate(ev->machines, ev->redis, event);
            pthread_mutex_lock(&ev->mu);
            stream_pos_t *pos = find_pos(ev->streams, ev->n_streams, service);
            if (pos)
                snprintf(pos->id, sizeof pos->id, "%s", entries->element[e]->element[0]->str);
            char *cursor = format_cursor(ev->streams, ev->n_streams);
            if (event && cursor) {
                json_object_set_new(event, "cursor", json_string(cursor));
                dispatch_locked(ev, event, service, entries->element[e]->element[0]->str);
            }
            pthread_mutex_unlock(&ev->mu);
            free(cursor);
            json_decref(event);
        }
    }
}

/* One XREAD over every followed stream. */
static int read_once(hub_events_t *ev, kiln_err_t *err)
{
    pthread_mutex_lock(&ev->mu);
    size_t n = ev->n_streams;
    kiln_argv_t a;
    kiln_argv_init(&a);
    kiln_argv_add(&a, "XREAD", SIZE_MAX);
    kiln_argv_add(&a, "COUNT", SIZE_MAX);
    kiln_argv_addf(&a, "%d", READ_COUNT);
    kiln_argv_add(&a, "BLOCK", SIZE_MAX);
    kiln_argv_addf(&a, "%d", READ_BLOCK_MS);
    kiln_argv_add(&a, "STREAMS", SIZE_MAX);
    for (size_t i = 0; i < n; i++)
        kiln_argv_addf(&a, "kiln:{%s}:events", ev->streams[i].service);
    for (size_t i = 0; i < n; i++)
        kiln_argv_add(&a, ev->streams[i].id, SIZE_MAX);
    pthread_mutex_unlock(&ev->mu);
    if (n == 0) {
        kiln_argv_free(&a);
        struct timespec ts = {0, READ_BLOCK_MS * 1000000L / 4};
        nanosleep(&ts, NULL);
        return 0;
    }
    redisReply *r = kiln_broker_command(ev->redis, &a, err);
    if (!r)
        return KILN_EREDIS;
    if (r->type == REDIS_REPLY_ERROR) {
        int rc = kiln_err_set(err, KILN_EREDIS, "XREAD: %s", r->str);
        freeReplyObject(r);
        return rc;
    }
    handle_reply(ev, r);
    freeReplyObject(r);
    return 0;
}

static bool should_stop(hub_events_t *ev, long wait_ms)
{
    pthread_mutex_lock(&ev->mu);
    if (wait_ms > 0 && !ev->stop) {
        struct timespec ts = kiln_deadline_after_ms(CLOCK_REALTIME, wait_ms);
        pthread_cond_timedwait(&ev->stop_cond, &ev->mu, &ts);
    }
    bool stop = ev->stop;
    pthread_mutex_unlock(&ev->mu);
    return stop;
}

/* While nobody subscribes the reader waits (idle) instead of reading: a
 * submit's event then costs neither Redis nor the hub anything here. */
static bool wait_while_idle(hub_events_t *ev)
{
    pthread_mutex_lock(&ev->mu);
    bool idle = ev->n_subs == 0 && !ev->stop;
    if (idle) {
        ev->idle = true;
        struct timespec ts = kiln_deadline_after_ms(CLOCK_REALTIME, READ_BLOCK_MS);
        pthread_cond_timedwait(&ev->stop_cond, &ev->mu, &ts);
    }
    pthread_mutex_unlock(&ev->mu);
    return idle;
}

/* Looks for new queues when the last look is FOLLOW_EVERY_MS old. */
static int follow_new_streams(hub_events_t *ev, kiln_err_t *err)
{
    pthread_mutex_lock(&ev->mu);
    int rc = kiln_ops_monotonic_ms() - ev->last_follow_ms >= FOLLOW_EVERY_MS
                 ? follow_streams_locked(ev, ev->redis, false, err)
                 : 0;
    pthread_mutex_unlock(&ev->mu);
    return rc;
}

static void *reader_main(void *arg)
{
    hub_events_t *ev = arg;
    long backoff_ms = 100;
    while (!should_stop(ev, 0)) {
        if (wait_while_idle(ev))
            continue;
        kiln_err_t err = {0};
        int rc = ev->redis ? 0 : kiln_broker_connect(&ev->hub->broker_opts, &ev->redis, &err);
        if (rc == 0)
            rc = follow_new_streams(ev, &err);
        if (rc == 0)
            rc = read_once(ev, &err);
        if (rc == 0) {
            backoff_ms = 100;
            continue;
        }
        /* Redis went away: keep the positions, reconnect with backoff. */
        kiln_log(KILN_LOG_WARN, COMPONENT, NULL, NULL, "event reader: %s; retrying in %ld ms",
                 err.msg, backoff_ms);
        kiln_broker_free(ev->redis);
        ev->redis = NULL;
        if (should_stop(ev, backoff_ms))
            break;
        backoff_ms = backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2;
    }
    return NULL;
}

int hub_events_start(kiln_hub_t *hub, kiln_err_t *err)
{
    hub_events_t *ev = calloc(1, sizeof *ev);
    if (!ev)
        return kiln_err_set(err, KILN_ENOMEM, "hub: out of memory");
    ev->hub = hub;
    ev->idle = true;
    pthread_mutex_init(&ev->mu, NULL);
    pthread_cond_init(&ev->stop_cond, NULL);
    hub->events = ev;
    ev->machines = hub_machines_new();
    int rc = ev->machines ? 0 : kiln_err_set(err, KILN_ENOMEM, "hub: out of memory");
    if (rc == 0)
        rc = kiln_broker_connect(&hub->broker_opts, &ev->redis, err);
    if (rc == 0 && pthread_create(&ev->thread, NULL, reader_main, ev) != 0)
        rc = kiln_err_set(err, KILN_EIO, "hub: cannot start the event reader thread");
    ev->started = rc == 0;
    if (rc)
        hub_events_stop(hub);
    return rc;
}

void hub_events_shutdown(kiln_hub_t *hub)
{
    hub_events_t *ev = hub->events;
    if (!ev)
        return;
    pthread_mutex_lock(&ev->mu);
    ev->stop = true;
    pthread_cond_broadcast(&ev->stop_cond);
    for (hub_sub_t *sub = ev->subs; sub; sub = sub->next) {
        pthread_mutex_lock(&sub->qmu);
        sub->closed = true;
        sub->reason = "the hub is shutting down; reconnect with the last cursor";
        pthread_cond_signal(&sub->cond);
        pthread_mutex_unlock(&sub->qmu);
    }
    pthread_mutex_unlock(&ev->mu);
    if (ev->started)
        pthread_join(ev->thread, NULL);
    ev->started = false;
}

void hub_events_stop(kiln_hub_t *hub)
{
    hub_events_t *ev = hub->events;
    if (!ev)
        return;
    hub_events_shutdown(hub);
    kiln_broker_free(ev->redis);
    hub_machines_free(ev->machines);
    free(ev->streams);
    pthread_cond_destroy(&ev->stop_cond);
    pthread_mutex_destroy(&ev->mu);
    free(ev);
    hub->events = NULL;
}

bool hub_events_room(kiln_hub_t *hub)
{
    hub_events_t *ev = hub->events;
    pthread_mutex_lock(&ev->mu);
    bool room = ev->n_subs + HUB_THREADS_SPARE < hub->threads;
    pthread_mutex_unlock(&ev->mu);
    return room;
}

void hub_events_counts(kiln_hub_t *hub, long *clients, unsigned long long *events,
                       unsigned long long *dropped)
{
    hub_events_t *ev = hub->events;
    pthread_mutex_lock(&ev->mu);
    *clients = ev->n_subs;
    *events = ev->delivered;
    *dropped = ev->dropped;
    pthread_mutex_unlock(&ev->mu);
}

/* ---- subscribers ------------------------------------------------------------------ */

typedef struct catch_up_list {
    node_t *head, *tail;
    size_t count;
} catch_up_list_t;

/* Reads stream service's events after from up to to (inclusive) into
 * out, updating the catch-up cursor map. */
static int catch_up_stream(kiln_broker_t *b, hub_machines_t *machines, hub_sub_t *sub,
                           const char *only_job, const char *service, const char *from,
                           const char *to, stream_pos_t **map, size_t *n_map, catch_up_list_t *out,
                           kiln_err_t *err)
{
    char start[64];
    snprintf(start, sizeof start, "(%s", from);
    stream_pos_t *pos = find_pos(*map, *n_map, service);
    if (!pos) {
        stream_pos_t *grown = realloc(*map, (*n_map + 1) * sizeof *grown);
        if (!grown)
            return kiln_err_set(err, KILN_ENOMEM, "out of memory");
        *map = grown;
        pos = &grown[(*n_map)++];
        snprintf(pos->service, sizeof pos->service, "%s", service);
        snprintf(pos->id, sizeof pos->id, "%s", from);
    }
    for (;;) {
        redisReply *r = redisCommand(b->redis, "XRANGE kiln:{%s}:events %s %s COUNT %d", service,
                                     start, to, READ_COUNT);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            int rc = kiln_err_set(err, KILN_EREDIS, "redis: reading kiln:{%s}:events: %s", service,
                                  r && r->type == REDIS_REPLY_ERROR ? r->str : b->redis->errstr);
            if (r)
                freeReplyObject(r);
            return rc;
        }
        size_t n = r->elements;
        for (size_t e = 0; e < n; e++) {
            json_t *event = event_from_entry(service, r->element[e]);
            if (event)
                hub_machines_annotate(machines, b, event);
            snprintf(pos->id, sizeof pos->id, "%s", r->element[e]->element[0]->str);
            char *cursor = format_cursor(*map, *n_map);
            const char *job = json_string_value(json_object_get(event, "job"));
            bool wanted = event && cursor && filter_passes(sub, event) &&
                          (!only_job || (job && strcmp(job, only_job) == 0));
            if (wanted && out->count++ < KILN_HUB_CLIENT_QUEUE_MAX) {
                json_object_set_new(event, "cursor", json_string(cursor));
                node_t *node = malloc(sizeof *node);
                if (node) {
                    node->event = json_incref(event);
                    node->next = NULL;
                    if (out->tail)
                        out->tail->next = node;
                    else
                        out->head = node;
                    out->tail = node;
                }
            }
            free(cursor);
            json_decref(event);
        }
        if (n > 0)
            snprintf(start, sizeof start, "(%s", r->element[n - 1]->element[0]->str);
        freeReplyObject(r);
        if (n < READ_COUNT)
            return 0;
    }
}

static void free_nodes(node_t *n)
{
    while (n) {
        node_t *next = n->next;
        json_decref(n->event);
        free(n);
        n = next;
    }
}

/* Reads what the subscriber missed after floor up to snap (of only_job,
 * when given), and puts it ahead of the live events queued meanwhile. */
static int catch_up(hub_events_t *ev, kiln_broker_t *b, hub_sub_t *sub, const char *only_job,
                    const stream_pos_t *floor, size_t n_floor, const stream_pos_t *snap,
                    size_t n_snap, kiln_err_t *err)
{
    stream_pos_t *map = NULL;
    size_t n_map = n_floor;
    if (n_map && !(map = malloc(n_map * sizeof *map)))
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    if (n_map)
        memcpy(map, floor, n_map * sizeof *map);
    catch_up_list_t list = {0};
    /* Replayed events name their machine as live ones do. */
    hub_machines_t *machines = hub_machines_new();
    int rc = machines ? 0 : kiln_err_set(err, KILN_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < n_snap; i++) {
        if (sub->filter.service[0] && strcmp(sub->filter.service, snap[i].service) != 0)
            continue;
        const stream_pos_t *from = find_pos(floor, n_floor, snap[i].service);
        const char *from_id = from ? from->id : "0-0";
        if (compare_ids(from_id, snap[i].id) < 0)
            rc = catch_up_stream(b, machines, sub, only_job, snap[i].service, from_id, snap[i].id,
                                 &map, &n_map, &list, err);
    }
    hub_machines_free(machines);
    free(map);
    pthread_mutex_lock(&ev->mu);
    pthread_mutex_lock(&sub->qmu);
    if (rc == 0 && list.count > KILN_HUB_CLIENT_QUEUE_MAX) {
        sub->closed = true;
        sub->reason = "the cursor is more than 4096 events behind; resume from a later cursor";
        ev->dropped++;
    } else if (rc == 0 && list.head) {
        list.tail->next = sub->head;
        if (!sub->head)
            sub->tail = list.tail;
        sub->head = list.head;
        sub->count += list.count;
        list.head = NULL;
        pthread_cond_signal(&sub->cond);
    }
    pthread_mutex_unlock(&sub->qmu);
    pthread_mutex_unlock(&ev->mu);
    free_nodes(list.head);
    return rc;
}

hub_sub_t *hub_sub_new(kiln_hub_t *hub, kiln_broker_t *broker, const hub_filter_t *filter,
                       const char *since, kiln_err_t *err)
{
    hub_events_t *ev = hub->events;
    hub_sub_t *sub = calloc(1, sizeof *sub);
    if (!sub) {
        kiln_err_set(err, KILN_ENOMEM, "out of memory");
        return NULL;
    }
    sub->ev = ev;
    sub->filter = *filter;
    pthread_mutex_init(&sub->qmu, NULL);
    pthread_cond_init(&sub->cond, NULL);
    bool resume = since && *since;
    if (resume && !parse_cursor(since, &sub->floor, &sub->n_floor)) {
        kiln_err_set(err, KILN_EINVAL,
                     "since: expected a cursor of an earlier event (service=STREAM-ID,...), "
                     "at most %d characters",
                     KILN_HUB_CURSOR_MAX);
        hub_sub_free(sub);
        return NULL;
    }
    pthread_mutex_lock(&ev->mu);
    if (ev->idle && !ev->stop) {
        /* Events the idle reader skipped are in the streams, for a cursor's
         * catch-up; the live ones start at the ends. */
        kiln_broker_t *conn = broker ? broker : hub_thread_broker(hub, err);
        if (!conn || follow_streams_locked(ev, conn, true, err) != 0) {
            pthread_mutex_unlock(&ev->mu);
            if (!broker)
                hub_broker_reset();
            hub_sub_free(sub);
            return NULL;
        }
        ev->idle = false;
        pthread_cond_broadcast(&ev->stop_cond);
    }
    stream_pos_t *snap = NULL;
    size_t n_snap = ev->n_streams;
    if (resume && n_snap && (snap = malloc(n_snap * sizeof *snap)))
        memcpy(snap, ev->streams, n_snap * sizeof *snap);
    bool stopping = ev->stop;
    if (!stopping) {
        sub->next = ev->subs;
        if (ev->subs)
            ev->subs->prev = sub;
        ev->subs = sub;
        ev->n_subs++;
        sub->linked = true;
    }
    pthread_mutex_unlock(&ev->mu);
    if (stopping) {
        free(snap);
        kiln_err_set(err, KILN_ECANCELLED, "the hub is shutting down");
        free(sub->floor);
        pthread_cond_destroy(&sub->cond);
        pthread_mutex_destroy(&sub->qmu);
        free(sub);
        return NULL;
    }
    int rc = resume && snap
                 ? catch_up(ev, broker, sub, NULL, sub->floor, sub->n_floor, snap, n_snap, err)
                 : 0;
    free(snap);
    if (rc) {
        hub_sub_free(sub);
        return NULL;
    }
    return sub;
}

char *hub_events_position(kiln_hub_t *hub, const char *service)
{
    hub_events_t *ev = hub->events;
    pthread_mutex_lock(&ev->mu);
    const stream_pos_t *pos = find_pos(ev->streams, ev->n_streams, service);
    char *out = strdup(pos ? pos->id : "0-0");
    pthread_mutex_unlock(&ev->mu);
    return out;
}

int hub_sub_watch_job(hub_sub_t *sub, kiln_broker_t *broker, const char *job_id, const char *from,
                      kiln_err_t *err)
{
    hub_events_t *ev = sub->ev;
    stream_pos_t floor = {.id = ""}, snap = {.id = "0-0"};
    snprintf(floor.service, sizeof floor.service, "%.*s", (int)strcspn(job_id, "."), job_id);
    snprintf(floor.id, sizeof floor.id, "%s", from);
    snap = (stream_pos_t){.id = "0-0"};
    memcpy(snap.service, floor.service, sizeof snap.service);
    pthread_mutex_lock(&ev->mu);
    char *copy = sub->n_watched < WATCHED_JOBS_MAX ? strdup(job_id) : NULL;
    char **grown = copy ? realloc(sub->watched, (sub->n_watched + 1) * sizeof *grown) : NULL;
    if (grown) {
        sub->watched = grown;
        grown[sub->n_watched++] = copy;
    }
    const stream_pos_t *pos = find_pos(ev->streams, ev->n_streams, floor.service);
    if (pos)
        snprintf(snap.id, sizeof snap.id, "%s", pos->id);
    pthread_mutex_unlock(&ev->mu);
    if (!grown) {
        free(copy);
        return kiln_err_set(err, KILN_ETOOBIG, "at most %d jobs are followed per connection",
                            WATCHED_JOBS_MAX);
    }
    /* Events of the job that the reader passed before the watch began. */
    return catch_up(ev, broker, sub, job_id, &floor, 1, &snap, 1, err);
}

int hub_sub_next(hub_sub_t *sub, long timeout_ms, json_t **event, const char **reason)
{
    *event = NULL;
    struct timespec ts = kiln_deadline_after_ms(CLOCK_REALTIME, timeout_ms);
    pthread_mutex_lock(&sub->qmu);
    while (!sub->head && !sub->closed) {
        if (pthread_cond_timedwait(&sub->cond, &sub->qmu, &ts) == ETIMEDOUT)
            break;
    }
    int rc = 0;
    if (sub->closed) {
        *reason = sub->reason;
        rc = -1;
    } else if (sub->head) {
        node_t *n = sub->head;
        sub->head = n->next;
        if (!sub->head)
            sub->tail = NULL;
        sub->count--;
        *event = n->event;
        free(n);
        rc = 1;
    }
    pthread_mutex_unlock(&sub->qmu);
    return rc;
}

void hub_sub_close(hub_sub_t *sub, const char *reason)
{
    pthread_mutex_lock(&sub->qmu);
    if (!sub->closed) {
        sub->closed = true;
        sub->reason = reason;
    }
    pthread_cond_signal(&sub->cond);
    pthread_mutex_unlock(&sub->qmu);
}

void hub_sub_free(hub_sub_t *sub)
{
    if (!sub)
        return;
    hub_events_t *ev = sub->ev;
    pthread_mutex_lock(&ev->mu);
    if (sub->linked) {
        if (sub->prev)
            sub->prev->next = sub->next;
        else
            ev->subs = sub->next;
        if (sub->next)
            sub->next->prev = sub->prev;
        ev->n_subs--;
    }
    pthread_mutex_unlock(&ev->mu);
    free_nodes(sub->head);
    for (size_t i = 0; i < sub->n_watched; i++)
        free(sub->watched[i]);
    free(sub->watched);
    free(sub->floor);
    pthread_cond_destroy(&sub->cond);
    pthread_mutex_destroy(&sub->qmu);
    free(sub);
}
