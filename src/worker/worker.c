/*
 * The worker: claims jobs its connectors can run and runs them in slots.
 *
 * One libuv loop owns the Redis connections. A "step" is the worker's one
 * call per turn (lua/step.lua): it reports every finished job of a service
 * and claims as many new ones as there are free slots, so a busy worker
 * needs one round trip per batch of jobs. Only one step is in flight at a
 * time; finished jobs that arrive meanwhile ride on the next one. An idle
 * worker waits on the queues' notify channels (woken on submit); the
 * heartbeat timer renews leases and doubles as the stalled-job sweep.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln/log.h"
#include "worker/worker_internal.h"

#define PROGRESS_INTERVAL_MS 100
#define HARD_STOP_MS         10000
#define RETRY_PAUSE_MS       1000
/* Prefetch only while jobs are this short on average: then a prefetched job
 * waits at most about this long for its slot. */
#define PREFETCH_MAX_RUN_MS 20.0

static void check_finished(kiln_worker_t *w);

static void step_call_free(kiln_step_call_t *call)
{
    if (!call)
        return;
    kiln_argv_free(&call->argv);
    free(call);
}

/* Queues one report (step.lua: id, token, kind, data, retryable) for the
 * service's next step. */
static void add_report(kiln_service_t *svc, const kiln_claimed_job_t *job, const char *kind,
                       const char *data, bool retryable)
{
    kiln_argv_add(&svc->reports, job->id, SIZE_MAX);
    kiln_argv_add(&svc->reports, job->token, SIZE_MAX);
    kiln_argv_add(&svc->reports, kind, SIZE_MAX);
    kiln_argv_add(&svc->reports, data, SIZE_MAX);
    kiln_argv_add(&svc->reports, retryable ? "1" : "0", 1);
    svc->nreports++;
}

/* Turns a finished slot's outcome into a report and frees the slot. */
static void report_outcome(kiln_worker_t *w, kiln_slot_t *slot)
{
    kiln_service_t *svc = &w->services[slot->service];
    kiln_job_outcome_t *out = &slot->outcome;
    if (!slot->released) {
        if (out->status == KILN_OUTCOME_COMPLETED)
            add_report(svc, &slot->job, "complete", out->result_json ? out->result_json : "null",
                       false);
        else if (out->status == KILN_OUTCOME_CANCELLED)
            add_report(svc, &slot->job, "fail", "cancelled", false);
        else
            add_report(svc, &slot->job, "fail", out->error ? out->error : "failed", out->retryable);
        kiln_log(KILN_LOG_DEBUG, "worker", slot->job.id, NULL, "finished in %.1f ms", slot->run_ms);
        w->run_ema_ms = w->run_ema_ms * 0.9 + slot->run_ms * 0.1;
    }
    kiln_job_outcome_clear(out);
    kiln_claimed_job_clear(&slot->job);
    slot->state = KILN_SLOT_IDLE;
}

static bool prefetch_on(const kiln_worker_t *w)
{
    return w->cfg->worker.prefetch > 0 && w->run_ema_ms < PREFETCH_MAX_RUN_MS;
}

/* How many more jobs the worker may claim now. */
static int claim_capacity(const kiln_worker_t *w)
{
    int room = kiln_slotpool_idle(&w->pool) - w->n_prefetched - w->claims_outstanding;
    if (prefetch_on(w))
        room += w->cfg->worker.prefetch;
    return room > 0 ? room : 0;
}

static void start_job(kiln_worker_t *w, kiln_slot_t *slot, kiln_claimed_job_t *job, int s)
{
    kiln_service_t *svc = &w->services[s];
    slot->job = *job;
    memset(job, 0, sizeof *job);
    slot->service = s;
    slot->service_name = svc->name;
    slot->connector = svc->connector;
    kiln_log(KILN_LOG_DEBUG, "worker", slot->job.id, NULL, "started (attempt %d)",
             slot->job.attempt);
    kiln_slotpool_run(slot);
}

/* Starts prefetched jobs, oldest first, on idle slots. */
static void start_prefetched(kiln_worker_t *w)
{
    int next = 0;
    for (int i = 0; i < w->pool.count && next < w->n_prefetched; i++) {
        if (w->pool.slots[i].state == KILN_SLOT_IDLE) {
            start_job(w, &w->pool.slots[i], &w->prefetched[next].job, w->prefetched[next].service);
            next++;
        }
    }
    memmove(w->prefetched, w->prefetched + next,
            (size_t)(w->n_prefetched - next) * sizeof *w->prefetched);
    w->n_prefetched -= next;
}

