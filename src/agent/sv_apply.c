/*
 * Reconciling the service set (apply) and the operator commands (start,
 * stop, restart, shutdown). Everything that can fail is done before the
 * first change, so a refused apply changes nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "agent/sv_internal.h"

static int not_found(const char *name, kiln_err_t *err)
{
    return kiln_err_set(err, KILN_ENOTFOUND,
                        "service %s: no such service; check the name against the machine's "
                        "service list",
                        name);
}

static bool live(const sv_service_t *svc)
{
    return svc->pid > 0;
}

/* Stops svc's run (if any) with `after` to follow; without a run, applies
 * the follow-up at once. */
static void stop_then(sv_service_t *svc, sv_after_t after)
{
    if (live(svc)) {
        svc->after_stop = after;
        if (svc->state != KILN_SVC_STOPPING)
            sv_dispatch(svc, SV_EV_STOP);
        return;
    }
    if (after == SV_AFTER_REMOVE) {
        uv_timer_stop(&svc->timer);
        sv_service_remove(svc);
        return;
    }
    sv_dispatch(svc, SV_EV_STOP);
    if (after == SV_AFTER_RESTART)
        sv_dispatch(svc, SV_EV_START);
}

static int grow_list(kiln_supervisor_t *sv, size_t need)
{
    if (need <= sv->cap_svcs)
        return 0;
    size_t cap = sv->cap_svcs ? sv->cap_svcs : 8;
    while (cap < need)
        cap *= 2;
    sv_service_t **grown = realloc(sv->svcs, cap * sizeof *grown);
    if (!grown)
        return KILN_ENOMEM;
    sv->svcs = grown;
    sv->cap_svcs = cap;
    return 0;
}

static bool in_set(const kiln_svc_spec_t *specs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(specs[i].name, name) == 0)
            return true;
    }
    return false;
}

/* Applies one spec (copy taken over) to an existing service. */
static void apply_existing(sv_service_t *svc, kiln_svc_spec_t *copy)
{
    const kiln_svc_spec_t *current = svc->next_spec ? svc->next_spec : &svc->spec;
    if (kiln_svc_spec_equal(current, copy)) {
        kiln_svc_spec_clear(copy);
        free(copy);
        if (svc->after_stop == SV_AFTER_REMOVE)
            svc->after_stop = SV_AFTER_RESTART;
        return;
    }
    if (svc->next_spec) {
        kiln_svc_spec_clear(svc->next_spec);
        free(svc->next_spec);
    }
    svc->next_spec = copy;
    kiln_svclog_note(svc->log, "configuration changed; restarting");
    stop_then(svc, SV_AFTER_RESTART);
}

static void free_copies(kiln_svc_spec_t **copies, size_t n)
{
    for (size_t i = 0; copies && i < n; i++) {
        if (copies[i])
            kiln_svc_spec_clear(copies[i]);
        free(copies[i]);
    }
    free(copies);
}

static int prepare_copies(const kiln_svc_spec_t *specs, size_t n, kiln_svc_spec_t ***out)
{
    kiln_svc_spec_t **copies = calloc(n ? n : 1, sizeof *copies);
    if (!copies)
        return KILN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        copies[i] = malloc(sizeof *copies[i]);
        if (!copies[i] || sv_spec_copy(copies[i], &specs[i]) != 0) {
            free(copies[i]);
            copies[i] = NULL;
            free_copies(copies, n);
            return KILN_ENOMEM;
        }
    }
    *out = copies;
    return 0;
}

