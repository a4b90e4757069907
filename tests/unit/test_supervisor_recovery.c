/*
 * Recovery after a killed agent: an "old agent" (a forked process running
 * its own supervisor on the fixture's state file) starts services and is
 * killed with SIGKILL; the test's supervisor must then stop everything it
 * left: the services' groups, their escaped setsid grandchildren (also
 * once their parent is gone), and all leftovers at once, not one by one.
 */
#include "kiln_test.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "sv_fixture.h"

static void on_status_tick(uv_timer_t *t)
{
    json_decref(kiln_supervisor_status(t->data)); /* sweeps: finds escapees */
}

/* The old agent: runs specs (taken) under its own supervisor and loop
 * until the test kills it; with `status_calls`, asks for its status every
 * 20 ms as the machine API would. Never returns. */
static void run_old_agent(svfx_t *fx, kiln_svc_spec_t *specs, size_t n, bool status_calls)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    kiln_supervisor_options_t opts = {.state_file = fx->state_file};
    kiln_supervisor_t *sv;
    if (kiln_supervisor_new(&loop, &opts, &sv, NULL) != 0)
        _exit(3);
    if (kiln_supervisor_apply(sv, specs, n, NULL) != 0)
        _exit(4);
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    tick.data = sv;
    if (status_calls)
        uv_timer_start(&tick, on_status_tick, 20, 20);
    for (;;)
        uv_run(&loop, UV_RUN_DEFAULT);
}

/* Forks the old agent with specs; the test's own supervisor is closed
 * first (it comes back with svfx_new_supervisor). */
static pid_t start_old_agent(svfx_t *fx, kiln_svc_spec_t *specs, size_t n, bool status_calls)
{
    svfx_close_supervisor(fx);
    pid_t old_agent = fork();
    assert_true(old_agent >= 0);
    if (old_agent == 0)
        run_old_agent(fx, specs, n, status_calls);
    svfx_clear_specs(specs, n);
    return old_agent;
}

static void state_file_lets_a_new_supervisor_stop_what_an_old_one_left_running(void **state)
{
    svfx_t *fx = *state;
    char pids[320], child_pids[320];
    svfx_text_path(pids, sizeof pids, fx, "single.pids");
    svfx_text_path(child_pids, sizeof child_pids, fx, "single-child.pids");
    const char *argv[] = {HELPER("svc_sleeper"), "--pidfile", pids, "--child", child_pids, NULL};
    kiln_svc_spec_t spec = svfx_make_spec("single", argv);
    pid_t old_agent = start_old_agent(fx, &spec, 1, false);
    svfx_wait_pids(fx, pids, 1);
    svfx_wait_pids(fx, child_pids, 1);
    kiln_test_kill(old_agent, SIGKILL, 1000);
    pid_t first[4], first_child[4];
    svfx_read_pids(pids, first, 4);
    svfx_read_pids(child_pids, first_child, 4);
    assert_true(svfx_pid_alive(first[0])); /* left running by the killed agent */
    /* The next agent stops the leftover (group and all) before starting. */
    fx->sv = svfx_new_supervisor(fx);
    assert_false(svfx_pid_alive(first[0]));
    assert_false(svfx_pid_alive(first_child[0]));
    spec = svfx_make_spec("single", argv);
    svfx_apply_ok(fx, &spec, 1);
    kiln_svc_spec_clear(&spec);
    svfx_wait_pids(fx, pids, 2);
    pid_t all[8];
    size_t n = svfx_read_pids(pids, all, 8), alive = 0;
    for (size_t i = 0; i < n; i++)
        alive += svfx_pid_alive(all[i]);
    assert_int_equal(n, 2);
    assert_int_equal(alive, 1);
    assert_true(svfx_pid_alive(all[1]));
}

/* A grandchild that called setsid() is in neither the service's group nor
 * its session: signals to those miss it, but it is the service's. */
static void recovery_stops_escaped_setsid_grandchildren_of_a_killed_agent(void **state)
{
    svfx_t *fx = *state;
    char grandchild_pid[320];
    svfx_text_path(grandchild_pid, sizeof grandchild_pid, fx, "grandchild.pid");
    const char *argv[] = {HELPER("svc_forker"), grandchild_pid, "--setsid", NULL};
    kiln_svc_spec_t spec = svfx_make_spec("forker", argv);
    pid_t old_agent = start_old_agent(fx, &spec, 1, false);
    svfx_wait_pids(fx, grandchild_pid, 1);
    kiln_test_kill(old_agent, SIGKILL, 1000);
    pid_t grandchild;
    assert_int_equal(svfx_read_pids(grandchild_pid, &grandchild, 1), 1);
    assert_true(svfx_pid_alive(grandchild));
    fx->sv = svfx_new_supervisor(fx);
    assert_false(svfx_pid_alive(grandchild));
}

