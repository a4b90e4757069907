/*
 * The supervisor's public API: lifecycle, reconciling the service set
 * (apply), operator commands, status and logs. The state machine itself is
 * in sv_machine.c; processes and /proc in sv_proc.c and sv_procfs.c.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "agent/sv_internal.h"

/* Finds a service by name, including one being removed. */
sv_service_t *sv_find(kiln_supervisor_t *sv, const char *name)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (strcmp(sv->svcs[i]->spec.name, name) == 0)
            return sv->svcs[i];
    }
    return NULL;
}

/* Drops one reference; the last one frees the service. */
void sv_service_unref(sv_service_t *svc)
{
    if (--svc->refs > 0)
        return;
    if (svc->log)
        kiln_svclog_close(svc->log);
    kiln_svc_spec_clear(&svc->spec);
    if (svc->next_spec) {
        kiln_svc_spec_clear(svc->next_spec);
        free(svc->next_spec);
    }
    free(svc);
}

static void on_service_handle_closed(uv_handle_t *h)
{
    sv_service_unref(h->data);
}

/* Takes svc out of the list and closes its handles; it is freed once they
 * are closed. Its process must be gone. */
void sv_service_remove(sv_service_t *svc)
{
    kiln_supervisor_t *sv = svc->sv;
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (sv->svcs[i] == svc) {
            memmove(&sv->svcs[i], &sv->svcs[i + 1], (sv->n_svcs - i - 1) * sizeof *sv->svcs);
            sv->n_svcs--;
            break;
        }
    }
    if (svc->probe)
        kiln_probe_cancel(svc->probe);
    svc->probe = NULL;
    uv_close((uv_handle_t *)&svc->timer, on_service_handle_closed);
    uv_close((uv_handle_t *)&svc->probe_timer, on_service_handle_closed);
    sv_proc_close_pipes(svc);
    sv_service_unref(svc);
}

/* A new service in state down, not yet in the list; takes over the
 * contents of *spec (left zeroed). NULL on failure, with err set. */
sv_service_t *sv_service_new(kiln_supervisor_t *sv, kiln_svc_spec_t *spec, kiln_err_t *err)
{
    sv_service_t *svc = calloc(1, sizeof *svc);
    if (!svc) {
        kiln_err_set(err, KILN_ENOMEM, "service %s: out of memory", spec->name);
        return NULL;
    }
    if (kiln_svclog_open(spec->name, &sv->log_opts, &svc->log, err) != 0) {
        free(svc);
        return NULL;
    }
    svc->sv = sv;
    svc->spec = *spec; /* takes the copy */
    memset(spec, 0, sizeof *spec);
    svc->state = KILN_SVC_DOWN;
    svc->refs = 3; /* the list, timer, probe_timer */
    uv_timer_init(sv->loop, &svc->timer);
    uv_timer_init(sv->loop, &svc->probe_timer);
    svc->timer.data = svc->probe_timer.data = svc;
    return svc;
}

/* Frees a service sv_service_new made that never joined the list. */
void sv_service_discard(sv_service_t *svc)
{
    uv_close((uv_handle_t *)&svc->timer, on_service_handle_closed);
    uv_close((uv_handle_t *)&svc->probe_timer, on_service_handle_closed);
    sv_service_unref(svc);
}

/* Reaps, and releases at once what the exits started (a respawn with a
 * backoff of 0): the new run execs before anything else of this loop turn
 * runs (other handles' callbacks, the publisher's wakeup). */
static void on_sigchld(uv_signal_t *h, int signum)
{
    (void)signum;
    sv_proc_reap(h->data);
    sv_flush(h->data);
}

/* Before the loop blocks (or before an API call that spawns returns, so
 * its callers see the runs it started): one state-file write for this
 * turn's changes, then the release of every child waiting for it. */
static bool has_launch(const kiln_supervisor_t *sv)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (sv->svcs[i]->launch)
            return true;
    }
    return false;
}

