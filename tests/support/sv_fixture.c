/*
 * Test support for the supervisor's tests: a libuv loop with a supervisor
 * on a fresh state file and log folder, its events recorded, and waits for
 * conditions on it (never fixed sleeps). See sv_fixture.h.
 */
#include "sv_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/sv_internal.h"
static void on_event(void *ctx, const char *service, const char *event, json_t *fields)
{
    svfx_t *fx = ctx;
    json_t *e = json_pack("{s:s,s:s,s:I}", "service", service, "event", event, "t",
                          (json_int_t)kiln_test_now_ms());
    json_object_update(e, fields);
    json_array_append_new(fx->events, e);
}

static void on_tick(uv_timer_t *t)
{
    (void)t; /* only wakes the loop so conditions are re-checked */
}

/* Runs the loop until cond(ctx) holds or timeout_ms passes. */
bool svfx_run_until(svfx_t *fx, bool (*cond)(void *), void *ctx, long timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(&fx->loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    int64_t deadline = kiln_test_now_ms() + timeout_ms;
    bool ok;
    while (!(ok = cond(ctx)) && kiln_test_now_ms() < deadline)
        uv_run(&fx->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    return ok;
}

kiln_supervisor_t *svfx_new_supervisor(svfx_t *fx)
{
    kiln_supervisor_options_t opts = {.state_file = fx->state_file,
                                      .log_dir = fx->dir,
                                      .on_event = on_event,
                                      .event_ctx = fx,
                                      .stats_interval_ms = 100};
    kiln_err_t err = {0};
    kiln_supervisor_t *sv = NULL;
    int rc = kiln_supervisor_new(&fx->loop, &opts, &sv, &err);
    if (rc)
        fprintf(stderr, "kiln_supervisor_new: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return sv;
}

int svfx_setup(void **state)
{
    svfx_t *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    kiln_test_tmpdir(fx->dir, sizeof fx->dir);
    snprintf(fx->state_file, sizeof fx->state_file, "%s/state.json", fx->dir);
    fx->events = json_array();
    fx->sv = svfx_new_supervisor(fx);
    *state = fx;
    return 0;
}

static void on_shutdown_done(void *ctx)
{
    ((svfx_t *)ctx)->shut_down = true;
}

static bool shut_down(void *ctx)
{
    return ((svfx_t *)ctx)->shut_down;
}

void svfx_close_supervisor(svfx_t *fx)
{
    fx->shut_down = false;
    kiln_supervisor_shutdown(fx->sv, on_shutdown_done, fx);
    assert_true(svfx_run_until(fx, shut_down, fx, WAIT_MS));
    kiln_supervisor_free(fx->sv);
    fx->sv = NULL;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
}

int svfx_teardown(void **state)
{
    svfx_t *fx = *state;
    if (fx->sv)
        svfx_close_supervisor(fx);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    json_decref(fx->events);
    char *rm[] = {"/bin/rm", "-rf", fx->dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
    free(fx);
    return 0;
}

/* A spec with quick test timings; argv is copied. */
kiln_svc_spec_t svfx_make_spec(const char *name, const char *const *argv)
{
    kiln_svc_spec_t s;
    kiln_svc_spec_init(&s);
    s.name = strdup(name);
    size_t n = 0;
    while (argv[n])
        n++;
    s.argv = calloc(n + 1, sizeof *s.argv);
    for (size_t i = 0; i < n; i++)
        s.argv[i] = strdup(argv[i]);
    s.backoff_base_ms = 50;
    s.stop_timeout_ms = 3000;
    return s;
}

char **svfx_strv(const char *a, const char *b)
{
    char **v = calloc(3, sizeof *v);
    v[0] = strdup(a);
    v[1] = b ? strdup(b) : NULL;
    return v;
}

void svfx_apply_ok(svfx_t *fx, kiln_svc_spec_t *specs, size_t n)
{
    kiln_err_t err = {0};
    int rc = kiln_supervisor_apply(fx->sv, specs, n, &err);
    if (rc)
        fprintf(stderr, "apply: %s\n", err.msg);
    assert_int_equal(rc, 0);
}

void svfx_clear_specs(kiln_svc_spec_t *specs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kiln_svc_spec_clear(&specs[i]);
}

json_t *svfx_status_of(svfx_t *fx, const char *name)
{
    json_t *st = kiln_supervisor_service_status(fx->sv, name);
    assert_non_null(st);
    return st;
}

static bool in_state(void *ctx)
{
    svfx_svc_wait_t *w = ctx;
    json_t *st = kiln_supervisor_service_status(w->fx->sv, w->name);
    bool ok = st && strcmp(json_string_value(json_object_get(st, "state")), w->state) == 0;
    json_decref(st);
    return ok;
}

void svfx_wait_state(svfx_t *fx, const char *name, const char *state)
{
    svfx_svc_wait_t w = {fx, name, state};
    if (!svfx_run_until(fx, in_state, &w, WAIT_MS)) {
        json_t *st = kiln_supervisor_service_status(fx->sv, name);
        char *s = st ? json_dumps(st, 0) : NULL;
        char *ev = json_dumps(fx->events, JSON_INDENT(1));
        fprintf(stderr, "%s never became %s: %s\nevents: %s\n", name, state, s ? s : "(none)", ev);
        free(s);
        free(ev);
        json_decref(st);
        fail();
    }
}

json_int_t svfx_status_int(svfx_t *fx, const char *name, const char *field)
{
    json_t *st = svfx_status_of(fx, name);
    json_int_t v = json_integer_value(json_object_get(st, field));
    json_decref(st);
    return v;
}

bool svfx_pid_alive(pid_t pid)
{
    sv_procinfo_t info;
    return pid > 0 && sv_proc_read(pid, &info) == 0 && info.state != 'Z';
}

typedef struct pid_wait {
    pid_t pid;
} pid_wait_t;

static bool pid_gone(void *ctx)
{
    return !svfx_pid_alive(((pid_wait_t *)ctx)->pid);
}

void svfx_wait_gone(svfx_t *fx, pid_t pid)
{
    pid_wait_t w = {pid};
    assert_true(svfx_run_until(fx, pid_gone, &w, WAIT_MS));
}

/* Pids listed in a file, one a line; returns how many (at most max). */
size_t svfx_read_pids(const char *path, pid_t *pids, size_t max)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;
    int pid;
    while (f && n < max && fscanf(f, "%d", &pid) == 1)
        pids[n++] = pid;
    if (f)
        fclose(f);
    return n;
}

typedef struct file_wait {
    const char *path;
    size_t lines;
} file_wait_t;

static bool file_has_pids(void *ctx)
{
    file_wait_t *w = ctx;
    pid_t pids[64];
    return svfx_read_pids(w->path, pids, 64) >= w->lines;
}

void svfx_wait_pids(svfx_t *fx, const char *path, size_t lines)
{
    file_wait_t w = {path, lines};
    assert_true(svfx_run_until(fx, file_has_pids, &w, WAIT_MS));
}

/* The events of service (and of kind `event`, and to state `to`; NULL = any). */
size_t svfx_find_events(svfx_t *fx, const char *service, const char *event, const char *to,
                        json_t **out, size_t max)
{
    size_t n = 0, i;
    json_t *e;
    json_array_foreach(fx->events, i, e)
    {
        const char *to_s = json_string_value(json_object_get(e, "to"));
        if (strcmp(json_string_value(json_object_get(e, "service")), service) != 0 ||
            (event && strcmp(json_string_value(json_object_get(e, "event")), event) != 0) ||
            (to && (!to_s || strcmp(to_s, to) != 0)))
            continue;
        if (n < max)
            out[n] = e;
        n++;
    }
    return n;
}

json_int_t svfx_event_time(json_t *e)
{
    return json_integer_value(json_object_get(e, "t"));
}

int svfx_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

void svfx_text_path(char *out, size_t size, const svfx_t *fx, const char *file)
{
    snprintf(out, size, "%s/%s", fx->dir, file);
}
