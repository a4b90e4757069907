/* The machine agent end to end: `kiln machine run` against a real Redis,
 * with real services (test helpers) and a real kiln worker. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln/publisher.h"
#include "kiln_test.h"

typedef struct fixture {
    kiln_test_redis_t redis;
    char dir[256];
    char config[320];
    char state_dir[320];
    char log[320];
    char pids[320];
    char children[320];
    pid_t agent;
    bool passed;
} fixture_t;

static void write_config(fixture_t *f, bool third_service)
{
    FILE *out = fopen(f->config, "w");
    assert_non_null(out);
    fprintf(out,
            "redis: {url: \"%s\"}\n"
            "machine: {id: agent-e2e, type: api}\n"
            "worker: {connectors: [simulation], concurrency: 1, shutdown_grace_ms: 200}\n"
            "services:\n"
            "  sleeper-a:\n"
            "    command: [%s/svc_sleeper, --pidfile, %s, --child, %s]\n"
            "  sleeper-b:\n"
            "    command: [%s/svc_sleeper]\n"
            "    depends_on: [sleeper-a]\n",
            f->redis.url, KILN_TEST_HELPERS_DIR, f->pids, f->children, KILN_TEST_HELPERS_DIR);
    if (third_service)
        fprintf(out, "  sleeper-c:\n    command: [%s/svc_sleeper]\n", KILN_TEST_HELPERS_DIR);
    fclose(out);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    kiln_test_redis_start(&f->redis, false);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->config, sizeof f->config, "%s/kiln.yaml", f->dir);
    snprintf(f->state_dir, sizeof f->state_dir, "%s/state", f->dir);
    snprintf(f->log, sizeof f->log, "%s/agent.log", f->dir);
    snprintf(f->pids, sizeof f->pids, "%s/sleeper-a.pids", f->dir);
    snprintf(f->children, sizeof f->children, "%s/sleeper-a.children", f->dir);
    write_config(f, false);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->agent)
        kiln_test_kill(f->agent, SIGTERM, 15000);
    if (!f->passed) {
        kiln_test_dump_file("agent log", f->log);
        kiln_test_dump_file("redis log", f->redis.log_path);
    }
    kiln_test_redis_destroy(&f->redis);
    char *argv[] = {"/bin/rm", "-rf", f->dir, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
    free(f);
    return 0;
}

static pid_t start_agent(fixture_t *f)
{
    char *argv[] = {KILN_BIN,      "machine",      "run",   "--config",    f->config,
                    "--state-dir", f->state_dir,   "--api", "127.0.0.1:0", "--status-ms",
                    "500",         "--log-format", "text",  NULL};
    f->agent = kiln_test_spawn(argv, NULL, f->log);
    return f->agent;
}

/* The machine record as published, or NULL. */
static json_t *machine_status(fixture_t *f)
{
    redisContext *c = kiln_test_redis_connect(&f->redis);
    redisReply *r = redisCommand(c, "GET kiln:machine:agent-e2e");
    json_t *status = r && r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return status;
}

static bool machine_ready(void *ctx)
{
    json_t *status = machine_status(ctx);
    const char *state = json_string_value(json_object_get(status, "state"));
    bool ready = state && strcmp(state, "ready") == 0 &&
                 json_array_size(json_object_get(status, "services")) >= 3;
    json_decref(status);
    return ready;
}

static void wait_ready(fixture_t *f)
{
    if (!kiln_test_wait_until(machine_ready, f, 20000))
        fail_msg("the machine never published state ready");
}

static long long service_pid(fixture_t *f, const char *name)
{
    json_t *status = machine_status(f);
    size_t i;
    json_t *svc;
    long long pid = 0;
    json_array_foreach(json_object_get(status, "services"), i, svc)
    {
        if (strcmp(json_string_value(json_object_get(svc, "name")), name) == 0 &&
            strcmp(json_string_value(json_object_get(svc, "state")), "running") == 0)
            pid = json_integer_value(json_object_get(svc, "pid"));
    }
    json_decref(status);
    return pid;
}

/* Alive and not a zombie (an orphan's zombie waits for whoever reaps it,
 * which in a container may never happen). */
static bool pid_alive(long long pid)
{
    if (pid <= 0 || kill((pid_t)pid, 0) != 0)
        return false;
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%lld/stat", pid);
    FILE *in = fopen(path, "r");
    size_t n = in ? fread(stat, 1, sizeof stat - 1, in) : 0;
    if (in)
        fclose(in);
    stat[n] = '\0';
    const char *close_paren = strrchr(stat, ')');
    return close_paren && close_paren[1] == ' ' && close_paren[2] != 'Z';
}

