/* The machine API's hooks: what the agent answers on :9090. Every hook
 * runs on the agent's loop thread (the API server marshals requests). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "kiln/log.h"

static json_t *hook_status(void *ctx)
{
    return kiln_agent_status(ctx);
}

static bool hook_ready(void *ctx)
{
    kiln_agent_t *a = ctx;
    return !a->stopping && strcmp(a->state, "ready") == 0;
}

/* Healthy while not stopping and no service has given up (failed). */
static json_t *hook_health(void *ctx, bool *healthy)
{
    kiln_agent_t *a = ctx;
    json_t *services = kiln_supervisor_status(a->sv);
    json_t *failed = json_array();
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        if (strcmp(json_string_value(json_object_get(svc, "state")), "failed") == 0)
            json_array_append(failed, json_object_get(svc, "name"));
    }
    json_decref(services);
    *healthy = !a->stopping && json_array_size(failed) == 0;
    return json_pack("{s:{s:s, s:o}}", "checks", "state", a->state, "failed_services", failed);
}

static json_t *hook_service_status(void *ctx, const char *name)
{
    kiln_agent_t *a = ctx;
    return kiln_supervisor_service_status(a->sv, name);
}

static int hook_service_action(void *ctx, const char *name, const char *action, kiln_err_t *err)
{
    kiln_agent_t *a = ctx;
    KILN_LOG_INFO_("agent", "API: %s %s", action, name);
    if (strcmp(action, "start") == 0)
        return kiln_supervisor_start(a->sv, name, err);
    if (strcmp(action, "stop") == 0)
        return kiln_supervisor_stop(a->sv, name, err);
    return kiln_supervisor_restart(a->sv, name, err);
}

static int hook_reload(void *ctx, kiln_err_t *err)
{
    return kiln_agent_reload(ctx, err);
}

static int hook_restart_machine(void *ctx, kiln_err_t *err)
{
    kiln_agent_t *a = ctx;
    json_t *services = kiln_supervisor_status(a->sv);
    size_t i;
    json_t *svc;
    int rc = 0;
    KILN_LOG_INFO_("agent", "API: restarting every service");
    json_array_foreach(services, i, svc)
    {
        if (rc == 0)
            rc = kiln_supervisor_restart(a->sv, json_string_value(json_object_get(svc, "name")),
                                         err);
    }
    json_decref(services);
    return rc;
}

static int hook_refresh_status(void *ctx, kiln_err_t *err)
{
    kiln_agent_publish_status(ctx);
    return 0;
}

static json_t *hook_logs(void *ctx, const char *name, size_t lines)
{
    kiln_agent_t *a = ctx;
    return kiln_supervisor_logs(a->sv, name, lines);
}

static int hook_logs_follow(void *ctx, const char *name, kiln_machine_api_line_cb cb, void *cb_ctx)
{
    kiln_agent_t *a = ctx;
    return kiln_supervisor_logs_follow(a->sv, name, cb, cb_ctx);
}

static void hook_logs_unfollow(void *ctx, const char *name, kiln_machine_api_line_cb cb,
                               void *cb_ctx)
{
    kiln_agent_t *a = ctx;
    kiln_supervisor_logs_unfollow(a->sv, name, cb, cb_ctx);
}

static int hook_queue_counts(void *ctx, long *pending, long *processing)
{
    return kiln_agent_queue_counts(ctx, pending, processing);
}

static const kiln_machine_api_hooks_t hooks = {
    .status = hook_status,
    .ready = hook_ready,
    .health = hook_health,
    .service_status = hook_service_status,
    .service_action = hook_service_action,
    .reload = hook_reload,
    .restart_machine = hook_restart_machine,
    .refresh_status = hook_refresh_status,
    .logs = hook_logs,
    .logs_follow = hook_logs_follow,
    .logs_unfollow = hook_logs_unfollow,
    .queue_counts = hook_queue_counts,
};

int kiln_agent_api_start(kiln_agent_t *a, kiln_err_t *err)
{
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", (int)a->cfg.machine.health_port);
    kiln_machine_api_options_t opts = {.listen = a->api_listen ? a->api_listen : listen,
                                       .token = a->cfg.machine.api_token,
                                       .machine_id = a->cfg.machine_id,
                                       .disk_path = a->state_dir,
                                       .hooks = &hooks,
                                       .hooks_ctx = a,
                                       .control_redis_url = a->cfg.redis_url,
                                       .loop = &a->loop};
    int rc = kiln_machine_api_new(&opts, &a->api, err);
    if (rc)
        return rc;
    /* Where the API listens (port 0 picks a free one), for `kiln services`. */
    char path[1100];
    snprintf(path, sizeof path, "%s/api.port", a->state_dir);
    FILE *out = fopen(path, "w");
    if (out) {
        fprintf(out, "%d\n", kiln_machine_api_port(a->api));
        fclose(out);
    }
    return 0;
}