/* Builds a step for service s: its queued reports, and a claim when it may
 * find work and there is room. NULL when there is nothing to send. */
static kiln_step_call_t *build_step(kiln_worker_t *w, int s)
{
    kiln_service_t *svc = &w->services[s];
    /* Outside its active windows the worker claims nothing but still reports,
     * heartbeats and maintains; the heartbeat tick re-checks the window. */
    /* Nor does a service whose connector's last health check failed. */
    int max_claim =
        (w->stopping || !svc->maybe_work || !svc->healthy || !kiln_worker_window_open(w))
            ? 0
            : claim_capacity(w);
    bool maintain = svc->maintain && !w->stopping;
    if (svc->nreports == 0 && max_claim == 0 && !maintain)
        return NULL;
    kiln_step_call_t *call = calloc(1, sizeof *call);
    if (!call)
        return NULL;
    svc->maintain = false;
    call->w = w;
    call->service = s;
    call->max_claim = max_claim;
    call->nreports = svc->nreports;
    call->notify_gen = svc->notify_gen;
    call->script = kiln_script_get("step");
    kiln_argv_init(&call->argv);
    kiln_ops_begin(&call->argv, call->script, &w->opts, svc->name);
    kiln_ops_add_claimer(&call->argv, &w->who, max_claim);
    kiln_argv_add(&call->argv, maintain ? "1" : "0", 1);
    kiln_argv_addf(&call->argv, "%d", svc->nreports);
    call->reports_at = call->argv.count;
    for (size_t i = 0; i < svc->reports.count; i++)
        kiln_argv_add(&call->argv, svc->reports.items[i], svc->reports.lens[i]);
    kiln_argv_free(&svc->reports);
    svc->nreports = 0;
    return call;
}

static void start_claims(kiln_worker_t *w, kiln_step_call_t *call, redisReply *reply)
{
    kiln_service_t *svc = &w->services[call->service];
    int max = (int)reply->elements - 2;
    kiln_claimed_job_t *jobs = max > 0 ? calloc((size_t)max, sizeof *jobs) : NULL;
    kiln_err_t err = {0};
    int n = max > 0 && jobs ? kiln_ops_parse_claims(reply, 2, jobs, max, &err) : 0;
    if (n < 0)
        KILN_LOG_ERROR_("worker", "%s", err.msg);
    int next_slot = 0;
    for (int i = 0; i < n; i++) {
        while (next_slot < w->pool.count && w->pool.slots[next_slot].state != KILN_SLOT_IDLE)
            next_slot++;
        if (w->stopping) {
            /* Claimed by a step that was out when the stop came: hand back. */
            add_report(svc, &jobs[i], "release", "", false);
            kiln_claimed_job_clear(&jobs[i]);
        } else if (next_slot < w->pool.count) {
            start_job(w, &w->pool.slots[next_slot], &jobs[i], call->service);
        } else if (w->n_prefetched < w->cfg->worker.prefetch) {
            w->prefetched[w->n_prefetched].job = jobs[i];
            w->prefetched[w->n_prefetched++].service = call->service;
        } else { /* cannot happen: claims never exceed the room asked for */
            add_report(svc, &jobs[i], "release", "", false);
            kiln_claimed_job_clear(&jobs[i]);
        }
    }
    free(jobs);
    /* Nothing more to find, unless a wake-up came while the call was out. */
    if (n < call->max_claim && svc->notify_gen == call->notify_gen)
        svc->maybe_work = false;
}

/* Marks every service for a claim and, with maintain, for promotion of due
 * delayed jobs and recovery of stalled ones; then sends what is due. */
static void wake_all(kiln_worker_t *w, bool maintain)
{
    for (int i = 0; i < w->n_services; i++) {
        w->services[i].maybe_work = true;
        w->services[i].notify_gen++;
        w->services[i].maintain = w->services[i].maintain || maintain;
    }
    kiln_worker_pump(w);
}

bool kiln_worker_window_open(const kiln_worker_t *w)
{
    return kiln_windows_open_now(&w->windows, time(NULL));
}

static void on_due_timer(uv_timer_t *t)
{
    wake_all(t->data, true);
}

