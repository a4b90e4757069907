/*
 * The supervisor against real child processes (tests/helpers/svc_*): each
 * test runs a libuv loop until a condition holds (never a fixed sleep),
 * then shuts the supervisor down; the loop must drain and close cleanly,
 * so a leaked handle fails here and leaked memory fails under ASan.
 */
#include "kiln_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "agent/sv_internal.h"
#include "kiln/supervisor.h"

#include "sv_fixture.h"

/* ---- tests ----------------------------------------------------------------- */

static void services_start_in_parallel_and_report_running(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_notify"), "300", NULL};
    kiln_svc_spec_t specs[3] = {svfx_make_spec("a", argv), svfx_make_spec("b", argv),
                                svfx_make_spec("c", argv)};
    for (int i = 0; i < 3; i++)
        specs[i].ready.kind = KILN_READY_FD;
    svfx_apply_ok(fx, specs, 3);
    svfx_clear_specs(specs, 3);
    const char *names[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        svfx_wait_state(fx, names[i], "running");
    /* Parallel: every service was spawned before the first became ready. */
    json_int_t first_ready = INT64_MAX, last_start = 0;
    for (int i = 0; i < 3; i++) {
        json_t *ev[4];
        assert_int_equal(svfx_find_events(fx, names[i], "state", "starting", ev, 4), 1);
        if (svfx_event_time(ev[0]) > last_start)
            last_start = svfx_event_time(ev[0]);
        assert_int_equal(svfx_find_events(fx, names[i], "ready", NULL, ev, 4), 1);
        if (svfx_event_time(ev[0]) < first_ready)
            first_ready = svfx_event_time(ev[0]);
        json_t *st = svfx_status_of(fx, names[i]);
        assert_true(json_is_true(json_object_get(st, "ready")));
        assert_true(json_integer_value(json_object_get(st, "pid")) > 0);
        json_decref(st);
    }
    assert_true(last_start <= first_ready);
    json_t *all = kiln_supervisor_status(fx->sv);
    assert_int_equal(json_array_size(all), 3);
    json_decref(all);
}

static void dependent_waits_for_dependency_readiness(void **state)
{
    svfx_t *fx = *state;
    char port[16], url[64];
    snprintf(port, sizeof port, "%d", svfx_free_port());
    snprintf(url, sizeof url, "http://127.0.0.1:%s/health", port);
    const char *web_argv[] = {HELPER("svc_slow_http"), port, "600", NULL};
    const char *app_argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[2] = {svfx_make_spec("app", app_argv), svfx_make_spec("web", web_argv)};
    specs[0].depends_on = svfx_strv("web", NULL);
    specs[1].ready.kind = KILN_READY_HTTP;
    specs[1].ready.target = strdup(url);
    specs[1].ready.interval_ms = 50;
    svfx_apply_ok(fx, specs, 2);
    svfx_clear_specs(specs, 2);
    json_t *st = svfx_status_of(fx, "app");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "waiting");
    json_decref(st);
    svfx_wait_state(fx, "app", "running");
    json_t *web_ready[2], *app_start[2];
    assert_int_equal(svfx_find_events(fx, "web", "ready", NULL, web_ready, 2), 1);
    assert_int_equal(svfx_find_events(fx, "app", "state", "starting", app_start, 2), 1);
    assert_true(svfx_event_time(app_start[0]) >= svfx_event_time(web_ready[0]));
    json_t *web_start[2];
    assert_int_equal(svfx_find_events(fx, "web", "state", "starting", web_start, 2), 1);
    /* It answered 503 for 600 ms: readiness came from the probe, not the spawn. */
    assert_true(svfx_event_time(web_ready[0]) - svfx_event_time(web_start[0]) >= 500);
}

