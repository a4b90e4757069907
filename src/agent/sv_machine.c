/*
 * The supervisor's state machine, s6-style: every (state, event) pair
 * either names an action in sv_table or is ignored. Actions are the only
 * code that changes a service's state. The table matches the one in
 * include/kiln/supervisor.h, plus FAULT (the agent ends a run and counts
 * it as a failure: readiness deadline, one-shot timeout, memory limit).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/sv_internal.h"

static const char *const state_names[] = {"down",    "waiting",  "starting", "running",
                                          "backoff", "stopping", "failed",   "exited"};

/* The state's name as used in status and events. */
const char *kiln_svc_state_name(kiln_svc_state_t state)
{
    if ((unsigned)state >= sizeof state_names / sizeof state_names[0])
        return "unknown";
    return state_names[state];
}

/* Monotonic milliseconds (not the loop's cached time: runs are timed). */
uint64_t sv_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* Hands an event to the owner's callback; fields stay the caller's. */
void sv_emit(sv_service_t *svc, const char *event, json_t *fields)
{
    kiln_supervisor_t *sv = svc->sv;
    if (sv->on_event)
        sv->on_event(sv->event_ctx, svc->spec.name, event, fields);
}

static json_t *exit_json(int status)
{
    if (WIFSIGNALED(status))
        return json_pack("{s:i}", "signal", WTERMSIG(status));
    return json_pack("{s:i}", "code", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void describe_exit(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "exited with code %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* Moves svc to `to`, emitting a "state" event; extra (may be NULL) is
 * stolen and merged into the event's fields. */
static void set_state(sv_service_t *svc, kiln_svc_state_t to, json_t *extra)
{
    kiln_svc_state_t from = svc->state;
    svc->state = to;
    json_t *f = extra ? extra : json_object();
    json_object_set_new(f, "from", json_string(kiln_svc_state_name(from)));
    json_object_set_new(f, "to", json_string(kiln_svc_state_name(to)));
    json_object_set_new(f, "pid", json_integer(svc->pid));
    sv_emit(svc, "state", f);
    json_decref(f);
    if (svc->sv->shutting_down)
        sv_shutdown_step(svc->sv);
}

/* True when every dependency is ready (running, or a one-shot done). */
bool sv_deps_ready(const sv_service_t *svc)
{
    for (size_t i = 0; svc->spec.depends_on && svc->spec.depends_on[i]; i++) {
        sv_service_t *dep = sv_find(svc->sv, svc->spec.depends_on[i]);
        if (!dep || !dep->ready)
            return false;
    }
    return true;
}

static void notify_dependents(kiln_supervisor_t *sv)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        sv_service_t *s = sv->svcs[i];
        if (s->state == KILN_SVC_WAITING && sv_deps_ready(s))
            sv_dispatch(s, SV_EV_DEPS_READY);
        else if (s->state == KILN_SVC_FAILED && s->failed_for_dependency && sv_deps_ready(s))
            sv_dispatch(s, SV_EV_START);
    }
}

static void stop_helpers(sv_service_t *svc)
{
    uv_timer_stop(&svc->timer);
    uv_timer_stop(&svc->probe_timer);
    if (svc->probe) {
        kiln_probe_cancel(svc->probe);
        svc->probe = NULL;
    }
}

static void on_timer(uv_timer_t *t)
{
    sv_dispatch(t->data, SV_EV_TIMER);
}

/* Starts the service's timer `ms` from now: the loop's cached time may be
 * stale after a long callback, and a timer must never fire early. */
static void arm_timer(sv_service_t *svc, uint64_t ms)
{
    uv_update_time(svc->sv->loop);
    uv_timer_start(&svc->timer, on_timer, ms, 0);
}

static void on_probe_timer(uv_timer_t *t);

static void on_probe_done(void *ctx, bool ok, const char *detail)
{
    sv_service_t *svc = ctx;
    svc->probe = NULL;
    if (ok) {
        sv_dispatch(svc, SV_EV_READY);
        return;
    }
    snprintf(svc->last_error, sizeof svc->last_error, "not ready yet: %s",
             detail ? detail : "probe failed");
    uv_timer_start(&svc->probe_timer, on_probe_timer, (uint64_t)svc->spec.ready.interval_ms, 0);
}

static void on_probe_timer(uv_timer_t *t)
{
    sv_service_t *svc = t->data;
    kiln_err_t err;
    if (svc->state != KILN_SVC_STARTING || svc->probe)
        return;
    if (kiln_probe_start(svc->sv->loop, &svc->spec.ready, on_probe_done, svc, &svc->probe, &err)) {
        svc->probe = NULL;
        snprintf(svc->last_error, sizeof svc->last_error, "%s", err.msg);
        uv_timer_start(t, on_probe_timer, (uint64_t)svc->spec.ready.interval_ms, 0);
    }
}

/* Arms what decides when a fresh run counts as ready (or fails to). */
static void arm_readiness(sv_service_t *svc)
{
    const kiln_svc_spec_t *spec = &svc->spec;
    if (spec->oneshot) {
        if (spec->oneshot_timeout_ms > 0)
            arm_timer(svc, (uint64_t)spec->oneshot_timeout_ms);
        return;
    }
    if (spec->ready.kind == KILN_READY_NONE) {
        sv_dispatch(svc, SV_EV_READY);
        return;
    }
    if (spec->ready.deadline_ms > 0)
        arm_timer(svc, (uint64_t)spec->ready.deadline_ms);
    if (spec->ready.kind != KILN_READY_FD) {
        uv_timer_start(&svc->probe_timer, on_probe_timer, (uint64_t)spec->ready.interval_ms, 0);
    }
}

static void go_failed(sv_service_t *svc, const char *reason);

/* The first dependency of svc that has failed, or NULL. */
static const sv_service_t *failed_dependency(const sv_service_t *svc)
{
    for (size_t i = 0; svc->spec.depends_on && svc->spec.depends_on[i]; i++) {
        const sv_service_t *dep = sv_find(svc->sv, svc->spec.depends_on[i]);
        if (dep && dep->state == KILN_SVC_FAILED)
            return dep;
    }
    return NULL;
}

/* Fails svc because its dependency dep failed: a failed service starts
 * again only when told to, so waiting for it would be waiting forever. */
static void fail_for_dependency(sv_service_t *svc, const sv_service_t *dep)
{
    char why[sizeof svc->last_error];
    snprintf(why, sizeof why, "depends on %s, which failed (%.*s); fix %s, then start this service",
             dep->spec.name, 300, dep->last_error[0] ? dep->last_error : "see its log",
             dep->spec.name);
    snprintf(svc->last_error, sizeof svc->last_error, "%s", why);
    go_failed(svc, why);
    svc->failed_for_dependency = true;
}

static void go_failed(sv_service_t *svc, const char *reason)
{
    kiln_svclog_note(svc->log, "failed: %s", reason);
    set_state(svc, KILN_SVC_FAILED, json_pack("{s:s}", "reason", reason));
    json_t *alert = json_pack("{s:i,s:I,s:s}", "failures", svc->fail_n, "window_ms",
                              (json_int_t)svc->spec.failure_window_ms, "reason", reason);
    json_object_set_new(alert, "last_exit",
                        svc->has_exited ? exit_json(svc->exit_status) : json_null());
    sv_emit(svc, "alert", alert);
    json_decref(alert);
    for (size_t i = 0; i < svc->sv->n_svcs; i++) {
        sv_service_t *s = svc->sv->svcs[i];
        if (s->state == KILN_SVC_WAITING && failed_dependency(s) == svc)
            fail_for_dependency(s, svc);
    }
}

/* Spawns a run, or skips a one-shot whose marker exists. */
static void launch(sv_service_t *svc)
{
    const kiln_svc_spec_t *spec = &svc->spec;
    svc->ready = false;
    svc->fault[0] = '\0';
    svc->after_stop = SV_AFTER_DOWN;
    if (spec->oneshot && spec->done_marker && access(spec->done_marker, F_OK) == 0) {
        kiln_svclog_note(svc->log, "skipped: %s exists", spec->done_marker);
        svc->ready = true;
        set_state(svc, KILN_SVC_EXITED, json_pack("{s:b}", "skipped", 1));
        notify_dependents(svc->sv);
        return;
    }
    char errbuf[sizeof svc->last_error];
    if (sv_proc_spawn(svc, errbuf, sizeof errbuf) != 0) {
        snprintf(svc->last_error, sizeof svc->last_error, "%s", errbuf);
        go_failed(svc, errbuf);
        return;
    }
    svc->started_ms = sv_now_ms();
    kiln_svclog_note(svc->log, "started pid %d: %s", (int)svc->pid, spec->argv[0]);
    set_state(svc, KILN_SVC_STARTING, NULL);
    /* Readiness is armed once the child has exec'd (sv_on_launched). */
}

/* The child of svc's run was released and exec'd its program. */
void sv_on_launched(sv_service_t *svc)
{
    if (svc->state == KILN_SVC_STARTING)
        arm_readiness(svc);
}

static void begin_run(sv_service_t *svc)
{
    if (svc->sv->shutting_down)
        return;
    if (svc->next_spec) {
        kiln_svc_spec_clear(&svc->spec);
        svc->spec = *svc->next_spec;
        free(svc->next_spec);
        svc->next_spec = NULL;
    }
    if (!sv_deps_ready(svc)) {
        const sv_service_t *failed = failed_dependency(svc);
        if (failed)
            fail_for_dependency(svc, failed);
        else
            set_state(svc, KILN_SVC_WAITING, NULL);
        return;
    }
    launch(svc);
}

/* Counts a failure and either schedules a restart (exponential backoff
 * with up to 20% added jitter, so delays still grow) or gives up. */
static void failure(sv_service_t *svc, const char *reason)
{
    const kiln_svc_spec_t *spec = &svc->spec;
    uint64_t now = sv_now_ms();
    if (svc->started_ms && now - svc->started_ms >= (uint64_t)spec->stable_ms)
        svc->backoff_step = 0;
    svc->fail_ms[svc->fail_head] = now;
    svc->fail_head = (svc->fail_head + 1) % SV_FAIL_MAX;
    int in_window = 0;
    for (int i = 0; i < SV_FAIL_MAX; i++) {
        if (svc->fail_ms[i] && now - svc->fail_ms[i] <= (uint64_t)spec->failure_window_ms)
            in_window++;
    }
    svc->fail_n = in_window;
    bool never_ready = svc->unready_runs >= spec->max_failures;
    if (spec->restart == KILN_RESTART_NEVER || in_window >= spec->max_failures || never_ready) {
        char why[600];
        if (never_ready)
            snprintf(why, sizeof why, "%s (%d runs in a row never became ready)", reason,
                     svc->unready_runs);
        else
            snprintf(why, sizeof why, "%s (%d failures within %ld ms)", reason, in_window,
                     spec->failure_window_ms);
        go_failed(svc, spec->restart == KILN_RESTART_NEVER ? reason : why);
        return;
    }
    long delay = spec->backoff_base_ms;
    for (int i = 0; i < svc->backoff_step && delay < spec->backoff_max_ms; i++)
        delay *= 2;
    uint64_t *rnd = &svc->sv->rand_state;
    *rnd = *rnd * 6364136223846793005ULL + 1442695040888963407ULL;
    delay += (long)((*rnd >> 33) % (uint64_t)(delay / 5 + 1));
    if (delay > spec->backoff_max_ms)
        delay = spec->backoff_max_ms;
    svc->backoff_step++;
    svc->restarts++;
    svc->last_delay_ms = delay;
    kiln_svclog_note(svc->log, "%s; restarting in %ld ms", reason, delay);
    set_state(svc, KILN_SVC_BACKOFF,
              json_pack("{s:I,s:s}", "delay_ms", (json_int_t)delay, "reason", reason));
    if (delay == 0)
        sv_dispatch(svc, SV_EV_TIMER); /* a backoff of 0 is over at once, not a loop turn later */
    else
        arm_timer(svc, (uint64_t)delay);
}

/* The run's main process is gone, and the reaper has SIGKILLed the rest
 * of its group; the rest of its session, its escaped descendants, and
 * orphans reparented to the agent that no live run owns go in the cleanup
 * SV_CLEANUP_DELAY_MS later (sv_proc_end_run), after any respawn's
 * child is released: no process of the run outlives it for long. */
static void end_run(sv_service_t *svc)
{
    stop_helpers(svc);
    svc->ready = false;
    svc->pid = 0;
    svc->n_desc = 0;
    sv_state_mark_dirty(svc->sv);
    sv_stats_timer_update(svc->sv);
}

/* The child of a launch could not be released or could not exec (it is
 * reaped, svc->pid is 0); reason names the service and the fix. */
void sv_on_launch_failed(sv_service_t *svc, const char *reason)
{
    if (svc->state != KILN_SVC_STARTING) {
        /* Stopped before it was released: the stop is what happened. */
        sv_on_exit(svc, SIGKILL);
        return;
    }
    stop_helpers(svc);
    svc->ready = false;
    svc->n_desc = 0;
    snprintf(svc->last_error, sizeof svc->last_error, "%s", reason);
    go_failed(svc, reason);
}

/* An explicit start (operator, apply) forgets earlier failures. */
static void act_start(sv_service_t *svc)
{
    svc->failed_for_dependency = false;
    memset(svc->fail_ms, 0, sizeof svc->fail_ms);
    svc->fail_n = 0;
    svc->unready_runs = 0;
    svc->backoff_step = 0;
    uv_timer_stop(&svc->timer);
    begin_run(svc);
}

static void act_backoff_over(sv_service_t *svc)
{
    begin_run(svc);
}

static void act_deps_ready(sv_service_t *svc)
{
    launch(svc);
}

static void act_ready(sv_service_t *svc)
{
    stop_helpers(svc);
    svc->ready = true;
    svc->unready_runs = 0;
    svc->last_error[0] = '\0';
    kiln_svclog_note(svc->log, "ready");
    set_state(svc, KILN_SVC_RUNNING, NULL);
    json_t *f = json_pack("{s:i}", "pid", (int)svc->pid);
    sv_emit(svc, "ready", f);
    json_decref(f);
    notify_dependents(svc->sv);
}

static void act_exit(sv_service_t *svc)
{
    char how[128];
    describe_exit(svc->exit_status, how, sizeof how);
    end_run(svc);
    kiln_svclog_note(svc->log, "%s", how);
    json_t *f = json_pack("{s:o}", "exit", exit_json(svc->exit_status));
    if (svc->sv->shutting_down) {
        set_state(svc, KILN_SVC_DOWN, f);
        return;
    }
    bool ok = WIFEXITED(svc->exit_status) && WEXITSTATUS(svc->exit_status) == 0;
    if (ok && (svc->spec.oneshot || svc->spec.restart != KILN_RESTART_ALWAYS)) {
        if (svc->spec.oneshot && svc->spec.done_marker) {
            int fd = open(svc->spec.done_marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0)
                kiln_svclog_note(svc->log, "cannot create done marker %s: %s",
                                 svc->spec.done_marker, strerror(errno));
            else
                close(fd);
        }
        svc->ready = svc->spec.oneshot;
        set_state(svc, KILN_SVC_EXITED, f);
        notify_dependents(svc->sv);
        return;
    }
    json_decref(f);
    failure(svc, how);
}

static void begin_stop(sv_service_t *svc)
{
    stop_helpers(svc);
    svc->ready = false;
    kiln_svclog_note(svc->log, "stopping: signal %d to the group, SIGKILL after %ld ms",
                     svc->spec.stop_signal, svc->spec.stop_timeout_ms);
    set_state(svc, KILN_SVC_STOPPING, NULL);
    sv_proc_signal_run(svc, svc->spec.stop_signal);
    arm_timer(svc, (uint64_t)svc->spec.stop_timeout_ms);
}

static void act_stop(sv_service_t *svc)
{
    begin_stop(svc);
}

static void act_fault(sv_service_t *svc)
{
    kiln_svclog_note(svc->log, "%s", svc->fault);
    snprintf(svc->last_error, sizeof svc->last_error, "%s", svc->fault);
    svc->after_stop = SV_AFTER_FAILURE;
    begin_stop(svc);
}

static void act_start_timeout(sv_service_t *svc)
{
    if (svc->spec.oneshot) {
        sv_fault(svc, "one-shot timed out after %ld ms", svc->spec.oneshot_timeout_ms);
        return;
    }
    svc->unready_runs++;
    sv_fault(svc, "not ready within %ld ms (%s)", svc->spec.ready.deadline_ms,
             svc->last_error[0] ? svc->last_error : "no readiness signal");
}

static void act_kill(sv_service_t *svc)
{
    kiln_svclog_note(svc->log, "still running %ld ms after signal %d; sending SIGKILL",
                     svc->spec.stop_timeout_ms, svc->spec.stop_signal);
    sv_proc_signal_run(svc, SIGKILL);
}

static void act_stopped(sv_service_t *svc)
{
    char how[128];
    describe_exit(svc->exit_status, how, sizeof how);
    end_run(svc);
    kiln_svclog_note(svc->log, "stopped: %s", how);
    sv_after_t after = svc->after_stop;
    svc->after_stop = SV_AFTER_DOWN;
    if (after == SV_AFTER_FAILURE && !svc->sv->shutting_down) {
        failure(svc, svc->fault);
        return;
    }
    set_state(svc, KILN_SVC_DOWN, json_pack("{s:o}", "exit", exit_json(svc->exit_status)));
    if (after == SV_AFTER_RESTART && !svc->sv->shutting_down) {
        svc->restarts++;
        begin_run(svc);
    } else if (after == SV_AFTER_REMOVE) {
        sv_service_remove(svc);
    }
}

static void act_down(sv_service_t *svc)
{
    uv_timer_stop(&svc->timer);
    svc->ready = false;
    set_state(svc, KILN_SVC_DOWN, NULL);
}

typedef void (*sv_action_fn)(sv_service_t *svc);

/* States x events. NULL: the event means nothing in that state. */
static const sv_action_fn sv_table[KILN_SVC_EXITED + 1][SV_EV_COUNT] = {
    [KILN_SVC_DOWN] = {[SV_EV_START] = act_start},
    [KILN_SVC_WAITING] = {[SV_EV_DEPS_READY] = act_deps_ready, [SV_EV_STOP] = act_down},
    [KILN_SVC_STARTING] = {[SV_EV_READY] = act_ready,
                           [SV_EV_EXIT] = act_exit,
                           [SV_EV_STOP] = act_stop,
                           [SV_EV_TIMER] = act_start_timeout,
                           [SV_EV_FAULT] = act_fault},
    [KILN_SVC_RUNNING] =
        {[SV_EV_EXIT] = act_exit, [SV_EV_STOP] = act_stop, [SV_EV_FAULT] = act_fault},
    [KILN_SVC_BACKOFF] =
        {[SV_EV_START] = act_start, [SV_EV_STOP] = act_down, [SV_EV_TIMER] = act_backoff_over},
    [KILN_SVC_STOPPING] = {[SV_EV_EXIT] = act_stopped, [SV_EV_TIMER] = act_kill},
    [KILN_SVC_FAILED] = {[SV_EV_START] = act_start, [SV_EV_STOP] = act_down},
    [KILN_SVC_EXITED] = {[SV_EV_START] = act_start, [SV_EV_STOP] = act_down},
};

/* Runs the action for (svc->state, ev), if any. */
void sv_dispatch(sv_service_t *svc, sv_event_t ev)
{
    sv_action_fn fn = sv_table[svc->state][ev];
    if (fn)
        fn(svc);
}

/* The run's main process exited with wait status `status`. */
void sv_on_exit(sv_service_t *svc, int status)
{
    svc->exit_status = status;
    svc->has_exited = true;
    if (svc->state == KILN_SVC_STARTING || svc->state == KILN_SVC_RUNNING ||
        svc->state == KILN_SVC_STOPPING) {
        sv_dispatch(svc, SV_EV_EXIT);
        return;
    }
    end_run(svc); /* not expected: clean up anyway so nothing is left behind */
}

/* Ends the current run as a failure, for the reason formatted. */
void sv_fault(sv_service_t *svc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(svc->fault, sizeof svc->fault, fmt, ap);
    va_end(ap);
    sv_dispatch(svc, SV_EV_FAULT);
}

static bool has_live_dependent(kiln_supervisor_t *sv, const sv_service_t *svc)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        const sv_service_t *s = sv->svcs[i];
        if (s->pid <= 0)
            continue;
        for (size_t d = 0; s->spec.depends_on && s->spec.depends_on[d]; d++) {
            if (strcmp(s->spec.depends_on[d], svc->spec.name) == 0)
                return true;
        }
    }
    return false;
}