/* See supervisor.h. */
int kiln_supervisor_apply(kiln_supervisor_t *sv, const kiln_svc_spec_t *specs, size_t n,
                          kiln_err_t *err)
{
    if (sv->shutting_down)
        return kiln_err_set(err, KILN_ECONFLICT, "supervisor: shutting down; apply refused");
    int rc = sv_specs_validate(specs, n, err);
    if (rc)
        return rc;
    kiln_svc_spec_t **copies = NULL;
    if (prepare_copies(specs, n, &copies) != 0 || grow_list(sv, sv->n_svcs + n) != 0) {
        free_copies(copies, n);
        return kiln_err_set(err, KILN_ENOMEM, "supervisor: out of memory applying services");
    }
    sv_service_t **fresh = calloc(n ? n : 1, sizeof *fresh);
    /* New services can still fail (opening their log): create them first. */
    for (size_t i = 0; fresh && i < n; i++) {
        if (sv_find(sv, specs[i].name))
            continue;
        if (!(fresh[i] = sv_service_new(sv, copies[i], err))) {
            for (size_t j = 0; j < i; j++) {
                if (fresh[j])
                    sv_service_discard(fresh[j]);
            }
            free(fresh);
            free_copies(copies, n);
            return err ? err->code : KILN_ENOMEM;
        }
        free(copies[i]);
        copies[i] = NULL;
    }
    if (!fresh) {
        free_copies(copies, n);
        return kiln_err_set(err, KILN_ENOMEM, "supervisor: out of memory applying services");
    }
    /* From here on nothing fails. */
    for (size_t i = sv->n_svcs; i-- > 0;) {
        sv_service_t *svc = sv->svcs[i];
        if (!in_set(specs, n, svc->spec.name) && svc->after_stop != SV_AFTER_REMOVE) {
            kiln_svclog_note(svc->log, "removed from the configuration; stopping");
            stop_then(svc, SV_AFTER_REMOVE);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (fresh[i])
            sv->svcs[sv->n_svcs++] = fresh[i];
        else
            apply_existing(sv_find(sv, specs[i].name), copies[i]);
        copies[i] = NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (fresh[i])
            sv_dispatch(fresh[i], SV_EV_START);
    }
    free(fresh);
    free_copies(copies, n);
    sv_flush(sv); /* one state-file write for the whole burst; children exec */
    return 0;
}

/* See supervisor.h. */
int kiln_supervisor_start(kiln_supervisor_t *sv, const char *name, kiln_err_t *err)
{
    sv_service_t *svc = sv_find(sv, name);
    if (!svc || svc->after_stop == SV_AFTER_REMOVE)
        return not_found(name, err);
    if (sv->shutting_down)
        return kiln_err_set(err, KILN_ECONFLICT, "service %s: the supervisor is shutting down",
                            name);
    if (svc->state == KILN_SVC_STOPPING)
        svc->after_stop = SV_AFTER_RESTART;
    else
        sv_dispatch(svc, SV_EV_START);
    sv_flush(sv);
    return 0;
}

/* See supervisor.h. */
int kiln_supervisor_stop(kiln_supervisor_t *sv, const char *name, kiln_err_t *err)
{
    sv_service_t *svc = sv_find(sv, name);
    if (!svc || svc->after_stop == SV_AFTER_REMOVE)
        return not_found(name, err);
    if (live(svc) || svc->state != KILN_SVC_DOWN)
        stop_then(svc, SV_AFTER_DOWN);
    return 0;
}

/* See supervisor.h. */
int kiln_supervisor_restart(kiln_supervisor_t *sv, const char *name, kiln_err_t *err)
{
    sv_service_t *svc = sv_find(sv, name);
    if (!svc || svc->after_stop == SV_AFTER_REMOVE)
        return not_found(name, err);
    if (sv->shutting_down)
        return kiln_err_set(err, KILN_ECONFLICT, "service %s: the supervisor is shutting down",
                            name);
    if (live(svc))
        stop_then(svc, SV_AFTER_RESTART);
    else
        sv_dispatch(svc, SV_EV_START);
    sv_flush(sv);
    return 0;
}

/* See supervisor.h. */
void kiln_supervisor_shutdown(kiln_supervisor_t *sv, void (*done)(void *ctx), void *ctx)
{
    sv->shutting_down = true;
    sv->shutdown_done = done;
    sv->shutdown_ctx = ctx;
    sv_shutdown_step(sv);
}