static void crash_loop_backs_off_exponentially_then_goes_failed_with_an_alert(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_crasher"), "3", "0", NULL};
    kiln_svc_spec_t spec = svfx_make_spec("crashy", argv);
    spec.backoff_base_ms = 100; /* delays 100..120, 200..240, 400..480, 800..960 */
    spec.max_failures = 5;
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    svfx_wait_state(fx, "crashy", "failed");
    json_t *backoffs[8], *starts[8], *alerts[2];
    assert_int_equal(svfx_find_events(fx, "crashy", "state", "backoff", backoffs, 8), 4);
    assert_int_equal(svfx_find_events(fx, "crashy", "state", "starting", starts, 8), 5);
    for (int i = 0; i < 4; i++) {
        json_int_t delay = json_integer_value(json_object_get(backoffs[i], "delay_ms"));
        assert_true(delay >= 100 << i && delay <= (100 << i) * 6 / 5);
        /* The gap from each exit to the next start is at least its delay, so the
         * gaps grow with the delays (the run time itself only adds to them). */
        json_int_t gap = svfx_event_time(starts[i + 1]) - svfx_event_time(backoffs[i]);
        assert_true(gap >= delay);
        if (i > 0)
            assert_true(svfx_event_time(starts[i + 1]) - svfx_event_time(starts[i]) >= delay);
    }
    assert_int_equal(svfx_find_events(fx, "crashy", "alert", NULL, alerts, 2), 1);
    assert_int_equal(json_integer_value(json_object_get(alerts[0], "failures")), 5);
    json_t *last = json_object_get(alerts[0], "last_exit");
    assert_int_equal(json_integer_value(json_object_get(last, "code")), 3);
    assert_int_equal(svfx_status_int(fx, "crashy", "restarts"), 4);
}

/* A run that starts but never becomes ready is stopped at its readiness
 * deadline and restarted; such runs count toward max_failures even when
 * the deadline is longer than failure_window_ms, so the service ends
 * failed with an alert instead of cycling for ever. */
static void never_ready_service_is_restarted_then_goes_failed(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t spec = svfx_make_spec("mute", argv);
    char target[32];
    snprintf(target, sizeof target, "127.0.0.1:%d", svfx_free_port()); /* nobody listens */
    spec.ready.kind = KILN_READY_TCP;
    spec.ready.target = strdup(target);
    spec.ready.interval_ms = 50;
    spec.ready.deadline_ms = 300;
    spec.failure_window_ms = 100; /* shorter than the deadline */
    spec.backoff_base_ms = 10;
    spec.max_failures = 3;
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    svfx_wait_state(fx, "mute", "failed");
    json_t *starts[8], *alerts[2];
    assert_int_equal(svfx_find_events(fx, "mute", "state", "starting", starts, 8), 3);
    assert_int_equal(svfx_find_events(fx, "mute", "alert", NULL, alerts, 2), 1);
    const char *reason = json_string_value(json_object_get(alerts[0], "reason"));
    assert_non_null(strstr(reason, "not ready within 300 ms"));
    assert_non_null(strstr(reason, "3 runs in a row never became ready"));
    assert_int_equal(svfx_status_int(fx, "mute", "restarts"), 2);
    assert_int_equal(svfx_status_int(fx, "mute", "pid"), 0);
}

typedef struct count_wait {
    svfx_t *fx;
    const char *service, *event, *to;
    size_t n;
} count_wait_t;

static bool has_events(void *ctx)
{
    count_wait_t *w = ctx;
    json_t *ev[1];
    return svfx_find_events(w->fx, w->service, w->event, w->to, ev, 0) >= w->n;
}

static void backoff_resets_after_a_stable_run(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_crasher"), "3", "150", NULL};
    kiln_svc_spec_t spec = svfx_make_spec("flaky", argv);
    spec.stable_ms = 100; /* every 150 ms run counts as stable */
    spec.max_failures = 50;
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    count_wait_t w = {fx, "flaky", "state", "backoff", 4};
    assert_true(svfx_run_until(fx, has_events, &w, WAIT_MS));
    json_t *backoffs[8];
    size_t n = svfx_find_events(fx, "flaky", "state", "backoff", backoffs, 8);
    for (size_t i = 0; i < n && i < 8; i++) {
        json_int_t delay = json_integer_value(json_object_get(backoffs[i], "delay_ms"));
        assert_true(delay >= 50 && delay <= 60); /* the base plus at most 20% jitter */
    }
}