typedef struct text_wait {
    const char *path, *text;
} text_wait_t;

static bool file_contains(void *ctx)
{
    text_wait_t *w = ctx;
    char buf[8192];
    FILE *f = fopen(w->path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    return strstr(buf, w->text) != NULL;
}

static bool pid_dead(void *ctx)
{
    return !svfx_pid_alive(*(pid_t *)ctx);
}

/* Once the service's main process is gone too, the escaped grandchild has
 * been reparented away (to init): no parent link leads to it any more,
 * only the state file, which names it with its start time. */
static void recovery_finds_escapees_whose_parent_died_through_the_state_file(void **state)
{
    svfx_t *fx = *state;
    char grandchild_pid[320];
    svfx_text_path(grandchild_pid, sizeof grandchild_pid, fx, "grandchild.pid");
    const char *argv[] = {HELPER("svc_forker"), grandchild_pid, "--setsid", NULL};
    kiln_svc_spec_t spec = svfx_make_spec("forker", argv);
    pid_t old_agent = start_old_agent(fx, &spec, 1, true);
    svfx_wait_pids(fx, grandchild_pid, 1);
    pid_t grandchild;
    assert_int_equal(svfx_read_pids(grandchild_pid, &grandchild, 1), 1);
    char escaped[64];
    snprintf(escaped, sizeof escaped, "\"escaped\":[[%d,", (int)grandchild);
    text_wait_t w = {fx->state_file, escaped};
    bool persisted = kiln_test_wait_until(file_contains, &w, WAIT_MS);
    kiln_test_kill(old_agent, SIGKILL, 1000);
    assert_true(persisted);
    /* Now the service's main process dies too (its pid is the group's). */
    FILE *f = fopen(fx->state_file, "r");
    json_t *saved = json_loadf(f, 0, NULL);
    fclose(f);
    json_t *entry = json_array_get(json_object_get(saved, "services"), 0);
    pid_t forker = (pid_t)json_integer_value(json_object_get(entry, "pid"));
    json_decref(saved);
    assert_true(forker > 1);
    kill(forker, SIGKILL);
    assert_true(kiln_test_wait_until(pid_dead, &forker, WAIT_MS));
    assert_true(svfx_pid_alive(grandchild));
    fx->sv = svfx_new_supervisor(fx);
    assert_false(svfx_pid_alive(grandchild));
}

/* Two leftovers that ignore SIGTERM, each with a 1 s stop timeout: stopped
 * one after the other they would take 2 s; together, about 1 s. */
static void recovery_stops_all_leftovers_at_once(void **state)
{
    svfx_t *fx = *state;
    char pids[320];
    svfx_text_path(pids, sizeof pids, fx, "stubborn.pids");
    const char *argv[] = {HELPER("svc_sleeper"), "--ignore-term", "--pidfile", pids, NULL};
    kiln_svc_spec_t specs[2] = {svfx_make_spec("stubborn-a", argv),
                                svfx_make_spec("stubborn-b", argv)};
    specs[0].stop_timeout_ms = specs[1].stop_timeout_ms = 1000;
    pid_t old_agent = start_old_agent(fx, specs, 2, false);
    svfx_wait_pids(fx, pids, 2);
    kiln_test_kill(old_agent, SIGKILL, 1000);
    pid_t left[2];
    assert_int_equal(svfx_read_pids(pids, left, 2), 2);
    int64_t t0 = kiln_test_now_ms();
    fx->sv = svfx_new_supervisor(fx);
    int64_t took = kiln_test_now_ms() - t0;
    assert_false(svfx_pid_alive(left[0]));
    assert_false(svfx_pid_alive(left[1]));
    assert_true(took >= 1000); /* each got its full stop timeout */
    assert_true(took < 2000);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, svfx_setup, svfx_teardown)

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("KILN_TEST_FILTER"))
        cmocka_set_test_filter(getenv("KILN_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        TEST(state_file_lets_a_new_supervisor_stop_what_an_old_one_left_running),
        TEST(recovery_stops_escaped_setsid_grandchildren_of_a_killed_agent),
        TEST(recovery_finds_escapees_whose_parent_died_through_the_state_file),
        TEST(recovery_stops_all_leftovers_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