/* Wakes the worker when the earliest delayed job of a queue becomes due. */
static void arm_due_timer(kiln_worker_t *w, long long next_due_ms)
{
    if (next_due_ms <= 0) /* 0: nothing delayed; -1: not looked up */
        return;
    long long wait = next_due_ms - kiln_ops_wall_ms();
    if (wait < 1)
        wait = 1;
    if (uv_is_active((uv_handle_t *)&w->due_timer) &&
        (long long)(w->due_timer.timeout - uv_now(&w->loop)) <= wait)
        return;
    uv_timer_start(&w->due_timer, on_due_timer, (uint64_t)wait, 0);
}

static void on_retry_timer(uv_timer_t *t)
{
    kiln_worker_t *w = t->data;
    w->retry_paused = false;
    kiln_worker_pump(w);
}

/* Keeps call to send again (its reports must not be lost). */
static void keep_for_retry(kiln_worker_t *w, kiln_step_call_t *call)
{
    if (call->counted) {
        w->claims_outstanding -= call->max_claim;
        call->counted = false;
    }
    call->next = w->retry;
    w->retry = call;
}

/* Logs reports Redis refused, and confirms jobs handed back at shutdown. */
static void log_report_statuses(kiln_step_call_t *call, redisReply *statuses)
{
    int released = 0;
    for (size_t i = 0; i < statuses->elements && (int)i < call->nreports; i++) {
        const char *status = statuses->element[i]->str;
        const char *id = call->argv.items[call->reports_at + 5 * i];
        bool ok = status && strcmp(status, "ok") == 0;
        if (ok && strcmp(call->argv.items[call->reports_at + 5 * i + 2], "release") == 0)
            released++;
        else if (!ok)
            kiln_log(KILN_LOG_WARN, "worker", id, NULL,
                     "report refused (%s): the job was cancelled or its lease passed to another "
                     "worker",
                     status ? status : "malformed");
    }
    if (released)
        KILN_LOG_INFO_("worker", "handed %d unfinished jobs back to the queue", released);
}

static void on_step_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    kiln_step_call_t *call = privdata;
    kiln_worker_t *w = call->w;
    redisReply *reply = r;
    w->inflight--;
    if (reply && reply->type == REDIS_REPLY_ERROR &&
        kiln_ops_noscript_fallback(&call->argv, reply, call->script)) {
        keep_for_retry(w, call); /* Redis lost its script cache: send the source */
        kiln_worker_pump(w);
        return;
    }
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2) {
        keep_for_retry(w, call);
        if (reply) {
            KILN_LOG_ERROR_("worker", "step on %s refused: %s; retrying in %d ms",
                            w->services[call->service].name,
                            reply->type == REDIS_REPLY_ERROR ? reply->str : "malformed reply",
                            RETRY_PAUSE_MS);
            w->retry_paused = true;
            uv_timer_start(&w->retry_timer, on_retry_timer, RETRY_PAUSE_MS, 0);
        }
        return;
    }
    w->claims_outstanding -= call->max_claim;
    log_report_statuses(call, reply->element[1]);
    start_claims(w, call, reply);
    arm_due_timer(w, reply->element[0]->integer);
    step_call_free(call);
    kiln_worker_pump(w);
}

static kiln_step_call_t *next_step(kiln_worker_t *w)
{
    kiln_step_call_t *call = w->retry;
    if (call) {
        w->retry = call->next;
        call->next = NULL;
        return call;
    }
    for (int i = 0; !call && i < w->n_services; i++) {
        int s = (w->next_service + i) % w->n_services;
        if (w->services[s].nreports)
            call = build_step(w, s);
    }
    for (int i = 0; !call && i < w->n_services; i++) {
        int s = (w->next_service + i) % w->n_services;
        call = build_step(w, s);
        if (call)
            w->next_service = (s + 1) % w->n_services;
    }
    return call;
}

/* Sends due steps: up to KILN_STEPS_IN_FLIGHT at a time, so Redis runs one
 * while the worker dispatches the reply of the other. */
void kiln_worker_pump(kiln_worker_t *w)
{
    while (w->cmd_ready && !w->retry_paused && w->inflight < KILN_STEPS_IN_FLIGHT) {
        kiln_step_call_t *call = next_step(w);
        if (!call)
            break;
        if (kiln_worker_send(w, &call->argv, on_step_reply, call) != 0) {
            keep_for_retry(w, call);
            kiln_worker_redis_lost(w, "cannot send");
            return;
        }
        w->inflight++;
        w->claims_outstanding += call->max_claim;
        call->counted = true;
    }
    check_finished(w);
}