static kiln_broker_t *broker(fixture_t *f)
{
    kiln_broker_options_t o = {.redis_url = f->redis.url,
                               .max_payload_bytes = 65536,
                               .stream_max_len = 10000,
                               .retention_age_s = 3600,
                               .retention_count = 1000,
                               .default_max_attempts = 3,
                               .backoff_base_ms = 100,
                               .backoff_max_ms = 1000,
                               .lease_ms = 30000};
    kiln_broker_t *b = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_connect(&o, &b, &err), 0);
    return b;
}

static void submit(kiln_broker_t *b, const char *json, char *id)
{
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    assert_int_equal(kiln_job_spec_parse(json, strlen(json), 0, &spec, &err), 0);
    assert_int_equal(kiln_broker_submit(b, &spec, id, NULL, &err), 0);
    kiln_job_spec_clear(&spec);
}

typedef struct job_cond {
    kiln_broker_t *b;
    const char *id;
    const char *state;
} job_cond_t;

static bool job_in_state(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(c->b, c->id, &job, &err) != 0)
        return false;
    bool ok = strcmp(json_string_value(json_object_get(job, "state")), c->state) == 0;
    json_decref(job);
    return ok;
}

/* Types of the machine events in order, as "a,b,c,". */
static char *event_types(fixture_t *f)
{
    static char out[8192];
    out[0] = '\0';
    redisContext *c = kiln_test_redis_connect(&f->redis);
    redisReply *r = redisCommand(c, "XRANGE %s - +", KILN_MACHINE_EVENTS_STREAM);
    for (size_t i = 0; r && i < r->elements; i++) {
        redisReply *fields = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < fields->elements; k += 2) {
            if (strcmp(fields->element[k]->str, "type") == 0 && strlen(out) + 40 < sizeof out) {
                strcat(out, fields->element[k + 1]->str);
                strcat(out, ",");
            }
        }
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return out;
}

/* The phases of worker-api0's worker_phase events, in order, as "a,b,". */
static char *worker_phases(fixture_t *f)
{
    static char out[2048];
    out[0] = '\0';
    redisContext *c = kiln_test_redis_connect(&f->redis);
    redisReply *r = redisCommand(c, "XRANGE %s - +", KILN_MACHINE_EVENTS_STREAM);
    for (size_t i = 0; r && i < r->elements; i++) {
        redisReply *fields = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < fields->elements; k += 2) {
            json_t *v = strcmp(fields->element[k]->str, "fields") == 0
                            ? json_loads(fields->element[k + 1]->str, 0, NULL)
                            : NULL;
            const char *phase = json_string_value(json_object_get(v, "phase"));
            if (v && json_object_get(v, "worker") && phase && strlen(out) + 32 < sizeof out) {
                strcat(out, phase);
                strcat(out, ",");
            }
            json_decref(v);
        }
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return out;
}

static void agent_runs_the_plan_publishes_status_and_its_worker_runs_jobs(void **state)
{
    fixture_t *f = *state;
    start_agent(f);
    wait_ready(f);
    assert_true(pid_alive(service_pid(f, "sleeper-a")));
    assert_true(pid_alive(service_pid(f, "sleeper-b")));
    assert_true(pid_alive(service_pid(f, "worker-api0")));
    kiln_broker_t *b = broker(f);
    char id[KILN_JOB_ID_MAX];
    submit(b, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":50}}", id);
    job_cond_t c = {b, id, "completed"};
    assert_true(kiln_test_wait_until(job_in_state, &c, 15000));
    kiln_broker_free(b);
    const char *types = event_types(f);
    assert_non_null(strstr(types, "startup,"));
    assert_non_null(strstr(types, "worker_phase,"));
    const char *phases = worker_phases(f);
    if (strncmp(phases, "announcing,", 11) != 0 || !strstr(phases, "ready,"))
        fail_msg("worker phases were \"%s\"; expected announcing first and ready later", phases);
    assert_non_null(strstr(types, "service_state,"));
    f->passed = true;
}

static bool sleeper_c_runs(void *ctx)
{
    return pid_alive(service_pid(ctx, "sleeper-c"));
}

static void reload_adds_what_is_new_and_leaves_untouched_pids_alone(void **state)
{
    fixture_t *f = *state;
    start_agent(f);
    wait_ready(f);
    long long a = service_pid(f, "sleeper-a"), w = service_pid(f, "worker-api0");
    write_config(f, true);
    kill(f->agent, SIGHUP);
    assert_true(kiln_test_wait_until(sleeper_c_runs, f, 15000));
    assert_int_equal(service_pid(f, "sleeper-a"), a);
    assert_int_equal(service_pid(f, "worker-api0"), w);
    f->passed = true;
}

static int count_lines(const char *path)
{
    FILE *in = fopen(path, "r");
    int n = 0, ch;
    while (in && (ch = fgetc(in)) != EOF)
        n += ch == '\n';
    if (in)
        fclose(in);
    return n;
}

