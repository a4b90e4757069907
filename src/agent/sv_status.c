/*
 * Status and logs of supervised services, for the machine API and the
 * published machine status. RSS and CPU are read per call from each run's
 * own processes (sv_proc_measure), never from a scan of all of /proc.
 */
#include <sys/wait.h>
#include <unistd.h>

#include "agent/sv_internal.h"

static int failures_in_window(const sv_service_t *svc, uint64_t now)
{
    int n = 0;
    for (int i = 0; i < SV_FAIL_MAX; i++) {
        if (svc->fail_ms[i] && now - svc->fail_ms[i] <= (uint64_t)svc->spec.failure_window_ms)
            n++;
    }
    return n;
}

/* CPU % of the run since the previous status call (or since it started). */
static double cpu_pct(sv_service_t *svc, uint64_t now)
{
    if (svc->pid <= 0)
        return 0.0;
    static long ticks_per_s;
    if (!ticks_per_s)
        ticks_per_s = sysconf(_SC_CLK_TCK);
    unsigned long long ticks = svc->cpu_ticks;
    uint64_t since = svc->started_ms;
    unsigned long long base = 0;
    if (svc->cpu_seen_ms > svc->started_ms && svc->cpu_ticks_seen <= ticks) {
        since = svc->cpu_seen_ms;
        base = svc->cpu_ticks_seen;
    }
    svc->cpu_seen_ms = now;
    svc->cpu_ticks_seen = ticks;
    if (now <= since || ticks_per_s <= 0)
        return 0.0;
    return (double)(ticks - base) * 1000.0 / (double)ticks_per_s / (double)(now - since) * 100.0;
}

static json_t *last_exit_json(const sv_service_t *svc)
{
    if (!svc->has_exited)
        return json_null();
    int st = svc->exit_status;
    if (WIFSIGNALED(st))
        return json_pack("{s:i}", "signal", WTERMSIG(st));
    return json_pack("{s:i}", "code", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static json_t *service_json(sv_service_t *svc, uint64_t now)
{
    bool running = svc->pid > 0;
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(svc->spec.name));
    json_object_set_new(o, "state", json_string(kiln_svc_state_name(svc->state)));
    json_object_set_new(o, "pid", running ? json_integer(svc->pid) : json_null());
    json_object_set_new(o, "pgid", running ? json_integer(svc->pid) : json_null());
    json_object_set_new(o, "uptime_ms",
                        json_integer(running ? (json_int_t)(now - svc->started_ms) : 0));
    json_object_set_new(o, "restarts", json_integer(svc->restarts));
    json_object_set_new(o, "failures", json_integer(failures_in_window(svc, now)));
    json_object_set_new(o, "ready", json_boolean(svc->ready));
    json_object_set_new(o, "last_exit", last_exit_json(svc));
    json_object_set_new(o, "rss_mb", json_real((double)svc->rss_kb / 1024.0));
    json_object_set_new(o, "cpu_pct", json_real(cpu_pct(svc, now)));
    json_object_set_new(o, "oneshot", json_boolean(svc->spec.oneshot));
    json_object_set_new(o, "last_error",
                        svc->last_error[0] ? json_string(svc->last_error) : json_null());
    if (svc->state == KILN_SVC_BACKOFF)
        json_object_set_new(o, "backoff_ms", json_integer(svc->last_delay_ms));
    return o;
}

/* See supervisor.h. */
json_t *kiln_supervisor_status(kiln_supervisor_t *sv)
{
    sv_proc_measure(sv, false);
    uint64_t now = sv_now_ms();
    json_t *list = json_array();
    for (size_t i = 0; i < sv->n_svcs; i++)
        json_array_append_new(list, service_json(sv->svcs[i], now));
    return list;
}

/* See supervisor.h. */
json_t *kiln_supervisor_service_status(kiln_supervisor_t *sv, const char *name)
{
    sv_service_t *svc = sv_find(sv, name);
    if (!svc)
        return NULL;
    sv_proc_measure(sv, false);
    return service_json(svc, sv_now_ms());
}

/* See supervisor.h. */
json_t *kiln_supervisor_logs(kiln_supervisor_t *sv, const char *name, size_t lines)
{
    sv_service_t *svc = sv_find(sv, name);
    if (!svc)
        return NULL;
    return svc->log ? kiln_svclog_tail(svc->log, lines) : json_array();
}

int kiln_supervisor_logs_follow(kiln_supervisor_t *sv, const char *name,
                                void (*cb)(void *ctx, json_t *entry), void *ctx)
{
    sv_service_t *svc = sv_find(sv, name);
    if (!svc || !svc->log)
        return KILN_ENOTFOUND;
    return kiln_svclog_follow(svc->log, cb, ctx);
}

void kiln_supervisor_logs_unfollow(kiln_supervisor_t *sv, const char *name,
                                   void (*cb)(void *ctx, json_t *entry), void *ctx)
{
    sv_service_t *svc = sv_find(sv, name);
    if (svc && svc->log)
        kiln_svclog_unfollow(svc->log, cb, ctx);
}
