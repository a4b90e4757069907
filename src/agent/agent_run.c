/* The agent's life: start, reload on SIGHUP, graceful shutdown. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/agent_internal.h"
#include "broker/ops.h"
#include "kiln/log.h"

#define SHUTDOWN_FLUSH_MS 5000

static void close_all(kiln_agent_t *a)
{
    uv_handle_t *handles[] = {(uv_handle_t *)&a->sigterm,
                              (uv_handle_t *)&a->sigint,
                              (uv_handle_t *)&a->sighup,
                              (uv_handle_t *)&a->status_timer,
                              (uv_handle_t *)&a->publish_soon_timer,
                              (uv_handle_t *)&a->publish_release,
                              (uv_handle_t *)&a->stop_async};
    for (size_t i = 0; i < sizeof handles / sizeof handles[0]; i++) {
        if (!uv_is_closing(handles[i]))
            uv_close(handles[i], NULL);
    }
}

/* Every service is down: the last event, the status record removed. */
static void on_services_down(void *ctx)
{
    kiln_agent_t *a = ctx;
    if (a->api) {
        kiln_machine_api_free(a->api);
        a->api = NULL;
    }
    kiln_agent_event(a, "offline", json_pack("{s:s}", "machine", a->cfg.machine_id));
    kiln_err_t err = {0};
    if (kiln_publisher_flush(a->pub, SHUTDOWN_FLUSH_MS, &err) != 0)
        KILN_LOG_WARN_("agent", "%s", err.msg);
    KILN_LOG_INFO_("agent", "stopped");
    close_all(a);
}

/* Readiness fails first (status "stopping"), then services stop in reverse
 * dependency order; kiln workers hand their unfinished jobs back. */
static void begin_shutdown(kiln_agent_t *a)
{
    if (a->stopping)
        return;
    a->stopping = true;
    a->state = "stopping";
    KILN_LOG_INFO_("agent", "stopping all services");
    json_t *status = kiln_agent_status(a);
    kiln_publisher_status(a->pub, status);
    json_decref(status);
    kiln_agent_event(a, "shutdown", json_pack("{s:s}", "phase", "begin"));
    uv_timer_stop(&a->status_timer);
    kiln_supervisor_shutdown(a->sv, on_services_down, a);
}

int kiln_agent_reload(kiln_agent_t *a, kiln_err_t *err)
{
    kiln_config_t fresh;
    kiln_problems_t problems = {0};
    if (kiln_config_load(&fresh, a->config_path, NULL, &problems) != 0) {
        for (size_t i = 0; i < problems.count; i++)
            KILN_LOG_ERROR_("agent", "reload refused: %s", problems.items[i]);
        kiln_err_set(err, KILN_EINVAL, "reload refused: the configuration has %zu problem%s%s%s",
                     problems.count, problems.count == 1 ? "" : "s",
                     problems.count ? ", the first: " : "",
                     problems.count ? problems.items[0] : "");
        kiln_agent_event(a, "reload_failed", json_pack("{s:i}", "problems", (int)problems.count));
        kiln_problems_clear(&problems);
        kiln_config_free(&fresh);
        return KILN_EINVAL;
    }
    kiln_config_t old = a->cfg;
    a->cfg = fresh;
    if (kiln_agent_apply_plan(a, err) != 0) {
        KILN_LOG_ERROR_("agent", "reload refused: %s", err->msg);
        kiln_agent_event(a, "reload_failed", json_pack("{s:s}", "error", err->msg));
        a->cfg = old;
        kiln_config_free(&fresh);
        return err->code;
    }
    kiln_config_free(&old);
    kiln_broker_free(a->queue_broker); /* redis.url may have changed */
    a->queue_broker = NULL;
    KILN_LOG_INFO_("agent", "reloaded %s", a->config_path ? a->config_path : "the configuration");
    kiln_agent_event(a, "reloaded", NULL);
    return 0;
}

static void on_signal(uv_signal_t *handle, int signum)
{
    kiln_agent_t *a = handle->data;
    kiln_err_t err = {0};
    if (signum == SIGHUP)
        kiln_agent_reload(a, &err);
    else
        begin_shutdown(a);
}

static void on_stop_async(uv_async_t *handle)
{
    begin_shutdown(handle->data);
}

int kiln_agent_make_dirs(const char *dir, const char *what, kiln_err_t *err)
{
    char path[1024];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0750);
            *p = '/';
        }
    }
    if (mkdir(path, 0750) != 0 && errno != EEXIST)
        return kiln_err_set(err, KILN_EIO, "cannot create the %s %s: %s", what, dir,
                            strerror(errno));
    return 0;
}

static void write_pid_file(kiln_agent_t *a)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/agent.pid", a->state_dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
}

/* One agent per state folder: two would stop and restart each other's
 * services. The lock lives as long as the agent (the fd is close-on-exec,
 * so services do not hold it). */
static int lock_state_dir(kiln_agent_t *a, kiln_err_t *err)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/agent.lock", a->state_dir);
    a->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (a->lock_fd < 0)
        return kiln_err_set(err, KILN_EIO, "cannot open %s: %s", path, strerror(errno));
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    close(a->lock_fd);
    a->lock_fd = -1;
    return kiln_err_set(err, KILN_ECONFLICT,
                        "another agent is running with the state folder %s (see %s/agent.pid); "
                        "stop it or give this one another --state-dir",
                        a->state_dir, a->state_dir);
}