/* Forgets prefetched jobs of service s for which drop(job id) holds. */
static void drop_prefetched(kiln_worker_t *w, int s, const char *id)
{
    int kept = 0;
    for (int i = 0; i < w->n_prefetched; i++) {
        kiln_prefetched_t *p = &w->prefetched[i];
        if (p->service == s && strcmp(p->job.id, id) == 0) {
            kiln_log(KILN_LOG_INFO, "worker", id, NULL, "dropped before it started");
            kiln_claimed_job_clear(&p->job);
        } else {
            w->prefetched[kept++] = *p;
        }
    }
    w->n_prefetched = kept;
}

void kiln_worker_on_notify(kiln_worker_t *w, const char *channel, const char *message)
{
    for (int i = 0; i < w->n_services; i++) {
        if (strcmp(w->services[i].channel, channel) != 0)
            continue;
        if (strcmp(message, "work") == 0 || strcmp(message, "due") == 0) {
            w->services[i].maybe_work = true;
            w->services[i].notify_gen++;
            w->services[i].maintain = w->services[i].maintain || message[0] == 'd';
            kiln_worker_pump(w);
        } else if (strncmp(message, "cancel ", 7) == 0) {
            const char *id = message + 7;
            drop_prefetched(w, i, id);
            for (int s = 0; s < w->pool.count; s++) {
                kiln_slot_t *slot = &w->pool.slots[s];
                if (slot->state == KILN_SLOT_RUNNING && strcmp(slot->job.id, id) == 0) {
                    kiln_log(KILN_LOG_INFO, "worker", slot->job.id, NULL, "cancelled; stopping");
                    kiln_slot_cancel(slot);
                }
            }
        }
    }
}

void kiln_worker_on_subscribed(kiln_worker_t *w)
{
    wake_all(w, false);
}

/* Adds the ids of jobs the worker holds for service s (running, claimed
 * ahead, finished but not yet reported, or in a step to be sent again). */
static void add_known_ids(kiln_worker_t *w, int s, kiln_argv_t *a)
{
    for (int i = 0; i < w->pool.count; i++) {
        const kiln_slot_t *slot = &w->pool.slots[i];
        if (slot->state != KILN_SLOT_IDLE && slot->service == s)
            kiln_argv_add(a, slot->job.id, SIZE_MAX);
    }
    for (int i = 0; i < w->n_prefetched; i++) {
        if (w->prefetched[i].service == s)
            kiln_argv_add(a, w->prefetched[i].job.id, SIZE_MAX);
    }
    const kiln_service_t *svc = &w->services[s];
    for (size_t i = 0; i < svc->reports.count; i += 5)
        kiln_argv_add(a, svc->reports.items[i], svc->reports.lens[i]);
    for (const kiln_step_call_t *c = w->retry; c; c = c->next) {
        for (int r = 0; c->service == s && r < c->nreports; r++)
            kiln_argv_add(a, c->argv.items[c->reports_at + 5 * (size_t)r], SIZE_MAX);
    }
}

static void on_release_lost_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        KILN_LOG_WARN_("worker",
                       "handed back %lld jobs claimed by a reply lost with the connection",
                       reply->integer);
    else if (reply && reply->type == REDIS_REPLY_ERROR)
        KILN_LOG_WARN_("worker", "release of lost claims refused: %s", reply->str);
}

/* After a reconnect: claims whose reply was lost with the connection go
 * back to their queues at once, not after their lease expires. Sent before
 * any step, so a step sent again cannot race it. */
static void release_lost_claims(kiln_worker_t *w)
{
    const kiln_script_t *script = kiln_script_get("release_lost");
    for (int s = 0; s < w->n_services; s++) {
        kiln_argv_t a;
        kiln_argv_init(&a);
        kiln_ops_begin(&a, script, &w->opts, w->services[s].name);
        kiln_argv_add(&a, w->who.id, SIZE_MAX);
        kiln_argv_add(&a, w->who.session, SIZE_MAX);
        add_known_ids(w, s, &a);
        kiln_worker_send(w, &a, on_release_lost_reply, NULL);
        kiln_argv_free(&a);
    }
}