static void on_shutdown_done(uv_timer_t *t)
{
    kiln_supervisor_t *sv = t->data;
    void (*done)(void *) = sv->shutdown_done;
    sv->shutdown_done = NULL;
    if (done)
        done(sv->shutdown_ctx);
}

/* Shutdown progress: stops every run none of whose dependents still runs
 * (reverse dependency order); calls done once no process is left. */
void sv_shutdown_step(kiln_supervisor_t *sv)
{
    if (sv->shutdown_depth > 0)
        return; /* the outer call sees every change made below it */
    sv->shutdown_depth++;
    bool again = true, live = false;
    while (again) {
        again = false;
        live = false;
        for (size_t i = 0; i < sv->n_svcs; i++) {
            sv_service_t *s = sv->svcs[i];
            kiln_svc_state_t st = s->state;
            if (st == KILN_SVC_WAITING || st == KILN_SVC_BACKOFF) {
                sv_dispatch(s, SV_EV_STOP);
                again = true;
            } else if ((st == KILN_SVC_STARTING || st == KILN_SVC_RUNNING) &&
                       !has_live_dependent(sv, s)) {
                s->after_stop = SV_AFTER_DOWN;
                sv_dispatch(s, SV_EV_STOP);
                again = true;
            }
            live = live || s->pid > 0;
        }
    }
    sv->shutdown_depth--;
    /* done may free the supervisor: call it from the loop, not from deep
     * inside a state change. */
    if (!live && sv->shutdown_done)
        uv_timer_start(&sv->done_timer, on_shutdown_done, 0, 0);
}