void sv_flush(kiln_supervisor_t *sv)
{
    uv_prepare_stop(&sv->flush);
    /* A run that becomes ready at once may start its dependents: release
     * them too (one more write per level of the dependency graph). */
    for (size_t round = 0; round <= sv->n_svcs && has_launch(sv); round++) {
        if (sv->state_dirty)
            sv_state_write(sv);
        sv_proc_release_all(sv);
    }
    if (sv->state_dirty)
        sv_state_write(sv); /* exits, or a launch failed */
    if (has_launch(sv))
        sv_schedule_flush(sv);
}

static void on_cleanup_timer(uv_timer_t *t)
{
    kiln_supervisor_t *sv = t->data;
    if (sv->ended)
        sv_proc_sweep(sv, true);
}

/* Schedules the cleanup of ended runs (sv->ended), unless one is due. */
void sv_schedule_cleanup(kiln_supervisor_t *sv)
{
    if (!sv->freeing && !uv_is_active((uv_handle_t *)&sv->cleanup_timer))
        uv_timer_start(&sv->cleanup_timer, on_cleanup_timer, SV_CLEANUP_DELAY_MS, 0);
}

static void on_flush(uv_prepare_t *h)
{
    sv_flush(h->data);
}

/* Asks for on_flush before the loop next blocks (at most once a turn). */
void sv_schedule_flush(kiln_supervisor_t *sv)
{
    if (!sv->freeing)
        uv_prepare_start(&sv->flush, on_flush);
}

static bool memory_limited(const kiln_supervisor_t *sv)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (sv->svcs[i]->spec.memory_limit_mb > 0 && sv->svcs[i]->pid > 0)
            return true;
    }
    return false;
}

static void on_stats_timer(uv_timer_t *t);

/* Runs the stats timer only while a running service has a memory limit:
 * an agent whose services have none does no periodic work at all. */
void sv_stats_timer_update(kiln_supervisor_t *sv)
{
    if (sv->freeing)
        return;
    bool want = memory_limited(sv);
    if (want && !uv_is_active((uv_handle_t *)&sv->stats_timer))
        uv_timer_start(&sv->stats_timer, on_stats_timer, (uint64_t)sv->stats_interval_ms,
                       (uint64_t)sv->stats_interval_ms);
    else if (!want)
        uv_timer_stop(&sv->stats_timer);
}

static void on_stats_timer(uv_timer_t *t)
{
    kiln_supervisor_t *sv = t->data;
    sv_proc_reap(sv);
    sv_stats_timer_update(sv);
    if (!uv_is_active((uv_handle_t *)t))
        return;
    sv_proc_measure(sv, true);
    for (size_t i = 0; i < sv->n_svcs; i++) {
        sv_service_t *svc = sv->svcs[i];
        long limit = svc->spec.memory_limit_mb;
        bool live = svc->state == KILN_SVC_STARTING || svc->state == KILN_SVC_RUNNING;
        if (live && limit > 0 && svc->rss_kb / 1024 > limit)
            sv_fault(svc, "memory %ld MB is over the limit of %ld MB", svc->rss_kb / 1024, limit);
    }
}

static void on_sv_handle_closed(uv_handle_t *h)
{
    kiln_supervisor_t *sv = h->data;
    if (--sv->open_handles > 0)
        return;
    while (sv->ended) {
        sv_ended_run_t *next = sv->ended->next;
        free(sv->ended);
        sv->ended = next;
    }
    free(sv->pipe_buf);
    free(sv->svcs);
    free(sv->state_file);
    free(sv->log_dir);
    free(sv);
}