static void restart_policy_never_and_on_failure(void **state)
{
    svfx_t *fx = *state;
    const char *ok_argv[] = {HELPER("svc_crasher"), "0", "0", NULL};
    const char *bad_argv[] = {HELPER("svc_crasher"), "4", "0", NULL};
    kiln_svc_spec_t specs[4] = {
        svfx_make_spec("never-ok", ok_argv), svfx_make_spec("never-bad", bad_argv),
        svfx_make_spec("onfail-ok", ok_argv), svfx_make_spec("onfail-bad", bad_argv)};
    specs[0].restart = specs[1].restart = KILN_RESTART_NEVER;
    specs[2].restart = specs[3].restart = KILN_RESTART_ON_FAILURE;
    specs[3].max_failures = 3;
    svfx_apply_ok(fx, specs, 4);
    svfx_clear_specs(specs, 4);
    svfx_wait_state(fx, "never-ok", "exited");
    svfx_wait_state(fx, "never-bad", "failed");
    svfx_wait_state(fx, "onfail-ok", "exited");
    svfx_wait_state(fx, "onfail-bad", "failed");
    assert_int_equal(svfx_status_int(fx, "never-ok", "restarts"), 0);
    assert_int_equal(svfx_status_int(fx, "never-bad", "restarts"), 0);
    assert_int_equal(svfx_status_int(fx, "onfail-ok", "restarts"), 0);
    assert_int_equal(svfx_status_int(fx, "onfail-bad", "restarts"), 2);
    json_t *ev[4];
    assert_int_equal(svfx_find_events(fx, "never-bad", "alert", NULL, ev, 4), 1);
    assert_int_equal(svfx_find_events(fx, "never-ok", "alert", NULL, ev, 4), 0);
}

static bool log_contains(svfx_t *fx, const char *name, const char *stream, const char *text)
{
    json_t *lines = kiln_supervisor_logs(fx->sv, name, 1000);
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(lines, i, e)
    {
        const char *line = json_string_value(json_object_get(e, "line"));
        const char *s = json_string_value(json_object_get(e, "stream"));
        if (line && strstr(line, text) && (!stream || (s && strcmp(s, stream) == 0)))
            found = true;
    }
    json_decref(lines);
    return found;
}

static void stop_sigterm_then_sigkill_after_timeout_kills_the_whole_group(void **state)
{
    svfx_t *fx = *state;
    char main_pids[320], child_pids[320];
    svfx_text_path(main_pids, sizeof main_pids, fx, "main.pids");
    svfx_text_path(child_pids, sizeof child_pids, fx, "child.pids");
    const char *argv[] = {HELPER("svc_sleeper"),
                          "--ignore-term",
                          "--pidfile",
                          main_pids,
                          "--child",
                          child_pids,
                          NULL};
    kiln_svc_spec_t spec = svfx_make_spec("stubborn", argv);
    spec.stop_timeout_ms = 300;
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    svfx_wait_state(fx, "stubborn", "running");
    svfx_wait_pids(fx, main_pids, 1);
    svfx_wait_pids(fx, child_pids, 1);
    pid_t main_pid, child_pid;
    svfx_read_pids(main_pids, &main_pid, 1);
    svfx_read_pids(child_pids, &child_pid, 1);
    int64_t asked = kiln_test_now_ms();
    assert_int_equal(kiln_supervisor_stop(fx->sv, "stubborn", NULL), 0);
    svfx_wait_state(fx, "stubborn", "down");
    assert_true(kiln_test_now_ms() - asked >= 300); /* SIGTERM was ignored */
    svfx_wait_gone(fx, main_pid);
    svfx_wait_gone(fx, child_pid);
    json_t *st = svfx_status_of(fx, "stubborn");
    json_t *last = json_object_get(st, "last_exit");
    assert_int_equal(json_integer_value(json_object_get(last, "signal")), SIGKILL);
    json_decref(st);
    assert_true(log_contains(fx, "stubborn", "agent", "SIGKILL"));
}

static void no_grandchild_outlives_its_service(void **state)
{
    svfx_t *fx = *state;
    char stay_pid[320], exit_pid[320];
    svfx_text_path(stay_pid, sizeof stay_pid, fx, "stay.pid");
    svfx_text_path(exit_pid, sizeof exit_pid, fx, "exit.pid");
    const char *stay_argv[] = {HELPER("svc_forker"), stay_pid, "--setsid", NULL};
    const char *exit_argv[] = {HELPER("svc_forker"), exit_pid, "--setsid", "--exit", NULL};
    kiln_svc_spec_t specs[2] = {svfx_make_spec("stays", stay_argv),
                                svfx_make_spec("leaves", exit_argv)};
    specs[1].restart = KILN_RESTART_NEVER;
    svfx_apply_ok(fx, specs, 2);
    svfx_clear_specs(specs, 2);
    /* A grandchild in its own session, stopped with its service. */
    svfx_wait_pids(fx, stay_pid, 1);
    svfx_wait_state(fx, "stays", "running");
    pid_t grandchild;
    svfx_read_pids(stay_pid, &grandchild, 1);
    assert_true(svfx_pid_alive(grandchild));
    assert_int_equal(kiln_supervisor_stop(fx->sv, "stays", NULL), 0);
    svfx_wait_state(fx, "stays", "down");
    svfx_wait_gone(fx, grandchild);
    /* A grandchild orphaned when its service exits. */
    svfx_wait_state(fx, "leaves", "failed");
    svfx_read_pids(exit_pid, &grandchild, 1);
    svfx_wait_gone(fx, grandchild);
}

