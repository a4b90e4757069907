/*
 * The connector interface (type table, instance wrapper, outcomes, option
 * helpers) and the simulation connector.
 */
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---- fixtures --------------------------------------------------------------- */

typedef struct progress_log {
    pthread_mutex_t lock;
    atomic_int count;
    double last_percent;
    char last_message[64];
} progress_log_t;

static void record_progress(void *ctx, double percent, const char *message)
{
    progress_log_t *p = ctx;
    pthread_mutex_lock(&p->lock);
    p->last_percent = percent;
    snprintf(p->last_message, sizeof p->last_message, "%s", message ? message : "");
    pthread_mutex_unlock(&p->lock);
    atomic_fetch_add(&p->count, 1);
}

/* Cancels a job the way the worker does (flag, then the fd) once the job
 * has reported `after` progress updates. */
typedef struct canceller {
    atomic_int flag;
    int fd;
    progress_log_t *progress;
    int after;
    pthread_t thread;
} canceller_t;

static bool progress_reached(void *ctx)
{
    canceller_t *c = ctx;
    return atomic_load(&c->progress->count) >= c->after;
}

static void *cancel_main(void *ctx)
{
    canceller_t *c = ctx;
    kiln_test_wait_until(progress_reached, c, 30000);
    atomic_store(&c->flag, 1);
    uint64_t one = 1;
    ssize_t n = write(c->fd, &one, sizeof one);
    (void)n;
    return NULL;
}

static void canceller_start(canceller_t *c, progress_log_t *p, int after)
{
    atomic_init(&c->flag, 0);
    c->fd = eventfd(0, EFD_CLOEXEC);
    assert_true(c->fd >= 0);
    c->progress = p;
    c->after = after;
    assert_int_equal(pthread_create(&c->thread, NULL, cancel_main, c), 0);
}

static void canceller_join(canceller_t *c)
{
    pthread_join(c->thread, NULL);
    close(c->fd);
}

static kiln_job_context_t job_for(const char *payload, progress_log_t *p, canceller_t *c)
{
    static atomic_int never = 0;
    kiln_job_context_t job = {
        .job_id = "simulation.1",
        .service = "sim",
        .payload_json = payload,
        .attempt = 1,
        .progress = p ? record_progress : NULL,
        .progress_ctx = p,
        .cancel = c ? &c->flag : &never,
        .cancel_fd = c ? c->fd : -1,
    };
    return job;
}

static kiln_connector_t *make_sim(const char *options_json)
{
    kiln_connector_config_t cfg = {.name = "sim", .type = "simulation"};
    cfg.options = json_loads(options_json, 0, NULL);
    assert_non_null(cfg.options);
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    int rc = kiln_connector_new(&cfg, &c, &err);
    json_decref(cfg.options);
    if (rc != 0)
        fail_msg("kiln_connector_new: %s", err.msg);
    return c;
}

static int sim_init_error(const char *options_json, kiln_err_t *err)
{
    kiln_connector_config_t cfg = {.name = "sim", .type = "simulation"};
    cfg.options = json_loads(options_json, 0, NULL);
    kiln_connector_t *c = NULL;
    int rc = kiln_connector_new(&cfg, &c, err);
    json_decref(cfg.options);
    kiln_connector_free(c);
    return rc;
}

static kiln_job_outcome_t run_payload(kiln_connector_t *c, const char *payload)
{
    kiln_job_context_t job = job_for(payload, NULL, NULL);
    kiln_job_outcome_t out;
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    return out;
}

/* ---- the interface ---------------------------------------------------------- */

static void connector_types_table_lists_the_builtins(void **state)
{
    assert_ptr_equal(kiln_connector_find_type("simulation"), &kiln_connector_simulation);
    assert_ptr_equal(kiln_connector_find_type("exec"), &kiln_connector_exec);
    assert_null(kiln_connector_find_type("comfyui-but-misspelled"));
    assert_null(kiln_connector_find_type(NULL));
}

static void connector_new_refuses_unknown_type_naming_it(void **state)
{
    kiln_connector_config_t cfg = {.name = "render", .type = "fmpeg"};
    kiln_connector_t *c = (kiln_connector_t *)&cfg;
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_new(&cfg, &c, &err), KILN_EINVAL);
    assert_null(c);
    assert_non_null(strstr(err.msg, "connectors.render.type"));
    assert_non_null(strstr(err.msg, "\"fmpeg\""));
    assert_non_null(strstr(err.msg, "simulation, exec"));
}