static int copy_options(kiln_supervisor_t *sv, const kiln_supervisor_options_t *opts)
{
    kiln_supervisor_options_t none = {0};
    if (!opts)
        opts = &none;
    if ((opts->state_file && !(sv->state_file = strdup(opts->state_file))) ||
        (opts->log_dir && !(sv->log_dir = strdup(opts->log_dir))))
        return KILN_ENOMEM;
    sv->log_opts.dir = sv->log_dir;
    sv->log_opts.ring_lines = opts->log_ring_lines ? opts->log_ring_lines : 1000;
    sv->log_opts.file_max_bytes =
        opts->log_file_max_bytes ? opts->log_file_max_bytes : 10u * 1024 * 1024;
    sv->log_opts.file_keep = opts->log_file_keep > 0 ? opts->log_file_keep : 5;
    sv->on_event = opts->on_event;
    sv->event_ctx = opts->event_ctx;
    sv->stats_interval_ms =
        opts->stats_interval_ms > 0 ? opts->stats_interval_ms : SV_STATS_INTERVAL_MS;
    return 0;
}

/* See supervisor.h. Blocks while it stops leftovers of a previous agent. */
int kiln_supervisor_new(uv_loop_t *loop, const kiln_supervisor_options_t *opts,
                        kiln_supervisor_t **out, kiln_err_t *err)
{
    *out = NULL;
    kiln_supervisor_t *sv = calloc(1, sizeof *sv);
    if (!sv || copy_options(sv, opts) != 0) {
        if (sv) {
            free(sv->state_file);
            free(sv->log_dir);
        }
        free(sv);
        return kiln_err_set(err, KILN_ENOMEM, "supervisor: out of memory");
    }
    sv->loop = loop;
    sv->self_pid = getpid();
    sv->self_sid = getsid(0);
    sv->rand_state = uv_hrtime() ^ (uint64_t)sv->self_pid;
    int rc = 0;
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        rc = kiln_err_set(err, KILN_EIO,
                          "supervisor: cannot become a child subreaper (prctl: %m); the agent "
                          "needs Linux 3.4 or later");
    if (rc == 0)
        rc = sv_state_recover(sv, err);
    if (rc != 0) {
        free(sv->state_file);
        free(sv->log_dir);
        free(sv);
        return rc;
    }
    uv_signal_init(loop, &sv->sigchld);
    uv_timer_init(loop, &sv->stats_timer);
    uv_timer_init(loop, &sv->done_timer);
    uv_prepare_init(loop, &sv->flush);
    uv_timer_init(loop, &sv->cleanup_timer);
    sv->sigchld.data = sv->stats_timer.data = sv->done_timer.data = sv->flush.data = sv;
    sv->cleanup_timer.data = sv;
    sv->open_handles = 5;
    uv_signal_start(&sv->sigchld, on_sigchld, SIGCHLD);
    /* Neither keeps the loop alive: runs hold it through their pipes and
     * timers. The flush does while it has work: a child waits for it. */
    uv_unref((uv_handle_t *)&sv->sigchld);
    uv_unref((uv_handle_t *)&sv->stats_timer);
    *out = sv;
    return 0;
}

/* See supervisor.h. Handles close asynchronously: run the loop until it
 * returns before uv_loop_close. A run still alive is SIGKILLed. */
void kiln_supervisor_free(kiln_supervisor_t *sv)
{
    if (!sv)
        return;
    sv->on_event = NULL;
    if (sv->ended)
        sv_proc_sweep(sv, true);
    sv->freeing = true;
    while (sv->n_svcs > 0) {
        sv_service_t *svc = sv->svcs[sv->n_svcs - 1];
        sv_proc_launch_drop(svc);
        if (svc->pid > 0)
            sv_proc_signal_run(svc, SIGKILL);
        sv_service_remove(svc);
    }
    uv_close((uv_handle_t *)&sv->flush, on_sv_handle_closed);
    uv_close((uv_handle_t *)&sv->cleanup_timer, on_sv_handle_closed);
    uv_close((uv_handle_t *)&sv->sigchld, on_sv_handle_closed);
    uv_close((uv_handle_t *)&sv->stats_timer, on_sv_handle_closed);
    uv_close((uv_handle_t *)&sv->done_timer, on_sv_handle_closed);
}