static void state_file_is_written_once_for_a_burst_of_spawns(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), NULL};
    enum { N = 8 };
    kiln_svc_spec_t specs[N];
    char name[16];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "burst%d", i);
        specs[i] = svfx_make_spec(name, argv);
    }
    unsigned long before = fx->sv->state_writes;
    svfx_apply_ok(fx, specs, N);
    svfx_clear_specs(specs, N);
    /* One write names every child, and every child was released after it. */
    assert_int_equal(fx->sv->state_writes - before, 1);
    json_error_t jerr;
    json_t *saved = json_load_file(fx->state_file, 0, &jerr);
    assert_non_null(saved);
    assert_int_equal(json_array_size(json_object_get(saved, "services")), N);
    json_decref(saved);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "burst%d", i);
        svfx_wait_state(fx, name, "running");
        json_t *st = svfx_status_of(fx, name);
        assert_true(json_integer_value(json_object_get(st, "pid")) > 0);
        json_decref(st);
    }
    assert_int_equal(fx->sv->state_writes - before, 1);
}

static int forks_seen;

static void count_fork(void)
{
    forks_seen++;
}

/* fork would copy the agent's page tables and make every page it then
 * writes fault (about 2 ms of a respawn): the child must share its memory
 * until execve instead. fork runs pthread_atfork handlers; clone does not. */
static void spawn_does_not_fork_the_agent(void **state)
{
    svfx_t *fx = *state;
    static bool registered;
    if (!registered)
        assert_int_equal(pthread_atfork(count_fork, NULL, NULL), 0);
    registered = true;
    forks_seen = 0;
    const char *argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[2] = {svfx_make_spec("one", argv), svfx_make_spec("two", argv)};
    svfx_apply_ok(fx, specs, 2);
    svfx_clear_specs(specs, 2);
    svfx_wait_state(fx, "one", "running");
    svfx_wait_state(fx, "two", "running");
    pid_t pid = (pid_t)svfx_status_int(fx, "one", "pid");
    kill(pid, SIGKILL);
    svfx_wait_gone(fx, pid);
    svfx_wait_state(fx, "one", "running");
    assert_int_not_equal(svfx_status_int(fx, "one", "pid"), pid);
    assert_int_equal(forks_seen, 0);
}