void kiln_worker_on_connected(kiln_worker_t *w)
{
    release_lost_claims(w);
    kiln_worker_register(w);
    kiln_worker_redis_connect(w); /* the subscriber, if it was lost too */
    wake_all(w, true);
}

/* ---- Leases and progress ------------------------------------------------ */

/* A batched heartbeat or progress call: the jobs it names. A slot index of
 * -1 marks a prefetched job. */
typedef struct lease_call {
    kiln_worker_t *w;
    int service;
    int n;
    int *slots;
    char (*ids)[KILN_JOB_ID_MAX];
    kiln_argv_t argv; /* kept to send again with the source on NOSCRIPT */
    const kiln_script_t *script;
} lease_call_t;

static void lease_call_free(lease_call_t *call)
{
    kiln_argv_free(&call->argv);
    free(call->slots);
    free(call->ids);
    free(call);
}

/* A job whose lease is gone (cancelled, expired, taken) must stop. */
static void on_lease_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    lease_call_t *call = privdata;
    kiln_worker_t *w = call->w;
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_ERROR &&
        kiln_ops_noscript_fallback(&call->argv, reply, call->script)) {
        /* Redis lost its scripts (SCRIPT FLUSH): send the source, reload. */
        kiln_worker_load_scripts(w);
        if (kiln_worker_send(w, &call->argv, on_lease_reply, call) != 0)
            lease_call_free(call);
        return;
    }
    for (size_t i = 0;
         reply && reply->type == REDIS_REPLY_ARRAY && i < reply->elements && (int)i < call->n;
         i++) {
        const char *status = reply->element[i]->str;
        if (!status || strcmp(status, "ok") == 0)
            continue;
        if (call->slots[i] < 0) {
            drop_prefetched(w, call->service, call->ids[i]);
            continue;
        }
        kiln_slot_t *slot = &w->pool.slots[call->slots[i]];
        if (slot->state == KILN_SLOT_RUNNING && strcmp(slot->job.id, call->ids[i]) == 0) {
            kiln_log(KILN_LOG_WARN, "worker", slot->job.id, NULL, "lease %s; stopping the job",
                     status);
            kiln_slot_cancel(slot);
        }
    }
    if (reply && reply->type == REDIS_REPLY_ERROR)
        KILN_LOG_WARN_("worker", "lease call refused: %s", reply->str);
    lease_call_free(call);
}

static void lease_entry(lease_call_t *call, kiln_argv_t *entries, int slot,
                        const kiln_claimed_job_t *job)
{
    kiln_argv_add(entries, job->id, SIZE_MAX);
    kiln_argv_add(entries, job->token, SIZE_MAX);
    call->slots[call->n] = slot;
    snprintf(call->ids[call->n++], KILN_JOB_ID_MAX, "%s", job->id);
}

/* Sends one call of script_name for service s naming the jobs that want
 * it: heartbeat (running and prefetched jobs) or progress (running jobs
 * with new progress). */
static void send_lease_call(kiln_worker_t *w, int s, const char *script_name, bool progress)
{
    int room = w->pool.count + w->n_prefetched;
    lease_call_t *call = calloc(1, sizeof *call);
    if (!call || !(call->slots = calloc((size_t)room, sizeof *call->slots)) ||
        !(call->ids = calloc((size_t)room, KILN_JOB_ID_MAX))) {
        if (call)
            lease_call_free(call);
        return;
    }
    call->w = w;
    call->service = s;
    kiln_argv_t entries;
    kiln_argv_init(&entries);
    for (int i = 0; i < w->pool.count; i++) {
        kiln_slot_t *slot = &w->pool.slots[i];
        double percent;
        char message[256];
        if (slot->state != KILN_SLOT_RUNNING || slot->service != s ||
            (progress && !kiln_slot_take_progress(slot, &percent, message, sizeof message)))
            continue;
        lease_entry(call, &entries, i, &slot->job);
        if (progress) {
            kiln_argv_addf(&entries, "%.1f", percent);
            kiln_argv_add(&entries, message, SIZE_MAX);
        }
    }
    for (int i = 0; !progress && i < w->n_prefetched; i++) {
        if (w->prefetched[i].service == s)
            lease_entry(call, &entries, -1, &w->prefetched[i].job);
    }
    call->script = kiln_script_get(script_name);
    kiln_argv_t *a = &call->argv;
    kiln_argv_init(a);
    kiln_ops_begin(a, call->script, &w->opts, w->services[s].name);
    kiln_argv_addf(a, "%d", call->n);
    for (size_t i = 0; i < entries.count; i++)
        kiln_argv_add(a, entries.items[i], entries.lens[i]);
    kiln_argv_free(&entries);
    if (call->n == 0 || kiln_worker_send(w, a, on_lease_reply, call) != 0)
        lease_call_free(call);
}

