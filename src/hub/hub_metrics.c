/*
 * GET /metrics: the hub's own counters and the queues' depths in the
 * Prometheus text format 0.0.4 (checked with promtool in the tests).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/hub_internal.h"

typedef struct text_buf {
    char *data;
    size_t len, cap;
    bool failed;
} text_buf_t;

static void put(text_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(text_buf_t *b, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n =
            vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if (b->data && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
}

static void header(text_buf_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hub_counters(text_buf_t *b, kiln_hub_t *hub)
{
    static const char *const classes[] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    header(b, "kiln_hub_requests_total", "counter", "HTTP requests answered, by status class.");
    for (int i = 0; i < 6; i++)
        put(b, "kiln_hub_requests_total{class=\"%s\"} %llu\n", classes[i],
            (unsigned long long)atomic_load(&hub->requests[i]));
    header(b, "kiln_hub_jobs_submitted_total", "counter", "Jobs submitted through this hub.");
    put(b, "kiln_hub_jobs_submitted_total %llu\n",
        (unsigned long long)atomic_load(&hub->submitted));
    header(b, "kiln_hub_redis_errors_total", "counter",
           "Requests that found Redis unreachable or failing.");
    put(b, "kiln_hub_redis_errors_total %llu\n",
        (unsigned long long)atomic_load(&hub->redis_errors));
    long clients;
    unsigned long long delivered, dropped;
    hub_events_counts(hub, &clients, &delivered, &dropped);
    header(b, "kiln_hub_event_clients", "gauge", "Live event clients (SSE and WebSocket).");
    put(b, "kiln_hub_event_clients %ld\n", clients);
    header(b, "kiln_hub_events_delivered_total", "counter", "Events queued to live clients.");
    put(b, "kiln_hub_events_delivered_total %llu\n", delivered);
    header(b, "kiln_hub_event_clients_dropped_total", "counter",
           "Live clients dropped for falling too far behind.");
    put(b, "kiln_hub_event_clients_dropped_total %llu\n", dropped);
}

static void queue_gauges(text_buf_t *b, json_t *stats, json_t *workers)
{
    static const char *const states[] = {"pending", "running",   "delayed", "completed",
                                         "failed",  "cancelled", "dead"};
    header(b, "kiln_queue_jobs", "gauge", "Jobs per queue and state.");
    size_t i;
    json_t *row;
    json_array_foreach(stats, i, row)
    {
        for (size_t s = 0; s < 7; s++)
            put(b, "kiln_queue_jobs{service=\"%s\",state=\"%s\"} %lld\n",
                json_string_value(json_object_get(row, "service")), states[s],
                (long long)json_integer_value(json_object_get(row, states[s])));
    }
    header(b, "kiln_queue_oldest_pending_seconds", "gauge",
           "How long the oldest pending job of each queue has waited.");
    json_array_foreach(stats, i, row)
    {
        put(b, "kiln_queue_oldest_pending_seconds{service=\"%s\"} %.3f\n",
            json_string_value(json_object_get(row, "service")),
            (double)json_integer_value(json_object_get(row, "oldest_pending_ms")) / 1000.0);
    }
    header(b, "kiln_workers", "gauge", "Live workers registered in Redis.");
    put(b, "kiln_workers %zu\n", json_array_size(workers));
}

int hub_metrics_serve(hub_req_t *req)
{
    kiln_broker_t *broker = hub_broker(req);
    if (!broker)
        return 503;
    kiln_err_t err = {0};
    json_t *stats = NULL, *workers = NULL;
    if (kiln_broker_queue_stats(broker, &stats, &err) != 0 ||
        kiln_broker_list_workers(broker, &workers, &err) != 0) {
        json_decref(stats);
        return hub_reply_kiln_error(req, &err);
    }
    text_buf_t b = {0};
    hub_counters(&b, req->hub);
    queue_gauges(&b, stats, workers);
    json_decref(stats);
    json_decref(workers);
    int rc = b.failed ? hub_reply_error(req, 500, NULL, "out of memory")
                      : hub_reply_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data,
                                       b.len);
    free(b.data);
    return rc;
}