static void exec_failure_is_reported_clearly(void **state)
{
    svfx_t *fx = *state;
    const char *missing[] = {"/nonexistent/kiln-no-such-program", NULL};
    const char *not_on_path[] = {"kiln-no-such-program-on-path", NULL};
    const char *sleeper[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[3] = {svfx_make_spec("missing", missing),
                                svfx_make_spec("nopath", not_on_path),
                                svfx_make_spec("badcwd", sleeper)};
    specs[2].cwd = strdup("/nonexistent/kiln-no-such-dir");
    svfx_apply_ok(fx, specs, 3);
    svfx_clear_specs(specs, 3);
    struct {
        const char *name, *text;
    } cases[] = {{"missing", "cannot execute \"/nonexistent/kiln-no-such-program\": No such file"},
                 {"nopath", "not found on PATH"},
                 {"badcwd", "cannot enter cwd \"/nonexistent/kiln-no-such-dir\""}};
    for (size_t i = 0; i < 3; i++) {
        svfx_wait_state(fx, cases[i].name, "failed");
        json_t *st = svfx_status_of(fx, cases[i].name);
        const char *err = json_string_value(json_object_get(st, "last_error"));
        assert_non_null(err);
        if (!strstr(err, cases[i].text))
            fprintf(stderr, "%s: last_error \"%s\", expected \"%s\"\n", cases[i].name, err,
                    cases[i].text);
        assert_non_null(strstr(err, cases[i].text));
        assert_non_null(strstr(err, cases[i].name));
        assert_true(json_is_null(json_object_get(st, "pid")));
        json_decref(st);
        json_t *ev[2];
        assert_int_equal(svfx_find_events(fx, cases[i].name, "alert", NULL, ev, 2), 1);
    }
}

static void oneshot_runs_once_and_marker_skips_it_next_time(void **state)
{
    svfx_t *fx = *state;
    char runs[320], marker[320];
    svfx_text_path(runs, sizeof runs, fx, "setup.runs");
    svfx_text_path(marker, sizeof marker, fx, "setup.done");
    const char *setup_argv[] = {HELPER("svc_crasher"), "0", "100", "--pidfile", runs, NULL};
    const char *app_argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[2] = {svfx_make_spec("setup", setup_argv),
                                svfx_make_spec("app", app_argv)};
    specs[0].oneshot = true;
    specs[0].done_marker = strdup(marker);
    specs[1].depends_on = svfx_strv("setup", NULL);
    svfx_apply_ok(fx, specs, 2);
    svfx_wait_state(fx, "setup", "exited");
    svfx_wait_state(fx, "app", "running");
    struct stat st;
    assert_int_equal(stat(marker, &st), 0);
    pid_t pids[4];
    assert_int_equal(svfx_read_pids(runs, pids, 4), 1);
    svfx_close_supervisor(fx);
    /* The next agent skips it, and its dependent still starts. */
    fx->sv = svfx_new_supervisor(fx);
    json_array_clear(fx->events);
    svfx_apply_ok(fx, specs, 2);
    svfx_clear_specs(specs, 2);
    svfx_wait_state(fx, "app", "running");
    svfx_wait_state(fx, "setup", "exited");
    assert_int_equal(svfx_read_pids(runs, pids, 4), 1);
    json_t *ev[2];
    assert_int_equal(svfx_find_events(fx, "setup", "state", "starting", ev, 2), 0);
}

static void oneshot_timeout_fails_it(void **state)
{
    svfx_t *fx = *state;
    char pidfile[320];
    svfx_text_path(pidfile, sizeof pidfile, fx, "slow.pid");
    const char *argv[] = {HELPER("svc_sleeper"), "--pidfile", pidfile, NULL};
    kiln_svc_spec_t spec = svfx_make_spec("slow-svfx_setup", argv);
    spec.oneshot = true;
    spec.oneshot_timeout_ms = 200;
    spec.restart = KILN_RESTART_NEVER;
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    svfx_wait_pids(fx, pidfile, 1);
    svfx_wait_state(fx, "slow-svfx_setup", "failed");
    pid_t pid;
    svfx_read_pids(pidfile, &pid, 1);
    svfx_wait_gone(fx, pid);
    json_t *st = svfx_status_of(fx, "slow-svfx_setup");
    assert_non_null(strstr(json_string_value(json_object_get(st, "last_error")), "timed out"));
    assert_false(json_is_true(json_object_get(st, "ready")));
    json_decref(st);
}

static void a_service_waiting_on_a_failed_step_fails_too_naming_it(void **state)
{
    svfx_t *fx = *state;
    const char *step_argv[] = {HELPER("svc_crasher"), "3", "100", NULL};
    const char *app_argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[3] = {svfx_make_spec("fetch", step_argv), svfx_make_spec("app", app_argv),
                                svfx_make_spec("front", app_argv)};
    specs[0].oneshot = true;
    specs[0].restart = KILN_RESTART_NEVER;
    specs[1].depends_on = svfx_strv("fetch", NULL);
    specs[2].depends_on = svfx_strv("app", NULL);
    svfx_apply_ok(fx, specs, 3);
    svfx_clear_specs(specs, 3);
    svfx_wait_state(fx, "fetch", "failed");
    /* Not left waiting forever: app fails at once, and so does front. */
    json_t *st = svfx_status_of(fx, "app");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "failed");
    const char *why = json_string_value(json_object_get(st, "last_error"));
    assert_non_null(why);
    assert_non_null(strstr(why, "depends on fetch, which failed"));
    json_decref(st);
    st = svfx_status_of(fx, "front");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "failed");
    assert_non_null(strstr(json_string_value(json_object_get(st, "last_error")), "depends on app"));
    json_decref(st);
    json_t *ev[2];
    assert_int_equal(svfx_find_events(fx, "app", "state", "starting", ev, 2), 0);
    assert_int_equal(svfx_find_events(fx, "app", "state", "running", ev, 2), 0);
    /* The step fixed and run again: both start without being told. */
    const char *fixed_argv[] = {HELPER("svc_crasher"), "0", "50", NULL};
    kiln_svc_spec_t again[3] = {svfx_make_spec("fetch", fixed_argv),
                                svfx_make_spec("app", app_argv), svfx_make_spec("front", app_argv)};
    again[0].oneshot = true;
    again[0].restart = KILN_RESTART_NEVER;
    again[1].depends_on = svfx_strv("fetch", NULL);
    again[2].depends_on = svfx_strv("app", NULL);
    svfx_apply_ok(fx, again, 3);
    svfx_clear_specs(again, 3);
    svfx_wait_state(fx, "fetch", "exited");
    svfx_wait_state(fx, "app", "running");
    svfx_wait_state(fx, "front", "running");
}