static void on_heartbeat_timer(uv_timer_t *t)
{
    kiln_worker_t *w = t->data;
    for (int s = 0; s < w->n_services; s++)
        send_lease_call(w, s, "heartbeat", false);
    /* The same tick sweeps: recovers stalled jobs of others, promotes due
     * delayed jobs, and finds work whose notification was missed while
     * Redis was away. */
    wake_all(w, true);
}

static void on_registry_timer(uv_timer_t *t)
{
    kiln_worker_register(t->data);
}

static void flush_progress(kiln_worker_t *w)
{
    w->last_progress_ms = kiln_worker_now_ms();
    for (int s = 0; s < w->n_services; s++)
        send_lease_call(w, s, "progress", true);
}

static void on_progress_timer(uv_timer_t *t)
{
    flush_progress(t->data);
}

/* ---- Slots finishing, shutdown ------------------------------------------ */

static void begin_shutdown(kiln_worker_t *w);

static void on_wakeup(uv_async_t *handle)
{
    kiln_worker_t *w = handle->data;
    if (atomic_load(&w->stop_requested) && !w->stopping)
        begin_shutdown(w);
    kiln_slot_t *done = kiln_slotpool_take_done(&w->pool);
    while (done) {
        kiln_slot_t *next = done->next_done;
        report_outcome(w, done);
        done = next;
    }
    if (!w->stopping)
        start_prefetched(w);
    pthread_mutex_lock(&w->pool.done_mu);
    bool progress = w->pool.progress_pending;
    w->pool.progress_pending = false;
    pthread_mutex_unlock(&w->pool.done_mu);
    if (progress && !uv_is_active((uv_handle_t *)&w->progress_timer)) {
        int64_t since = kiln_worker_now_ms() - w->last_progress_ms;
        if (since >= PROGRESS_INTERVAL_MS)
            flush_progress(w);
        else
            uv_timer_start(&w->progress_timer, on_progress_timer,
                           (uint64_t)(PROGRESS_INTERVAL_MS - since), 0);
    }
    kiln_worker_pump(w);
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Stops everything; uv_run returns once the connections have flushed. */
static void finish(kiln_worker_t *w, bool force)
{
    if (w->closing)
        return;
    KILN_LOG_INFO_("worker", "stopped");
    kiln_worker_deregister(w);
    kiln_worker_redis_close(w, force);
    uv_handle_t *handles[] = {
        (uv_handle_t *)&w->wakeup,          (uv_handle_t *)&w->sigterm,
        (uv_handle_t *)&w->sigint,          (uv_handle_t *)&w->heartbeat_timer,
        (uv_handle_t *)&w->registry_timer,  (uv_handle_t *)&w->due_timer,
        (uv_handle_t *)&w->reconnect_timer, (uv_handle_t *)&w->grace_timer,
        (uv_handle_t *)&w->progress_timer,  (uv_handle_t *)&w->hard_stop_timer,
        (uv_handle_t *)&w->retry_timer,     (uv_handle_t *)&w->health_timer};
    for (size_t i = 0; i < sizeof handles / sizeof handles[0]; i++)
        close_handle(handles[i]);
}

static void check_finished(kiln_worker_t *w)
{
    if (!w->stopping || w->closing || w->inflight || w->retry || w->n_prefetched)
        return;
    for (int i = 0; i < w->n_services; i++) {
        if (w->services[i].nreports)
            return;
    }
    if (kiln_slotpool_idle(&w->pool) == w->pool.count)
        finish(w, false);
}

static void finish_on_timer(uv_timer_t *t)
{
    kiln_worker_t *w = t->data;
    KILN_LOG_WARN_("worker", "jobs or reports still open %d ms after the grace period; exiting",
                   HARD_STOP_MS);
    w->abandoned = kiln_slotpool_idle(&w->pool) < w->pool.count;
    finish(w, true);
}

/* The grace period is over: running jobs go back to pending (attempt not
 * counted) and their connectors are told to stop. */
static void on_grace_timer(uv_timer_t *t)
{
    kiln_worker_t *w = t->data;
    if (w->releasing)
        return;
    w->releasing = true;
    int released = 0;
    for (int i = 0; i < w->pool.count; i++) {
        kiln_slot_t *slot = &w->pool.slots[i];
        if (slot->state != KILN_SLOT_RUNNING || slot->released)
            continue;
        add_report(&w->services[slot->service], &slot->job, "release", "", false);
        slot->released = true;
        kiln_slot_cancel(slot);
        released++;
    }
    if (released)
        KILN_LOG_INFO_("worker", "handing %d unfinished jobs back to the queue", released);
    uv_timer_start(&w->hard_stop_timer, finish_on_timer, HARD_STOP_MS, 0);
    kiln_worker_pump(w);
}

static void begin_shutdown(kiln_worker_t *w)
{
    if (w->stopping) {
        on_grace_timer(&w->grace_timer); /* a second signal: hand jobs back now */
        return;
    }
    w->stopping = true;
    /* Jobs claimed ahead go straight back, attempt not counted. */
    for (int i = 0; i < w->n_prefetched; i++) {
        kiln_prefetched_t *p = &w->prefetched[i];
        add_report(&w->services[p->service], &p->job, "release", "", false);
        kiln_claimed_job_clear(&p->job);
    }
    w->n_prefetched = 0;
    int busy = w->pool.count - kiln_slotpool_idle(&w->pool);
    KILN_LOG_INFO_("worker", "stopping: no new claims; %d running jobs get %ld ms to finish", busy,
                   w->cfg->worker.shutdown_grace_ms);
    uv_timer_start(&w->grace_timer, on_grace_timer, (uint64_t)w->cfg->worker.shutdown_grace_ms, 0);
    kiln_worker_pump(w);
}

static void on_signal(uv_signal_t *handle, int signum)
{
    kiln_worker_t *w = handle->data;
    KILN_LOG_INFO_("worker", "received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    begin_shutdown(w);
}

/* ---- Construction ------------------------------------------------------- */

static int add_services(kiln_worker_t *w, const kiln_config_t *cfg, kiln_err_t *err)
{
    if (cfg->worker.n_connectors == 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "worker.connectors: empty; name at least one connector, e.g. "
                            "--connectors simulation or WORKER_CONNECTORS=simulation");
    w->services = calloc(cfg->worker.n_connectors, sizeof *w->services);
    if (!w->services)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    for (size_t i = 0; i < cfg->worker.n_connectors; i++) {
        const char *name = cfg->worker.connectors[i];
        /* The config defines every listed name (a name without a definition
         * is a connector of that type: kiln_config_load, kiln_config_set_flag). */
        const kiln_connector_config_t *cc = kiln_config_connector(cfg, name);
        if (!cc)
            return kiln_err_set(err, KILN_EINVAL,
                                "worker.connectors: \"%s\" has no connector definition", name);
        kiln_service_t *svc = &w->services[w->n_services];
        kiln_connector_config_t with_redis = *cc;
        with_redis.redis_url = cfg->redis_url;
        int rc = kiln_connector_new(&with_redis, &svc->connector, err);
        if (rc != 0)
            return rc;
        svc->name = strdup(name);
        snprintf(svc->channel, sizeof svc->channel, "kiln:{%s}:notify", name);
        w->n_services++;
    }
    return 0;
}

int kiln_worker_new(const kiln_config_t *cfg, kiln_worker_t **out, kiln_err_t *err)
{
    *out = NULL;
    kiln_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    w->cfg = cfg;
    w->ready_fd = -1;
    /* No prefetch until a run of short jobs has been seen. */
    w->run_ema_ms = 2 * PREFETCH_MAX_RUN_MS;
    kiln_broker_options_from_config(&w->opts, cfg);
    gethostname(w->host, sizeof w->host - 1);
    char id[160];
    if (cfg->worker.id)
        snprintf(id, sizeof id, "%s", cfg->worker.id);
    else
        snprintf(id, sizeof id, "%.100s-%d", cfg->machine_id ? cfg->machine_id : w->host,
                 (int)getpid());
    int rc = kiln_redis_url_parse(cfg->redis_url, &w->url, err);
    if (!rc)
        rc = kiln_worker_identity_init(&w->who, id, cfg->machine_id, cfg->worker.capabilities, err);
    if (!rc)
        rc = add_services(w, cfg, err);
    if (!rc && cfg->worker.active_windows)
        rc = kiln_windows_parse(cfg->worker.active_windows, "worker.active_windows", &w->windows,
                                err);
    if (!rc && cfg->worker.prefetch > 0 &&
        !(w->prefetched = calloc((size_t)cfg->worker.prefetch, sizeof *w->prefetched)))
        rc = kiln_err_set(err, KILN_ENOMEM, "out of memory");
    if (rc) {
        kiln_worker_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static void init_timer(kiln_worker_t *w, uv_timer_t *t)
{
    uv_timer_init(&w->loop, t);
    t->data = w;
}

static int init_loop(kiln_worker_t *w, kiln_err_t *err)
{
    if (uv_loop_init(&w->loop) != 0)
        return kiln_err_set(err, KILN_EIO, "cannot create the event loop");
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_t *timers[] = {&w->heartbeat_timer, &w->registry_timer, &w->due_timer,
                            &w->reconnect_timer, &w->grace_timer,    &w->progress_timer,
                            &w->hard_stop_timer, &w->retry_timer,    &w->health_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        init_timer(w, timers[i]);
    uv_signal_init(&w->loop, &w->sigterm);
    uv_signal_init(&w->loop, &w->sigint);
    w->sigterm.data = w->sigint.data = w;
    uv_signal_start(&w->sigterm, on_signal, SIGTERM);
    uv_signal_start(&w->sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    return kiln_slotpool_init(&w->pool, w->cfg->worker.concurrency, &w->wakeup, err);
}

int kiln_worker_run(kiln_worker_t *w, kiln_err_t *err)
{
    int rc = init_loop(w, err);
    if (rc)
        return rc;
    w->started_ms = kiln_ops_wall_ms();
    long heartbeat_ms =
        w->cfg->worker.heartbeat_ms > 0 ? w->cfg->worker.heartbeat_ms : w->cfg->broker.lease_ms / 3;
    uv_timer_start(&w->heartbeat_timer, on_heartbeat_timer, (uint64_t)heartbeat_ms,
                   (uint64_t)heartbeat_ms);
    long registry_ms = w->cfg->worker.registry_ttl_ms / 3;
    uv_timer_start(&w->registry_timer, on_registry_timer, (uint64_t)registry_ms,
                   (uint64_t)registry_ms);
    kiln_log(KILN_LOG_INFO, "worker", NULL, NULL, "worker %s starting: %d slots, %d services",
             w->who.id, w->pool.count, w->n_services);
    kiln_worker_redis_connect(w);
    kiln_worker_health_start(w);
    if (atomic_load(&w->stop_requested))
        begin_shutdown(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (!w->abandoned)
        kiln_slotpool_close(&w->pool);
    if (uv_loop_close(&w->loop) != 0)
        KILN_LOG_WARN_("worker", "event loop closed with handles still open");
    if (w->abandoned)
        return kiln_err_set(err, KILN_ETIMEOUT, "some jobs did not stop in time");
    return 0;
}

void kiln_worker_stop(kiln_worker_t *w)
{
    atomic_store(&w->stop_requested, 1);
    if (w->wakeup.loop)
        uv_async_send(&w->wakeup);
}

void kiln_worker_set_ready_fd(kiln_worker_t *w, int fd)
{
    if (w->ready_fd >= 0)
        close(w->ready_fd);
    w->ready_fd = fd;
}

void kiln_worker_free(kiln_worker_t *w)
{
    if (!w)
        return;
    if (w->ready_fd >= 0)
        close(w->ready_fd);
    for (int i = 0; i < w->n_services; i++) {
        kiln_connector_free(w->services[i].connector);
        kiln_argv_free(&w->services[i].reports);
        free(w->services[i].name);
    }
    free(w->services);
    while (w->retry) {
        kiln_step_call_t *next = w->retry->next;
        step_call_free(w->retry);
        w->retry = next;
    }
    for (int i = 0; i < w->n_prefetched; i++)
        kiln_claimed_job_clear(&w->prefetched[i].job);
    free(w->prefetched);
    kiln_worker_identity_clear(&w->who);
    free(w);
}