/* What only a running agent should leave: its pid and API port. */
static void remove_run_files(kiln_agent_t *a)
{
    const char *names[] = {"agent.pid", "api.port"};
    for (int i = 0; i < 2; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/%s", a->state_dir, names[i]);
        unlink(path);
    }
}

static int start(kiln_agent_t *a, kiln_err_t *err)
{
    char state_file[1100], log_dir[1100];
    snprintf(state_file, sizeof state_file, "%s/services.json", a->state_dir);
    snprintf(log_dir, sizeof log_dir, "%s/logs", a->state_dir);
    int rc = kiln_agent_make_dirs(a->state_dir, "state folder", err);
    if (!rc)
        rc = lock_state_dir(a, err);
    if (!rc)
        rc = kiln_publisher_new(a->cfg.redis_url, a->cfg.machine_id, a->status_interval_ms * 3,
                                a->cfg.broker.stream_max_len, &a->pub, err);
    if (rc)
        return rc;
    kiln_agent_event(a, "startup", json_pack("{s:s, s:i}", "phase", "begin", "pid", (int)getpid()));
    kiln_supervisor_options_t sopts = {.state_file = state_file,
                                       .log_dir = log_dir,
                                       .on_event = kiln_agent_on_supervisor_event,
                                       .event_ctx = a};
    rc = kiln_supervisor_new(&a->loop, &sopts, &a->sv, err);
    if (!rc)
        rc = kiln_agent_apply_plan(a, err);
    if (!rc)
        rc = kiln_agent_api_start(a, err);
    if (rc)
        return rc;
    write_pid_file(a);
    kiln_agent_publish_status(a);
    uv_timer_start(&a->status_timer, kiln_agent_on_status_timer, (uint64_t)a->status_interval_ms,
                   (uint64_t)a->status_interval_ms);
    return 0;
}

int kiln_agent_run(kiln_agent_t *a, kiln_err_t *err)
{
    if (uv_loop_init(&a->loop) != 0)
        return kiln_err_set(err, KILN_EIO, "cannot create the event loop");
    uv_signal_t *signals[] = {&a->sigterm, &a->sigint, &a->sighup};
    int signums[] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&a->loop, signals[i]);
        signals[i]->data = a;
        uv_signal_start(signals[i], on_signal, signums[i]);
    }
    uv_timer_init(&a->loop, &a->status_timer);
    uv_timer_init(&a->loop, &a->publish_soon_timer);
    uv_timer_init(&a->loop, &a->publish_release);
    a->status_timer.data = a->publish_soon_timer.data = a->publish_release.data = a;
    uv_async_init(&a->loop, &a->stop_async, on_stop_async);
    a->stop_async.data = a;
    signal(SIGPIPE, SIG_IGN);
    a->started_ms = kiln_ops_wall_ms();
    int rc = start(a, err);
    if (rc) {
        if (a->sv)
            kiln_supervisor_shutdown(a->sv, on_services_down, a);
        else
            close_all(a);
    } else if (atomic_load(&a->stop_requested)) {
        begin_shutdown(a);
    }
    uv_run(&a->loop, UV_RUN_DEFAULT);
    /* The supervisor's handles close asynchronously: let them, then close
     * the loop, so nothing of either is left behind. */
    if (a->sv) {
        kiln_supervisor_free(a->sv);
        a->sv = NULL;
    }
    uv_run(&a->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&a->loop) != 0)
        KILN_LOG_WARN_("agent", "event loop closed with handles still open");
    if (a->lock_fd >= 0)
        remove_run_files(a);
    return rc;
}

void kiln_agent_stop(kiln_agent_t *a)
{
    atomic_store(&a->stop_requested, 1);
    if (a->stop_async.loop)
        uv_async_send(&a->stop_async);
}

int kiln_agent_new(kiln_config_t *cfg, const kiln_agent_options_t *opts, kiln_agent_t **out,
                   kiln_err_t *err)
{
    kiln_agent_t *a = calloc(1, sizeof *a);
    if (!a)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    a->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    a->config_path = opts->config_path ? strdup(opts->config_path) : NULL;
    a->state_dir = strdup(opts->state_dir ? opts->state_dir : ".kiln/machine");
    a->kiln_path = opts->kiln_path ? strdup(opts->kiln_path) : NULL;
    a->status_interval_ms = opts->status_interval_ms > 0 ? opts->status_interval_ms : 15000;
    a->gpu_override = opts->gpu_override;
    a->api_listen = opts->api_listen ? strdup(opts->api_listen) : NULL;
    a->state = "starting";
    a->service_states = json_object();
    a->downloads = json_object();
    a->lock_fd = -1;
    *out = a;
    return 0;
}

void kiln_agent_free(kiln_agent_t *a)
{
    if (!a)
        return;
    if (a->pub)
        kiln_publisher_free(a->pub, true);
    kiln_plan_free(&a->plan);
    json_decref(a->service_states);
    json_decref(a->downloads);
    if (a->lock_fd >= 0)
        close(a->lock_fd);
    kiln_gpu_list_free(&a->gpus);
    kiln_broker_free(a->queue_broker);
    kiln_config_free(&a->cfg);
    free(a->config_path);
    free(a->state_dir);
    free(a->kiln_path);
    free(a->api_listen);
    free(a);
}