static void readiness_fd_marks_running(void **state)
{
    svfx_t *fx = *state;
    const char *notify_argv[] = {HELPER("svc_notify"), "200", NULL};
    const char *silent_argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[2] = {svfx_make_spec("notifier", notify_argv),
                                svfx_make_spec("silent", silent_argv)};
    specs[0].ready.kind = specs[1].ready.kind = KILN_READY_FD;
    specs[1].ready.deadline_ms = 300;
    specs[1].restart = KILN_RESTART_NEVER;
    svfx_apply_ok(fx, specs, 2);
    svfx_clear_specs(specs, 2);
    json_t *st = svfx_status_of(fx, "notifier");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "starting");
    assert_false(json_is_true(json_object_get(st, "ready")));
    json_decref(st);
    svfx_wait_state(fx, "notifier", "running");
    json_t *ev[2];
    assert_int_equal(svfx_find_events(fx, "notifier", "ready", NULL, ev, 2), 1);
    /* A service that never says it is ready fails at its deadline. */
    svfx_wait_state(fx, "silent", "failed");
    st = svfx_status_of(fx, "silent");
    assert_non_null(strstr(json_string_value(json_object_get(st, "last_error")), "not ready"));
    json_decref(st);
}

static bool absent(void *ctx)
{
    svfx_svc_wait_t *w = ctx;
    json_t *st = kiln_supervisor_service_status(w->fx->sv, w->name);
    json_decref(st);
    return st == NULL;
}

static void apply_reload_keeps_untouched_pids_and_restarts_changed(void **state)
{
    svfx_t *fx = *state;
    const char *a_argv[] = {HELPER("svc_sleeper"), NULL};
    const char *b_argv[] = {HELPER("svc_sleeper"), "--say", "one", NULL};
    const char *b2_argv[] = {HELPER("svc_sleeper"), "--say", "two", NULL};
    kiln_svc_spec_t first[2] = {svfx_make_spec("a", a_argv), svfx_make_spec("b", b_argv)};
    svfx_apply_ok(fx, first, 2);
    svfx_wait_state(fx, "a", "running");
    svfx_wait_state(fx, "b", "running");
    json_int_t a_pid = svfx_status_int(fx, "a", "pid"), b_pid = svfx_status_int(fx, "b", "pid");
    kiln_svc_spec_t second[3] = {svfx_make_spec("a", a_argv), svfx_make_spec("b", b2_argv),
                                 svfx_make_spec("c", a_argv)};
    svfx_apply_ok(fx, second, 3);
    svfx_wait_state(fx, "c", "running");
    svfx_wait_gone(fx, (pid_t)b_pid);
    svfx_wait_state(fx, "b", "running");
    assert_int_equal(svfx_status_int(fx, "a", "pid"), a_pid);
    assert_int_not_equal(svfx_status_int(fx, "b", "pid"), b_pid);
    /* Dropping c stops and removes it; a is still untouched. */
    json_int_t c_pid = svfx_status_int(fx, "c", "pid");
    svfx_apply_ok(fx, first, 2);
    svfx_wait_gone(fx, (pid_t)c_pid);
    svfx_svc_wait_t w = {fx, "c", NULL};
    assert_true(svfx_run_until(fx, absent, &w, WAIT_MS));
    assert_int_equal(svfx_status_int(fx, "a", "pid"), a_pid);
    svfx_clear_specs(first, 2);
    svfx_clear_specs(second, 3);
}