static bool pidfile_has_two(void *ctx)
{
    return count_lines(ctx) >= 2;
}

static void kill_9_of_the_agent_then_a_restart_runs_no_service_twice(void **state)
{
    fixture_t *f = *state;
    start_agent(f);
    wait_ready(f);
    long long first = service_pid(f, "sleeper-a");
    kill(f->agent, SIGKILL);
    kiln_test_wait_exit(f->agent, 5000);
    if (!pid_alive(first))
        fail_msg("service pid %lld died with the agent", first);
    /* The dead agent's record lives out its TTL; read only the new one's. */
    redisContext *c = kiln_test_redis_connect(&f->redis);
    freeReplyObject(redisCommand(c, "DEL kiln:machine:agent-e2e"));
    redisFree(c);
    start_agent(f);
    assert_true(kiln_test_wait_until(pidfile_has_two, f->pids, 20000));
    wait_ready(f);
    /* the old instance was stopped before the new one started */
    assert_false(pid_alive(first));
    assert_true(pid_alive(service_pid(f, "sleeper-a")));
    f->passed = true;
}

static long long first_line_pid(const char *path)
{
    FILE *in = fopen(path, "r");
    long long pid = 0;
    if (in && fscanf(in, "%lld", &pid) != 1)
        pid = 0;
    if (in)
        fclose(in);
    return pid;
}

static bool children_recorded(void *ctx)
{
    return first_line_pid(ctx) > 0;
}

/* The agent is killed, then the service's main process too: what is left
 * of its group (a child) is an orphan the next agent must stop. */
static void a_restart_stops_the_group_of_a_service_whose_main_process_died(void **state)
{
    fixture_t *f = *state;
    start_agent(f);
    wait_ready(f);
    assert_true(kiln_test_wait_until(children_recorded, f->children, 10000));
    long long child = first_line_pid(f->children);
    long long main_pid = service_pid(f, "sleeper-a");
    kill(f->agent, SIGKILL);
    kiln_test_wait_exit(f->agent, 5000);
    kill((pid_t)main_pid, SIGKILL);
    assert_true(pid_alive(child));
    redisContext *c = kiln_test_redis_connect(&f->redis);
    freeReplyObject(redisCommand(c, "DEL kiln:machine:agent-e2e"));
    redisFree(c);
    start_agent(f);
    wait_ready(f);
    assert_false(pid_alive(child));
    f->passed = true;
}

static void sigterm_returns_a_job_in_flight_and_ends_with_an_offline_event(void **state)
{
    fixture_t *f = *state;
    start_agent(f);
    wait_ready(f);
    kiln_broker_t *b = broker(f);
    char id[KILN_JOB_ID_MAX];
    submit(b, "{\"service\":\"simulation\",\"payload\":{\"duration_ms\":60000,\"steps\":60}}", id);
    job_cond_t running = {b, id, "running"};
    assert_true(kiln_test_wait_until(job_in_state, &running, 15000));
    long long sleeper = service_pid(f, "sleeper-b");
    kill(f->agent, SIGTERM);
    int status = kiln_test_wait_exit(f->agent, 20000);
    f->agent = 0;
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    job_cond_t pending = {b, id, "pending"};
    assert_true(job_in_state(&pending));
    json_t *job = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_get_job(b, id, &job, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(job, "attempts")), 0);
    json_decref(job);
    kiln_broker_free(b);
    assert_false(pid_alive(sleeper));
    const char *types = event_types(f);
    assert_non_null(strstr(types, "shutdown,"));
    size_t len = strlen(types);
    assert_true(len > 8 && strcmp(types + len - 8, "offline,") == 0);
    json_t *record = machine_status(f);
    assert_null(record); /* removed on an orderly stop */
    f->passed = true;
}

/* Runs the kiln CLI with args against the agent's API; returns its exit
 * code and its stdout in out. */
static int cli_on_api(fixture_t *f, const char *const *args, size_t n, char *out, size_t size)
{
    char port_path[400], url[64] = "";
    snprintf(port_path, sizeof port_path, "%s/api.port", f->state_dir);
    FILE *in = fopen(port_path, "r");
    int port = 0;
    if (in && fscanf(in, "%d", &port) == 1)
        snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    if (in)
        fclose(in);
    char *argv[16] = {KILN_BIN};
    size_t argc = 1;
    for (size_t i = 0; i < n && argc < 12; i++)
        argv[argc++] = (char *)args[i];
    argv[argc++] = "--api";
    argv[argc++] = url;
    argv[argc] = NULL;
    return kiln_test_run(argv, NULL, out, size);
}

