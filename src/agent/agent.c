/*
 * The machine agent: wires the config, GPU discovery, the service plan, the
 * supervisor and the status publisher on one libuv loop.
 */
#include "kiln/agent.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "agent/agent_internal.h"
#include "broker/ops.h"
#include "kiln/log.h"

/* A setup step's done marker names its argv, so a changed step runs again. */
static char *done_marker(const kiln_agent_t *a, const kiln_plan_service_t *ps)
{
    unsigned long hash = 5381;
    for (size_t i = 0; ps->argv && ps->argv[i]; i++) {
        for (const char *c = ps->argv[i]; *c; c++)
            hash = hash * 33 + (unsigned char)*c;
        hash *= 33; /* an argument boundary counts too */
    }
    char *path = NULL;
    if (asprintf(&path, "%s/%s.%08lx.done", a->state_dir, ps->name, hash & 0xffffffffUL) < 0)
        return NULL;
    return path;
}

/* One planned service as a supervisor spec. The spec borrows the plan's
 * strings (kiln_supervisor_apply copies what it keeps); only its done
 * marker is its own (kiln_agent_specs_free). */
static int spec_from_plan(const kiln_agent_t *a, const kiln_plan_service_t *ps,
                          kiln_svc_spec_t *spec)
{
    kiln_svc_spec_init(spec);
    spec->name = ps->name;
    spec->argv = ps->argv;
    spec->env = ps->env;
    spec->cwd = ps->cwd;
    spec->depends_on = ps->depends_on;
    spec->oneshot = ps->kind == KILN_SERVICE_SETUP || ps->ready.kind == KILN_READY_EXIT;
    spec->restart = ps->restart;
    if (ps->backoff_ms >= 0)
        spec->backoff_base_ms = ps->backoff_ms;
    if (spec->backoff_max_ms < spec->backoff_base_ms) /* a first delay past the default cap */
        spec->backoff_max_ms = spec->backoff_base_ms;
    if (ps->ready_timeout_ms >= 0)
        spec->ready.deadline_ms = ps->ready_timeout_ms;
    if (ps->stop_timeout_ms >= 0)
        spec->stop_timeout_ms = ps->stop_timeout_ms;
    if (ps->memory_limit_mb > 0)
        spec->memory_limit_mb = ps->memory_limit_mb;
    spec->ready.kind = ps->ready.kind == KILN_READY_EXIT ? KILN_READY_NONE : ps->ready.kind;
    spec->ready.target = ps->ready.target;
    spec->ready.argv = ps->ready.command;
    if (ps->kind == KILN_SERVICE_WORKER || ps->kind == KILN_SERVICE_CONNECTOR) {
        /* A kiln worker given SIGTERM lets running jobs finish for its grace
         * period, then hands the rest back; SIGKILL must not come sooner. */
        spec->stop_timeout_ms = a->cfg.worker.shutdown_grace_ms + 15000;
    }
    if (spec->oneshot && ps->downloads_for) {
        /* A download step runs at every start (a file already there costs
         * a sha256 pass) and has no overall timeout: kiln_download gives
         * up on a stalled transfer itself, and a model may take hours. */
        spec->oneshot_timeout_ms = 0;
    } else if (spec->oneshot) {
        /* Install/setup steps: bounded by machine.install_timeout_s, and
         * skipped once done (until their command changes). */
        spec->oneshot_timeout_ms = a->cfg.machine.install_timeout_s * 1000L;
        if (!(spec->done_marker = done_marker(a, ps)))
            return KILN_ENOMEM;
    }
    return 0;
}

int kiln_agent_specs_from_plan(const kiln_agent_t *a, const kiln_plan_t *plan,
                               kiln_svc_spec_t **specs, size_t *n, kiln_err_t *err)
{
    *specs = calloc(plan->count ? plan->count : 1, sizeof **specs);
    *n = 0;
    if (!*specs)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    for (size_t i = 0; i < plan->count; i++) {
        if (spec_from_plan(a, &plan->services[i], &(*specs)[i]) != 0) {
            kiln_agent_specs_free(*specs, i);
            *specs = NULL;
            return kiln_err_set(err, KILN_ENOMEM, "out of memory");
        }
        *n = i + 1;
    }
    return 0;
}

void kiln_agent_specs_free(kiln_svc_spec_t *specs, size_t n)
{
    for (size_t i = 0; specs && i < n; i++)
        free(specs[i].done_marker);
    free(specs);
}