static void apply_refuses_unknown_dependency_and_cycles_changing_nothing(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t one = svfx_make_spec("a", argv);
    svfx_apply_ok(fx, &one, 1);
    svfx_wait_state(fx, "a", "running");
    json_int_t a_pid = svfx_status_int(fx, "a", "pid");
    kiln_err_t err = {0};
    kiln_svc_spec_t unknown[2] = {svfx_make_spec("a", argv), svfx_make_spec("b", argv)};
    unknown[1].depends_on = svfx_strv("x", NULL);
    assert_int_equal(kiln_supervisor_apply(fx->sv, unknown, 2, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "service b: depends_on \"x\""));
    kiln_svc_spec_t cycle[3] = {svfx_make_spec("a", argv), svfx_make_spec("b", argv),
                                svfx_make_spec("c", argv)};
    cycle[1].depends_on = svfx_strv("c", NULL);
    cycle[2].depends_on = svfx_strv("b", NULL);
    assert_int_equal(kiln_supervisor_apply(fx->sv, cycle, 3, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "cycle"));
    assert_null(kiln_supervisor_service_status(fx->sv, "b"));
    assert_null(kiln_supervisor_service_status(fx->sv, "c"));
    assert_int_equal(svfx_status_int(fx, "a", "pid"), a_pid);
    kiln_svc_spec_clear(&one);
    svfx_clear_specs(unknown, 2);
    svfx_clear_specs(cycle, 3);
}

/* Every limit of a spec is checked, and the error names the field, what
 * it expected and what it got; nothing of the set is applied. */
static void apply_refuses_out_of_range_limits_naming_the_field(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), NULL};
    static const struct {
        const char *field, *message;
    } cases[] = {
        {"backoff_base_ms", "service bad: backoff_base_ms: expected 0-86400000, got -1"},
        {"backoff_max_ms", "service bad: backoff_max_ms: expected at least backoff_base_ms (50) "
                           "and at most 86400000, got 20"},
        {"max_failures", "service bad: max_failures: expected 1-64, got 65"},
        {"failure_window_ms", "service bad: failure_window_ms: expected 1-86400000, got 0"},
        {"stop_timeout_ms", "service bad: stop_timeout_ms: expected 0-86400000, got -3"},
        {"ready.interval_ms", "service bad: ready.interval_ms: expected 1-86400000, got 0"},
        {"stable_ms", "service bad: stable_ms: expected 0-86400000, got 86400001"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kiln_svc_spec_t spec = svfx_make_spec("bad", argv);
        if (i == 0)
            spec.backoff_base_ms = -1;
        else if (i == 1)
            spec.backoff_max_ms = 20; /* below svfx_make_spec's base of 50 */
        else if (i == 2)
            spec.max_failures = 65;
        else if (i == 3)
            spec.failure_window_ms = 0;
        else if (i == 4)
            spec.stop_timeout_ms = -3;
        else if (i == 5)
            spec.ready.interval_ms = 0;
        else
            spec.stable_ms = 86400001;
        kiln_err_t err = {0};
        assert_int_equal(kiln_supervisor_apply(fx->sv, &spec, 1, &err), KILN_EINVAL);
        assert_string_equal(err.msg, cases[i].message);
        kiln_svc_spec_clear(&spec);
    }
    json_t *all = kiln_supervisor_status(fx->sv);
    assert_int_equal(json_array_size(all), 0);
    json_decref(all);
}

static void memory_limit_restarts_the_service(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), "--alloc-mb", "64", NULL};
    kiln_svc_spec_t spec = svfx_make_spec("hog", argv);
    spec.memory_limit_mb = 32;
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    count_wait_t w = {fx, "hog", "state", "backoff", 1};
    assert_true(svfx_run_until(fx, has_events, &w, WAIT_MS));
    json_t *ev[1];
    svfx_find_events(fx, "hog", "state", "backoff", ev, 1);
    assert_non_null(strstr(json_string_value(json_object_get(ev[0], "reason")), "memory"));
    w.to = "starting";
    w.n = 2;
    assert_true(svfx_run_until(fx, has_events, &w, WAIT_MS));
    assert_true(svfx_status_int(fx, "hog", "restarts") >= 1);
}

typedef struct log_wait {
    svfx_t *fx;
    const char *name, *stream, *text;
} log_wait_t;

static bool logged(void *ctx)
{
    log_wait_t *w = ctx;
    return log_contains(w->fx, w->name, w->stream, w->text);
}