static void connector_new_with_no_options_uses_defaults(void **state)
{
    kiln_connector_config_t cfg = {.name = "simulation", .type = "simulation", .options = NULL};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_new(&cfg, &c, &err), 0);
    assert_string_equal(kiln_connector_name(c), "simulation");
    assert_int_equal(kiln_connector_health(c, &err), 0);
    kiln_connector_free(c);
}

static void job_outcome_fail_replaces_and_clear_frees(void **state)
{
    kiln_job_outcome_t out = {.result_json = strdup("{\"partial\":1}")};
    assert_int_equal(kiln_job_outcome_fail(&out, false, "bad %s at %d", "input", 3), 0);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_null(out.result_json);
    assert_string_equal(out.error, "bad input at 3");
    assert_false(out.retryable);
    kiln_job_outcome_clear(&out);
    assert_null(out.error);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
}

/* ---- simulation ------------------------------------------------------------- */

static void simulation_reports_each_step_and_completes(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 50, \"steps\": 5}");
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    kiln_job_context_t job = job_for("{}", &p, NULL);
    kiln_job_outcome_t out;
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    assert_true(kiln_test_now_ms() - start >= 50);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_string_equal(out.result_json, "{\"simulated\":true,\"steps\":5}");
    assert_int_equal(atomic_load(&p.count), 5);
    assert_true(p.last_percent == 100.0);
    assert_string_equal(p.last_message, "step 5/5");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void simulation_zero_duration_completes_at_once_without_progress(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 0, \"steps\": 1}");
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    kiln_job_context_t job = job_for("{}", &p, NULL);
    for (int i = 0; i < 1000; i++) {
        kiln_job_outcome_t out;
        assert_int_equal(kiln_connector_run(c, &job, &out), 0);
        assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
        assert_string_equal(out.result_json, "{\"simulated\":true,\"steps\":1}");
        kiln_job_outcome_clear(&out);
    }
    assert_int_equal(atomic_load(&p.count), 0);
    kiln_connector_free(c);
}