/* Discovers GPUs as the config says (override, has_gpu) and builds the plan. */
static int build_plan(kiln_agent_t *a, kiln_plan_t *plan, kiln_err_t *err)
{
    kiln_gpu_list_free(&a->gpus);
    kiln_gpu_options_t gopts = {.override_count = a->cfg.machine.gpu_count};
    if (a->gpu_override >= 0)
        gopts.override_count = a->gpu_override;
    if (!a->cfg.machine.has_gpu)
        gopts.override_count = 0;
    int rc = kiln_gpu_discover(&gopts, &a->gpus, err);
    if (rc)
        return rc;
    kiln_agent_event(a, "startup",
                     json_pack("{s:s, s:i, s:s}", "phase", "gpus", "count", (int)a->gpus.count,
                               "source", a->gpus.source));
    kiln_plan_options_t popts = {.kiln_path = a->kiln_path};
    return kiln_plan_build_with(&a->cfg, &a->gpus, &popts, plan, err);
}

/* Builds the plan and reconciles the supervisor with it. */
static void update_readiness(kiln_agent_t *a);

int kiln_agent_apply_plan(kiln_agent_t *a, kiln_err_t *err)
{
    kiln_plan_t plan = {0};
    int rc = build_plan(a, &plan, err);
    kiln_svc_spec_t *specs = NULL;
    size_t n = 0;
    if (!rc)
        rc = kiln_agent_specs_from_plan(a, &plan, &specs, &n, err);
    if (rc) {
        kiln_plan_free(&plan);
        return rc;
    }
    /* The new plan is in place while the supervisor applies it: readiness,
     * judged from its events, must count the new services, not the old. */
    kiln_plan_t old = a->plan;
    a->plan = plan;
    rc = kiln_supervisor_apply(a->sv, specs, n, err);
    kiln_agent_specs_free(specs, n);
    if (rc) {
        a->plan = old;
        kiln_plan_free(&plan);
        return rc;
    }
    kiln_plan_free(&old);
    kiln_agent_downloads_follow(a);
    kiln_agent_event(a, "startup",
                     json_pack("{s:s, s:i}", "phase", "plan", "services", (int)plan.count));
    update_readiness(a);
    return 0;
}

void kiln_agent_event(kiln_agent_t *a, const char *type, json_t *fields)
{
    if (a->pub)
        kiln_publisher_event(a->pub, type, fields);
    json_decref(fields);
}

static const char *machine_type_name(kiln_machine_type_t type)
{
    static const char *const names[] = {"auto", "gpu", "api", "hybrid"};
    return type >= KILN_MACHINE_AUTO && type <= KILN_MACHINE_HYBRID ? names[type] : "auto";
}

json_t *kiln_agent_status(kiln_agent_t *a)
{
    /* GPU load changes all the time; NVML reads it in microseconds. Every
     * published status and every /status call comes through here. */
    kiln_gpu_refresh(&a->gpus, NULL);
    json_t *services = a->sv ? kiln_supervisor_status(a->sv) : json_array();
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:s, s:I, s:I, s:O}", "machine_id",
                     a->cfg.machine_id ? a->cfg.machine_id : "", "machine_type",
                     machine_type_name(a->plan.machine_type), "state", a->state, "services",
                     services ? services : json_array(), "gpus", kiln_gpu_list_to_json(&a->gpus),
                     "gpu_source", a->gpus.source, "started_at", (json_int_t)a->started_ms,
                     "updated_at", (json_int_t)kiln_ops_wall_ms(), "downloads", a->downloads);
}

void kiln_agent_publish_status(kiln_agent_t *a)
{
    json_t *status = kiln_agent_status(a);
    if (status && a->pub)
        kiln_publisher_status(a->pub, status);
    json_decref(status);
}

void kiln_agent_on_status_timer(uv_timer_t *t)
{
    kiln_agent_publish_status(t->data);
}

void kiln_agent_publish_soon(kiln_agent_t *a)
{
    if (!uv_is_active((uv_handle_t *)&a->publish_soon_timer))
        uv_timer_start(&a->publish_soon_timer, kiln_agent_on_status_timer, 100, 0);
}

/* Ready once every planned service runs (or, for steps, has finished).
 * Uses the states the supervisor's events reported: a full status would
 * read /proc for every process, on every state change. */