static void status_reports_pid_uptime_restarts_rss(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), "--alloc-mb", "24", "--say", "hello", NULL};
    kiln_svc_spec_t spec = svfx_make_spec("worker", argv);
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    svfx_wait_state(fx, "worker", "running");
    /* It says hello (on both streams) after touching its memory. */
    log_wait_t lw = {fx, "worker", "stdout", "hello"};
    assert_true(svfx_run_until(fx, logged, &lw, WAIT_MS));
    lw.stream = "stderr";
    lw.text = "err: hello";
    assert_true(svfx_run_until(fx, logged, &lw, WAIT_MS));
    json_t *st = svfx_status_of(fx, "worker");
    json_int_t pid = json_integer_value(json_object_get(st, "pid"));
    assert_true(pid > 0);
    assert_int_equal(json_integer_value(json_object_get(st, "pgid")), pid);
    assert_true(json_integer_value(json_object_get(st, "uptime_ms")) >= 0);
    assert_int_equal(json_integer_value(json_object_get(st, "restarts")), 0);
    assert_true(json_real_value(json_object_get(st, "rss_mb")) >= 20.0);
    assert_true(json_real_value(json_object_get(st, "cpu_pct")) >= 0.0);
    assert_true(json_is_false(json_object_get(st, "oneshot")));
    assert_true(json_is_true(json_object_get(st, "ready")));
    json_decref(st);
    assert_int_equal(kiln_supervisor_restart(fx->sv, "worker", NULL), 0);
    svfx_wait_gone(fx, (pid_t)pid);
    svfx_wait_state(fx, "worker", "running");
    assert_int_equal(svfx_status_int(fx, "worker", "restarts"), 1);
    assert_int_not_equal(svfx_status_int(fx, "worker", "pid"), pid);
    assert_true(log_contains(fx, "worker", "agent", "started pid"));
    kiln_err_t err = {0};
    assert_int_equal(kiln_supervisor_stop(fx->sv, "nope", &err), KILN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "nope"));
}

/* Position of the first event of service moving to state `to`; -1 if none. */
static long event_index(svfx_t *fx, const char *service, const char *to)
{
    size_t i;
    json_t *e;
    json_array_foreach(fx->events, i, e)
    {
        const char *to_s = json_string_value(json_object_get(e, "to"));
        if (strcmp(json_string_value(json_object_get(e, "service")), service) == 0 && to_s &&
            strcmp(to_s, to) == 0)
            return (long)i;
    }
    return -1;
}

static void shutdown_stops_dependents_before_their_dependencies(void **state)
{
    svfx_t *fx = *state;
    const char *argv[] = {HELPER("svc_sleeper"), NULL};
    kiln_svc_spec_t specs[3] = {svfx_make_spec("db", argv), svfx_make_spec("api", argv),
                                svfx_make_spec("worker", argv)};
    specs[1].depends_on = svfx_strv("db", NULL);
    specs[2].depends_on = svfx_strv("api", NULL);
    svfx_apply_ok(fx, specs, 3);
    svfx_clear_specs(specs, 3);
    svfx_wait_state(fx, "worker", "running");
    json_array_clear(fx->events);
    svfx_close_supervisor(fx);
    long worker_down = event_index(fx, "worker", "down");
    long api_stopping = event_index(fx, "api", "stopping"),
         api_down = event_index(fx, "api", "down");
    long db_stopping = event_index(fx, "db", "stopping");
    assert_true(worker_down >= 0 && api_stopping >= 0 && api_down >= 0 && db_stopping >= 0);
    assert_true(worker_down < api_stopping);
    assert_true(api_down < db_stopping);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, svfx_setup, svfx_teardown)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("KILN_TEST_FILTER"))
        cmocka_set_test_filter(getenv("KILN_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        TEST(services_start_in_parallel_and_report_running),
        TEST(dependent_waits_for_dependency_readiness),
        TEST(crash_loop_backs_off_exponentially_then_goes_failed_with_an_alert),
        TEST(never_ready_service_is_restarted_then_goes_failed),
        TEST(backoff_resets_after_a_stable_run),
        TEST(restart_policy_never_and_on_failure),
        TEST(stop_sigterm_then_sigkill_after_timeout_kills_the_whole_group),
        TEST(no_grandchild_outlives_its_service),
        TEST(state_file_is_written_once_for_a_burst_of_spawns),
        TEST(spawn_does_not_fork_the_agent),
        TEST(exec_failure_is_reported_clearly),
        TEST(oneshot_runs_once_and_marker_skips_it_next_time),
        TEST(oneshot_timeout_fails_it),
        TEST(a_service_waiting_on_a_failed_step_fails_too_naming_it),
        TEST(readiness_fd_marks_running),
        TEST(apply_reload_keeps_untouched_pids_and_restarts_changed),
        TEST(apply_refuses_unknown_dependency_and_cycles_changing_nothing),
        TEST(apply_refuses_out_of_range_limits_naming_the_field),
        TEST(memory_limit_restarts_the_service),
        TEST(status_reports_pid_uptime_restarts_rss),
        TEST(shutdown_stops_dependents_before_their_dependencies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