static void simulation_payload_overrides(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 60000, \"steps\": 10}");
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    kiln_job_context_t job = job_for("{\"duration_ms\": 20, \"steps\": 4, \"result\": {\"url\": "
                                     "\"s3://x\"}, \"model\": \"ignored\"}",
                                     &p, NULL);
    kiln_job_outcome_t out;
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_string_equal(out.result_json, "{\"url\":\"s3://x\"}");
    assert_int_equal(atomic_load(&p.count), 4);
    assert_string_equal(p.last_message, "step 4/4");
    kiln_job_outcome_clear(&out);

    out = run_payload(c, "{\"duration_ms\": 0, \"result\": null}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    assert_null(out.result_json);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void simulation_report_start_adds_the_start_time_to_the_result(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 0}");
    struct timespec before;
    clock_gettime(CLOCK_REALTIME, &before);
    kiln_job_outcome_t out = run_payload(c, "{\"report_start\": true}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    json_t *result = json_loads(out.result_json, 0, NULL);
    long long started = json_integer_value(json_object_get(result, "started_us"));
    long long before_us = (long long)before.tv_sec * 1000000 + before.tv_nsec / 1000;
    assert_true(started >= before_us && started < before_us + 5000000);
    json_decref(result);
    kiln_job_outcome_clear(&out);
    out = run_payload(c, "{\"report_start\": \"yes\"}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_non_null(strstr(out.error, "payload.report_start"));
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void simulation_payload_fail_sets_message_and_retryable(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 0}");
    kiln_job_outcome_t out = run_payload(c, "{\"fail\": \"GPU melted\", \"retryable\": false}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_string_equal(out.error, "GPU melted");
    assert_false(out.retryable);
    kiln_job_outcome_clear(&out);

    out = run_payload(c, "{\"fail\": true}");
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_string_equal(out.error, "simulated failure");
    assert_true(out.retryable);
    kiln_job_outcome_clear(&out);

    out = run_payload(c, "{\"fail\": false}");
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void simulation_fail_attempts_fails_only_the_first_attempts(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 0}");
    const char *payload = "{\"fail\": true, \"fail_attempts\": 2}";
    for (int attempt = 1; attempt <= 3; attempt++) {
        kiln_job_context_t job = job_for(payload, NULL, NULL);
        job.attempt = attempt;
        kiln_job_outcome_t out;
        assert_int_equal(kiln_connector_run(c, &job, &out), 0);
        assert_int_equal(out.status, attempt <= 2 ? KILN_OUTCOME_FAILED : KILN_OUTCOME_COMPLETED);
        kiln_job_outcome_clear(&out);
    }
    kiln_connector_free(c);
}

static void expect_bad_payload(kiln_connector_t *c, const char *payload, const char *needle)
{
    kiln_job_outcome_t out = run_payload(c, payload);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    if (!strstr(out.error, needle))
        fail_msg("error \"%s\" does not name \"%s\"", out.error, needle);
    kiln_job_outcome_clear(&out);
}

static void simulation_bad_payload_field_fails_naming_it(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 0}");
    expect_bad_payload(c, "{\"duration_ms\": \"abc\"}", "payload.duration_ms: expected an integer");
    expect_bad_payload(c, "{\"duration_ms\": -5}", "payload.duration_ms");
    expect_bad_payload(c, "{\"steps\": 0}", "payload.steps: expected an integer 1-10000, got 0");
    expect_bad_payload(c, "{\"fail\": 3}", "payload.fail");
    expect_bad_payload(c, "{\"retryable\": \"yes\"}", "payload.retryable");
    expect_bad_payload(c, "{\"steps\": ", "payload: not valid JSON");
    kiln_job_outcome_t out = run_payload(c, "[1, 2]"); /* not an object: nothing to override */
    assert_int_equal(out.status, KILN_OUTCOME_COMPLETED);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void simulation_cancel_is_immediate(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 60000, \"steps\": 10000}");
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    canceller_t cancel;
    canceller_start(&cancel, &p, 1);
    kiln_job_context_t job = job_for("{}", &p, &cancel);
    kiln_job_outcome_t out;
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    int64_t elapsed = kiln_test_now_ms() - start;
    canceller_join(&cancel);
    assert_int_equal(out.status, KILN_OUTCOME_CANCELLED);
    assert_null(out.error);
    /* A 60 s job: stopping long before its end shows the wait broke off. */
    assert_true(elapsed < 10000);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void simulation_timeout_fails_retryable(void **state)
{
    kiln_connector_t *c = make_sim("{\"duration_ms\": 60000, \"steps\": 2}");
    kiln_job_context_t job = job_for("{}", NULL, NULL);
    job.timeout_ms = 50;
    kiln_job_outcome_t out;
    int64_t start = kiln_test_now_ms();
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    assert_true(kiln_test_now_ms() - start >= 50);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_true(out.retryable);
    assert_string_equal(out.error, "timed out after 50 ms");
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void failure_pattern(kiln_connector_t *c, char *pattern, int n)
{
    for (int i = 0; i < n; i++) {
        kiln_job_outcome_t out = run_payload(c, "{}");
        pattern[i] = out.status == KILN_OUTCOME_FAILED ? 'F' : '.';
        if (out.status == KILN_OUTCOME_FAILED)
            assert_true(out.retryable);
        kiln_job_outcome_clear(&out);
    }
    pattern[n] = '\0';
}

static void simulation_failure_rate_is_seeded_and_reproducible(void **state)
{
    enum { N = 400 };
    char first[N + 1], second[N + 1], other[N + 1];
    const char *opts = "{\"duration_ms\": 0, \"failure_rate\": 0.5, \"seed\": 42}";
    kiln_connector_t *a = make_sim(opts), *b = make_sim(opts);
    kiln_connector_t *d = make_sim("{\"duration_ms\": 0, \"failure_rate\": 0.5, \"seed\": 43}");
    failure_pattern(a, first, N);
    failure_pattern(b, second, N);
    failure_pattern(d, other, N);
    assert_string_equal(first, second);
    assert_string_not_equal(first, other);
    int failures = 0;
    for (int i = 0; i < N; i++)
        failures += first[i] == 'F';
    assert_in_range(failures, N / 4, 3 * N / 4);
    kiln_connector_free(a);
    kiln_connector_free(b);
    kiln_connector_free(d);

    kiln_connector_t *never = make_sim("{\"duration_ms\": 0, \"failure_rate\": 0}");
    kiln_connector_t *always = make_sim("{\"duration_ms\": 0, \"failure_rate\": 1}");
    failure_pattern(never, first, 50);
    failure_pattern(always, second, 50);
    assert_null(strchr(first, 'F'));
    assert_null(strchr(second, '.'));
    kiln_connector_free(never);
    kiln_connector_free(always);
}

typedef struct shared_sim {
    kiln_connector_t *c;
    atomic_int failures;
} shared_sim_t;

static void *run_many(void *ctx)
{
    shared_sim_t *s = ctx;
    for (int i = 0; i < 500; i++) {
        kiln_job_outcome_t out = run_payload(s->c, "{}");
        if (out.status == KILN_OUTCOME_FAILED)
            atomic_fetch_add(&s->failures, 1);
        kiln_job_outcome_clear(&out);
    }
    return NULL;
}

/* Each draw takes the next value of one seeded sequence, so however the
 * threads interleave, the number of failures equals a sequential run's. */
static void simulation_concurrent_runs_share_the_seeded_sequence(void **state)
{
    const char *opts = "{\"duration_ms\": 0, \"failure_rate\": 0.3, \"seed\": 7}";
    shared_sim_t s = {.c = make_sim(opts)};
    pthread_t threads[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, run_many, &s), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    shared_sim_t sequential = {.c = make_sim(opts)};
    for (int i = 0; i < 8; i++)
        run_many(&sequential);
    assert_int_equal(atomic_load(&s.failures), atomic_load(&sequential.failures));
    kiln_connector_free(s.c);
    kiln_connector_free(sequential.c);
}

static void expect_bad_option(const char *options, const char *needle)
{
    kiln_err_t err = {0};
    assert_int_equal(sim_init_error(options, &err), KILN_EINVAL);
    if (!strstr(err.msg, needle))
        fail_msg("error \"%s\" does not name \"%s\"", err.msg, needle);
}

static void simulation_invalid_options_are_refused_naming_the_option(void **state)
{
    expect_bad_option("{\"duration_ms\": -1}",
                      "connectors.sim.duration_ms: expected an integer 0-86400000, got -1");
    expect_bad_option("{\"steps\": 0}", "connectors.sim.steps");
    expect_bad_option("{\"steps\": 10001}", "connectors.sim.steps");
    expect_bad_option("{\"failure_rate\": 1.5}",
                      "connectors.sim.failure_rate: expected a number 0-1, got 1.5");
    expect_bad_option("{\"failure_rate\": \"often\"}", "connectors.sim.failure_rate");
    expect_bad_option("{\"seed\": \"x\"}", "connectors.sim.seed");
    kiln_err_t err = {0};
    assert_int_equal(sim_init_error("{\"duration_ms\": null, \"typo_ms\": 1}", &err), 0);
}

int main(void)
{
    kiln_log_configure(KILN_LOG_TEXT, KILN_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(connector_types_table_lists_the_builtins),
        cmocka_unit_test(connector_new_refuses_unknown_type_naming_it),
        cmocka_unit_test(connector_new_with_no_options_uses_defaults),
        cmocka_unit_test(job_outcome_fail_replaces_and_clear_frees),
        cmocka_unit_test(simulation_reports_each_step_and_completes),
        cmocka_unit_test(simulation_zero_duration_completes_at_once_without_progress),
        cmocka_unit_test(simulation_payload_overrides),
        cmocka_unit_test(simulation_report_start_adds_the_start_time_to_the_result),
        cmocka_unit_test(simulation_payload_fail_sets_message_and_retryable),
        cmocka_unit_test(simulation_fail_attempts_fails_only_the_first_attempts),
        cmocka_unit_test(simulation_bad_payload_field_fails_naming_it),
        cmocka_unit_test(simulation_cancel_is_immediate),
        cmocka_unit_test(simulation_timeout_fails_retryable),
        cmocka_unit_test(simulation_failure_rate_is_seeded_and_reproducible),
        cmocka_unit_test(simulation_concurrent_runs_share_the_seeded_sequence),
        cmocka_unit_test(simulation_invalid_options_are_refused_naming_the_option),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