static void update_readiness(kiln_agent_t *a)
{
    if (a->stopping || strcmp(a->state, "ready") == 0)
        return;
    bool all = true;
    for (size_t i = 0; all && i < a->plan.count; i++) {
        const char *st =
            json_string_value(json_object_get(a->service_states, a->plan.services[i].name));
        all = st && (!strcmp(st, "running") || !strcmp(st, "exited"));
    }
    if (all) {
        a->state = "ready";
        KILN_LOG_INFO_("agent", "machine %s ready", a->cfg.machine_id);
        kiln_agent_event(a, "startup", json_pack("{s:s}", "phase", "ready"));
    }
}

/* A worker's lifecycle as the source documents name it. */
static const char *worker_phase(const char *state, int *progress)
{
    static const struct {
        const char *state, *phase;
        int progress;
    } phases[] = {{"waiting", "configuring", 25}, {"starting", "starting", 60},
                  {"running", "ready", 100},      {"backoff", "starting", 60},
                  {"failed", "failed", 0},        {NULL, NULL, 0}};
    for (size_t i = 0; phases[i].state; i++) {
        if (state && strcmp(state, phases[i].state) == 0) {
            *progress = phases[i].progress;
            return phases[i].phase;
        }
    }
    return NULL;
}

static void phase_event(kiln_agent_t *a, const char *service, const char *phase, int progress,
                        const char *reason)
{
    json_t *f = json_pack("{s:s, s:s, s:i, s:n}", "worker", service, "phase", phase, "progress",
                          progress, "eta_ms");
    if (reason)
        json_object_set_new(f, "reason", json_string(reason));
    kiln_agent_event(a, "worker_phase", f);
}

/* Lifecycle phases of workers and of services with downloads: announcing
 * when it leaves down, downloading while its download step runs (the
 * step's progress lines come from agent_downloads.c), configuring once the
 * step is done or while it waits for other dependencies, then starting,
 * ready or failed. */
static void publish_phases(kiln_agent_t *a, const char *service, json_t *fields)
{
    const char *to = json_string_value(json_object_get(fields, "to"));
    const char *from = json_string_value(json_object_get(fields, "from"));
    const char *owner = kiln_agent_downloads_owner(a, service);
    if (owner && to && strcmp(to, "exited") == 0) {
        phase_event(a, owner, "configuring", 25, NULL);
        return;
    }
    const char *step_state = kiln_agent_downloads_step_state(a, service);
    if (strncmp(service, "worker-", 7) != 0 && !step_state)
        return;
    int progress = 0;
    const char *phase = worker_phase(to, &progress);
    if (from && strcmp(from, "down") == 0)
        phase_event(a, service, "announcing", 0, NULL);
    if (phase && strcmp(to, "waiting") == 0 && step_state && strcmp(step_state, "exited") != 0) {
        phase = "downloading";
        progress = 0;
    }
    if (phase)
        phase_event(a, service, phase, progress,
                    json_string_value(json_object_get(fields, "reason")));
}

/* How long a service's events wait before the publisher thread is woken
 * to write them (with any that follow in the meantime) to Redis. A
 * respawn's new process is then exec'd and loading (about 1 ms) without
 * the publisher thread and Redis taking a CPU from it: on a busy 2-core
 * machine that halved the measured respawn (docs/supervisor.md). */
#define EVENT_DELAY_MS 10

static void on_publish_release(uv_timer_t *h)
{
    kiln_agent_t *a = h->data;
    if (a->pub)
        kiln_publisher_hold(a->pub, false);
}

/* Holds the publisher until EVENT_DELAY_MS after the first of a burst of
 * events: an exit's events are written after its respawn has started. */
static void hold_publisher(kiln_agent_t *a)
{
    if (!a->pub || uv_is_active((uv_handle_t *)&a->publish_release))
        return;
    kiln_publisher_hold(a->pub, true);
    uv_timer_start(&a->publish_release, on_publish_release, EVENT_DELAY_MS, 0);
}

void kiln_agent_on_supervisor_event(void *ctx, const char *service, const char *event,
                                    json_t *fields)
{
    kiln_agent_t *a = ctx;
    hold_publisher(a);
    json_t *copy = fields ? json_deep_copy(fields) : json_object();
    json_object_set_new(copy, "service", json_string(service));
    kiln_agent_event(a, strcmp(event, "alert") == 0 ? "alert" : "service_state", copy);
    const char *to = json_string_value(json_object_get(fields, "to"));
    if (to && strcmp(event, "state") == 0) {
        json_object_set_new(a->service_states, service, json_string(to));
        publish_phases(a, service, fields);
    }
    update_readiness(a);
    kiln_agent_publish_soon(a);
}
