/*
 * Connector health for the worker (contract in worker_internal.h).
 *
 * A connector's health() may block (an HTTP request to ComfyUI, A1111, a
 * cloud API), so each check runs on libuv's thread pool and its answer
 * comes back to the loop thread. At most one check per service is out at a
 * time; a service whose check is still out when the timer fires again is
 * skipped that round. A service claims only while its last check passed,
 * so jobs are not claimed just to fail against a service that is down; its
 * running jobs go on (the connector fails them if the service stays away).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln/log.h"
#include "worker/worker_internal.h"

typedef struct health_check {
    uv_work_t req;
    kiln_worker_t *w;
    int service;
    int rc;
    kiln_err_t err;
} health_check_t;

static void run_check(uv_work_t *req)
{
    health_check_t *hc = req->data;
    hc->rc = kiln_connector_health(hc->w->services[hc->service].connector, &hc->err);
}

/* Logs a change of a service's health, once per change. */
static void log_change(const kiln_worker_t *w, const kiln_service_t *svc, bool first)
{
    if (svc->healthy && first)
        KILN_LOG_INFO_("worker", "connector %s is healthy; claiming its jobs", svc->name);
    else if (svc->healthy)
        KILN_LOG_INFO_("worker", "connector %s is healthy again; claiming its jobs again",
                       svc->name);
    else
        KILN_LOG_WARN_("worker",
                       "connector %s is unhealthy (%s); claiming none of its jobs until a health "
                       "check passes (every %ld ms)",
                       svc->name, svc->health_error, w->cfg->worker.health_interval_ms);
}

static void after_check(uv_work_t *req, int status)
{
    health_check_t *hc = req->data;
    kiln_worker_t *w = hc->w;
    kiln_service_t *svc = &w->services[hc->service];
    bool healthy = status == 0 && hc->rc == 0;
    bool first = !svc->health_known;
    bool changed = first || healthy != svc->healthy;
    svc->health_running = false;
    svc->health_known = true;
    svc->healthy = healthy;
    svc->health_checked_at = kiln_ops_wall_ms();
    snprintf(svc->health_error, sizeof svc->health_error, "%s",
             healthy          ? ""
             : hc->err.msg[0] ? hc->err.msg
                              : "the health check failed");
    free(hc);
    if (w->closing || !changed)
        return;
    log_change(w, svc, first);
    if (healthy && w->ready_fd >= 0) {
        /* The supervisor counts the worker ready (s6 notification-fd). */
        if (write(w->ready_fd, "ready\n", 6) != 6)
            KILN_LOG_WARN_("worker", "cannot write to the readiness fd: %s", strerror(errno));
        close(w->ready_fd);
        w->ready_fd = -1;
    }
    if (healthy) {
        svc->maybe_work = true; /* what was submitted meanwhile waits in the queue */
        svc->notify_gen++;
    }
    kiln_worker_register(w);
    kiln_worker_pump(w);
}

static void on_health_timer(uv_timer_t *t)
{
    kiln_worker_t *w = t->data;
    for (int i = 0; i < w->n_services && !w->stopping; i++) {
        kiln_service_t *svc = &w->services[i];
        if (svc->health_running)
            continue;
        health_check_t *hc = calloc(1, sizeof *hc);
        if (!hc)
            return;
        hc->w = w;
        hc->service = i;
        hc->req.data = hc;
        if (uv_queue_work(&w->loop, &hc->req, run_check, after_check) != 0) {
            free(hc);
            continue;
        }
        svc->health_running = true;
    }
}

void kiln_worker_health_start(kiln_worker_t *w)
{
    uint64_t interval = (uint64_t)w->cfg->worker.health_interval_ms;
    uv_timer_start(&w->health_timer, on_health_timer, 0, interval);
}

json_t *kiln_worker_health_json(const kiln_worker_t *w)
{
    json_t *all = json_object();
    for (int i = 0; all && i < w->n_services; i++) {
        const kiln_service_t *svc = &w->services[i];
        const char *status = !svc->health_known ? "unknown" : svc->healthy ? "pass" : "fail";
        json_t *one = json_pack("{s:s}", "status", status);
        if (one && svc->health_known)
            json_object_set_new(one, "checked_at", json_integer(svc->health_checked_at));
        if (one && svc->health_known && !svc->healthy)
            json_object_set_new(one, "error", json_string(svc->health_error));
        json_object_set_new(all, svc->name, one);
    }
    return all;
}

bool kiln_worker_health_any(const kiln_worker_t *w)
{
    for (int i = 0; i < w->n_services; i++) {
        if (w->services[i].healthy)
            return true;
    }
    return false;
}