static void the_machine_api_serves_services_and_restarts_one_with_the_token(void **state)
{
    fixture_t *f = *state;
    setenv("KILN_MACHINE_API_TOKEN", "s3cret-token", 1);
    start_agent(f);
    wait_ready(f);
    static char out[65536];
    const char *services[] = {"services", "--json"};
    assert_int_equal(cli_on_api(f, services, 2, out, sizeof out), 0);
    json_t *list = json_loads(out, 0, NULL);
    assert_true(json_array_size(list) == 3);
    json_decref(list);
    long long before = service_pid(f, "sleeper-b");
    const char *no_token[] = {"restart", "sleeper-b"};
    unsetenv("KILN_MACHINE_API_TOKEN");
    assert_int_not_equal(cli_on_api(f, no_token, 2, out, sizeof out), 0);
    const char *with_token[] = {"restart", "sleeper-b", "--token", "s3cret-token"};
    assert_int_equal(cli_on_api(f, with_token, 4, out, sizeof out), 0);
    int64_t deadline = kiln_test_now_ms() + 10000;
    while (service_pid(f, "sleeper-b") == before && kiln_test_now_ms() < deadline)
        assert_true(kiln_test_wait_until(machine_ready, f, 200));
    assert_int_not_equal(service_pid(f, "sleeper-b"), before);
    const char *traversal[] = {"logs", "../../etc/passwd"};
    assert_int_not_equal(cli_on_api(f, traversal, 2, out, sizeof out), 0);
    f->passed = true;
}

static void a_second_agent_on_the_same_state_folder_refuses_to_start(void **state)
{
    fixture_t *f = *state;
    start_agent(f);
    wait_ready(f);
    long long a = service_pid(f, "sleeper-a"), w = service_pid(f, "worker-api0");
    char log[400];
    snprintf(log, sizeof log, "%s/second.log", f->dir);
    char *argv[] = {KILN_BIN,      "machine",    "run",   "--config",    f->config,
                    "--state-dir", f->state_dir, "--api", "127.0.0.1:0", NULL};
    pid_t second = kiln_test_spawn(argv, NULL, log);
    int status = kiln_test_wait_exit(second, 15000);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    char *text = NULL;
    size_t len = 0;
    FILE *in = fopen(log, "r");
    assert_non_null(in);
    assert_true(getdelim(&text, &len, '\0', in) > 0);
    fclose(in);
    assert_non_null(strstr(text, "another agent is running"));
    free(text);
    /* the first agent's services were not touched */
    assert_int_equal(service_pid(f, "sleeper-a"), a);
    assert_int_equal(service_pid(f, "worker-api0"), w);
    assert_true(pid_alive(a));
    f->passed = true;
}

static void reload_without_a_running_agent_signals_nothing(void **state)
{
    fixture_t *f = *state;
    /* A stale pid file naming some other process. */
    mkdir(f->state_dir, 0750);
    char *sleeper_argv[] = {"/bin/sleep", "30", NULL};
    pid_t bystander = kiln_test_spawn(sleeper_argv, NULL, NULL);
    char path[400];
    snprintf(path, sizeof path, "%s/agent.pid", f->state_dir);
    FILE *out = fopen(path, "w");
    fprintf(out, "%d\n", (int)bystander);
    fclose(out);
    char *argv[] = {KILN_BIN, "machine", "reload", "--state-dir", f->state_dir, NULL};
    assert_int_equal(kiln_test_run(argv, NULL, NULL, 0), 1);
    assert_true(pid_alive(bystander));
    kiln_test_kill(bystander, SIGKILL, 5000);
    f->passed = true;
}

static void a_bad_config_exits_2_and_starts_nothing(void **state)
{
    fixture_t *f = *state;
    FILE *out = fopen(f->config, "w");
    fprintf(out, "machine: {type: spaceship}\n");
    fclose(out);
    start_agent(f);
    int status = kiln_test_wait_exit(f->agent, 10000);
    f->agent = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 2);
    json_t *record = machine_status(f);
    assert_null(record);
    f->passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            agent_runs_the_plan_publishes_status_and_its_worker_runs_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_adds_what_is_new_and_leaves_untouched_pids_alone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(kill_9_of_the_agent_then_a_restart_runs_no_service_twice,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_restart_stops_the_group_of_a_service_whose_main_process_died, setup, teardown),
        cmocka_unit_test_setup_teardown(
            sigterm_returns_a_job_in_flight_and_ends_with_an_offline_event, setup, teardown),
        cmocka_unit_test_setup_teardown(
            the_machine_api_serves_services_and_restarts_one_with_the_token, setup, teardown),
        cmocka_unit_test_setup_teardown(a_second_agent_on_the_same_state_folder_refuses_to_start,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(reload_without_a_running_agent_signals_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(a_bad_config_exits_2_and_starts_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
