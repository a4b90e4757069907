/*
 * The agent's side of services.NAME.downloads: the plan runs a
 * "NAME-downloads" step (`kiln machine download`) before NAME; this file
 * reads the step's progress and failure lines from its output and
 * publishes them as NAME's worker_phase "downloading" and "failed" events
 * (docs/downloads.md). The step's own state changes drive the rest of
 * NAME's phases (agent.c).
 */
#include <string.h>

#include "agent/agent_internal.h"
#include "kiln/download.h"

/* The plan's download step of service `owner`, or NULL. */
static const kiln_plan_service_t *step_of(const kiln_agent_t *a, const char *owner)
{
    for (size_t i = 0; i < a->plan.count; i++) {
        const kiln_plan_service_t *s = &a->plan.services[i];
        if (s->downloads_for && strcmp(s->downloads_for, owner) == 0)
            return s;
    }
    return NULL;
}

const char *kiln_agent_downloads_owner(const kiln_agent_t *a, const char *service)
{
    const kiln_plan_service_t *s = kiln_plan_find(&a->plan, service);
    return s ? s->downloads_for : NULL;
}

const char *kiln_agent_downloads_step_state(const kiln_agent_t *a, const char *service)
{
    const kiln_plan_service_t *step = step_of(a, service);
    if (!step)
        return NULL;
    const char *st = json_string_value(json_object_get(a->service_states, step->name));
    return st ? st : "down";
}

/* A step in these states has a process that may still write. */
static bool step_runs(const char *state)
{
    return strcmp(state, "starting") == 0 || strcmp(state, "running") == 0;
}

/* One output line of a download step. Progress is published only while
 * the step runs: a line read after its exit was seen would come after the
 * owner's next phase. Failures are always published. */
static void on_step_line(void *ctx, json_t *entry)
{
    kiln_agent_t *a = ctx;
    json_t *line = kiln_download_line_parse(json_string_value(json_object_get(entry, "line")));
    const char *owner = json_string_value(json_object_get(line, "service"));
    const kiln_plan_service_t *step = owner ? step_of(a, owner) : NULL;
    if (!step) {
        json_decref(line);
        return;
    }
    json_t *fields = json_deep_copy(line);
    json_object_del(fields, "service");
    json_object_set_new(a->downloads, owner, json_deep_copy(fields)); /* for the status */
    kiln_agent_publish_soon(a);
    json_object_set_new(fields, "worker", json_string(owner));
    if (json_object_get(line, "error")) {
        json_object_set_new(fields, "phase", json_string("failed"));
        json_object_set_new(fields, "progress", json_integer(0));
        kiln_agent_event(a, "worker_phase", fields);
    } else if (step_runs(kiln_agent_downloads_step_state(a, owner))) {
        json_object_set_new(fields, "phase", json_string("downloading"));
        json_object_set(fields, "progress", json_object_get(line, "percent"));
        kiln_agent_event(a, "worker_phase", fields);
    } else {
        json_decref(fields);
    }
    json_decref(line);
}

void kiln_agent_downloads_follow(kiln_agent_t *a)
{
    for (size_t i = 0; a->sv && i < a->plan.count; i++) {
        const char *name = a->plan.services[i].name;
        if (!a->plan.services[i].downloads_for)
            continue;
        /* Once per step, across reloads: following twice would publish
         * every line twice. */
        kiln_supervisor_logs_unfollow(a->sv, name, on_step_line, a);
        kiln_supervisor_logs_follow(a->sv, name, on_step_line, a);
    }
}
