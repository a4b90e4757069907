/* The machine registry, routing of pinned jobs and waking by machine id
 * (kiln/hub_machines.h), against a real redis-server: machine status comes
 * from a real agent publisher, worker records are written the way workers
 * write them (kiln_broker_register_worker). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/ops.h"
#include "kiln/hub_machines.h"
#include "kiln/publisher.h"
#include "kiln_test.h"

static kiln_test_redis_t redis_server;
static kiln_broker_t *broker;

static int setup(void **state)
{
    kiln_test_redis_start(&redis_server, false);
    broker = kiln_test_broker_connect(&redis_server, 30000);
    return 0;
}

static int teardown(void **state)
{
    kiln_broker_free(broker);
    kiln_test_redis_destroy(&redis_server);
    return 0;
}

static int flush_db(void **state)
{
    kiln_test_redis_flush(&redis_server);
    return 0;
}

/* Publishes desktop's status as the agent does and waits until written. */
static kiln_publisher_t *agent_online(const char *machine)
{
    kiln_publisher_t *p = NULL;
    kiln_err_t err = {0};
    if (kiln_publisher_new(redis_server.url, machine, 60000, 1000, &p, &err) != 0)
        fail_msg("%s", err.msg);
    json_t *status = json_pack(
        "{s:s, s:s, s:s, s:[{s:s, s:s}], s:[{s:i, s:s, s:i}], s:i}", "machine_id", machine,
        "machine_type", "gpu", "state", "ready", "services", "name", "comfyui-gpu0", "state",
        "running", "gpus", "index", 0, "name", "RTX 4090", "memory_total_mb", 24576, "cpus", 16);
    kiln_publisher_status(p, status);
    json_decref(status);
    assert_int_equal(kiln_publisher_flush(p, 10000, &err), 0);
    return p;
}

static void register_worker(const char *id, const char *machine, int concurrency, int busy,
                            const char *caps_json)
{
    json_t *caps = json_loads(caps_json, 0, NULL);
    json_object_set_new(caps, "machine_id", json_string(machine));
    json_t *info = json_pack("{s:s, s:s, s:[s], s:o, s:i, s:i, s:s, s:b}", "id", id, "machine_id",
                             machine, "services", "simulation", "capabilities", caps, "concurrency",
                             concurrency, "busy", busy, "active_windows", "", "claiming", 1);
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_register_worker(broker, id, info, 60000, &err), 0);
    json_decref(info);
}

static json_t *machine(const char *id)
{
    json_t *m = NULL;
    kiln_hub_error_t e = {0};
    if (kiln_hub_machines_get(broker, id, &m, &e) != 0)
        fail_msg("%s", e.message);
    return m;
}

static const char *state_of(const char *id)
{
    static char state[16];
    json_t *m = machine(id);
    snprintf(state, sizeof state, "%s", json_string_value(json_object_get(m, "state")));
    json_decref(m);
    return state;
}

typedef struct later {
    json_int_t than;
} later_t;

static bool clock_passed(void *ctx)
{
    return kiln_ops_wall_ms() > ((later_t *)ctx)->than + 1;
}

static char *registry_text(const char *id)
{
    redisContext *c = kiln_test_redis_connect(&redis_server);
    redisReply *r = redisCommand(c, "HGET %s %s", KILN_HUB_REGISTRY_KEY, id);
    char *text = r && r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    redisFree(c);
    return text;
}

/* Reading the fleet writes a machine's registry record only when what is
 * live of it changed (or the record is old): a monitor polling the list
 * costs Redis reads, not a write per machine per poll. */
static void reading_machines_rewrites_a_record_only_when_it_changed(void **state)
{
    kiln_publisher_t *p = agent_online("desktop");
    register_worker("desktop-1", "desktop", 2, 0, "{}");
    json_decref(machine("desktop"));
    char *first = registry_text("desktop");
    assert_non_null(first);
    json_t *rec = json_loads(first, 0, NULL);
    later_t later = {json_integer_value(json_object_get(rec, "last_seen"))};
    json_decref(rec);
    assert_true(kiln_test_wait_until(clock_passed, &later, 5000));
    json_decref(machine("desktop"));
    char *second = registry_text("desktop");
    assert_string_equal(second, first); /* nothing changed: not rewritten */

    register_worker("desktop-1", "desktop", 2, 1, "{}"); /* now busy */
    json_decref(machine("desktop"));
    char *third = registry_text("desktop");
    assert_string_not_equal(third, first);
    free(first);
    free(second);
    free(third);
    kiln_publisher_free(p, true);
}

static void machines_are_online_busy_then_offline_but_still_known(void **state)
{
    kiln_publisher_t *p = agent_online("desktop");
    register_worker("desktop-1", "desktop", 2, 0, "{\"gpu_memory_gb\":24}");
    json_t *m = machine("desktop");
    assert_string_equal(json_string_value(json_object_get(m, "state")), "online");
    assert_string_equal(json_string_value(json_object_get(m, "agent_state")), "ready");
    assert_int_equal(json_array_size(json_object_get(m, "gpus")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "specs"), "cpus")), 16);
    assert_int_equal(json_array_size(json_object_get(m, "workers")), 1);
    json_decref(m);

    /* A running job shows as the machine's current job. */
    const char *spec = "{\"service\":\"simulation\"}";
    kiln_job_spec_t js;
    kiln_err_t err = {0};
    char id[KILN_JOB_ID_MAX];
    assert_int_equal(kiln_job_spec_parse(spec, strlen(spec), 0, &js, &err), 0);
    assert_int_equal(kiln_broker_submit(broker, &js, id, NULL, &err), 0);
    kiln_job_spec_clear(&js);
    kiln_worker_identity_t who;
    assert_int_equal(kiln_worker_identity_init(&who, "desktop-1", "desktop", NULL, &err), 0);
    kiln_claimed_job_t claimed[1];
    int n = 0;
    assert_int_equal(kiln_broker_claim(broker, "simulation", &who, 1, claimed, &n, NULL, &err), 0);
    assert_int_equal(n, 1);
    kiln_claimed_job_clear(&claimed[0]);
    kiln_worker_identity_clear(&who);
    register_worker("desktop-1", "desktop", 2, 2, "{\"gpu_memory_gb\":24}");
    m = machine("desktop");
    assert_string_equal(json_string_value(json_object_get(m, "state")), "busy");
    assert_string_equal(json_string_value(json_array_get(json_object_get(m, "current_jobs"), 0)),
                        id);
    json_decref(m);

    /* The agent stops (its record removed) and the worker's record expires. */
    kiln_publisher_free(p, true);
    redisContext *c = kiln_test_redis_connect(&redis_server);
    freeReplyObject(redisCommand(c, "DEL kiln:worker:desktop-1"));
    redisFree(c);
    m = machine("desktop");
    assert_string_equal(json_string_value(json_object_get(m, "state")), "offline");
    assert_int_equal(json_array_size(json_object_get(m, "gpus")), 1); /* last known */
    assert_true(json_integer_value(json_object_get(m, "last_seen")) > 0);
    json_decref(m);

    json_t *list = NULL;
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_hub_machines_list(broker, &list, &e), 0);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
}

static void unknown_machine_is_not_found(void **state)
{
    json_t *m = NULL;
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_hub_machines_get(broker, "nowhere", &m, &e), KILN_ENOTFOUND);
    assert_int_equal(e.status, 404);
    assert_string_equal(e.field, "machine");
    assert_int_equal(kiln_hub_machines_get(broker, "../etc", &m, &e), KILN_ENOTFOUND);
}

/* Routes job JSON text; returns rc and leaves the (modified) job in *job. */
static int route(const char *text, json_t **job, kiln_hub_route_t *d, kiln_hub_error_t *e)
{
    *job = json_loads(text, 0, NULL);
    assert_non_null(*job);
    return kiln_hub_route_job(broker, *job, d, e);
}

/* The job left after routing must be one the broker accepts. */
static void broker_accepts(json_t *job)
{
    kiln_job_spec_t js;
    kiln_err_t err = {0};
    if (kiln_job_spec_from_json(job, 0, &js, &err) != 0)
        fail_msg("routed job refused: %s", err.msg);
    kiln_job_spec_clear(&js);
}

static void offline_pin_is_refused_unless_the_job_says_wait_or_any(void **state)
{
    register_worker("desktop-1", "desktop", 1, 0, "{}");
    assert_string_equal(state_of("desktop"), "online");
    json_t *job;
    kiln_hub_route_t d;
    kiln_hub_error_t e = {0};
    const char *pinned = "{\"service\":\"simulation\",\"requirements\":{\"machine\":\"desktop\"}";
    char text[256];
    snprintf(text, sizeof text, "%s}", pinned);
    assert_int_equal(route(text, &job, &d, &e), 0);
    assert_string_equal(d.state, "online");
    assert_false(d.waits);
    json_decref(job);

    redisContext *c = kiln_test_redis_connect(&redis_server);
    freeReplyObject(redisCommand(c, "DEL kiln:worker:desktop-1"));
    redisFree(c);
    assert_int_equal(route(text, &job, &d, &e), KILN_ECONFLICT);
    assert_int_equal(e.status, 409);
    assert_string_equal(e.field, "requirements.machine");
    assert_non_null(strstr(e.message, "machine 'desktop' is offline"));
    json_decref(job);

    snprintf(text, sizeof text, "%s,\"on_offline\":\"wait\"}", pinned);
    assert_int_equal(route(text, &job, &d, &e), 0);
    assert_true(d.waits);
    assert_null(json_object_get(job, "on_offline"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(job, "requirements"), "machine")),
        "desktop");
    broker_accepts(job);
    json_decref(job);

    snprintf(text, sizeof text, "%s,\"on_offline\":\"any\"}", pinned);
    assert_int_equal(route(text, &job, &d, &e), 0);
    assert_true(d.pin_dropped);
    assert_null(json_object_get(json_object_get(job, "requirements"), "machine"));
    broker_accepts(job);
    json_decref(job);

    snprintf(text, sizeof text, "%s,\"on_offline\":\"later\"}", pinned);
    assert_int_equal(route(text, &job, &d, &e), KILN_EINVAL);
    assert_string_equal(e.field, "on_offline");
    json_decref(job);

    assert_int_equal(
        route("{\"service\":\"simulation\",\"requirements\":{\"machine\":\"nope\"}}", &job, &d, &e),
        KILN_ENOTFOUND);
    assert_int_equal(e.status, 404);
    assert_string_equal(e.field, "requirements.machine");
    json_decref(job);
}

static void wake_sends_the_packet_to_the_machines_stored_address(void **state)
{
    register_worker("desktop-1", "desktop", 1, 0, "{}");
    assert_string_equal(state_of("desktop"), "online");
    redisContext *c = kiln_test_redis_connect(&redis_server);
    freeReplyObject(redisCommand(c, "DEL kiln:worker:desktop-1"));
    redisFree(c);

    json_t *job;
    kiln_hub_route_t d;
    kiln_hub_error_t e = {0};
    const char *text = "{\"service\":\"simulation\",\"requirements\":{\"machine\":\"desktop\"},"
                       "\"on_offline\":\"wake\"}";
    assert_int_equal(route(text, &job, &d, &e), KILN_ECONFLICT);
    assert_string_equal(e.code, "no_wake_info");
    json_decref(job);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &len);
    assert_int_equal(kiln_hub_machine_set_wake(broker, "desktop", "bogus", NULL, 0, &e),
                     KILN_EINVAL);
    assert_string_equal(e.field, "wake.mac");
    assert_int_equal(kiln_hub_machine_set_wake(broker, "desktop", "de:ad:be:ef:00:01", "127.0.0.1",
                                               ntohs(addr.sin_port), &e),
                     0);
    assert_int_equal(route(text, &job, &d, &e), 0);
    assert_true(d.woke && d.waits);
    broker_accepts(job);
    json_decref(job);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 5000), 1);
    unsigned char buf[200];
    assert_int_equal(recv(fd, buf, sizeof buf, 0), 102);
    assert_int_equal(buf[5], 0xFF);
    assert_int_equal(buf[6], 0xde);
    assert_int_equal(buf[101], 0x01);
    close(fd);
    /* The wake info survives the machine's registry refreshes. */
    json_t *m = machine("desktop");
    assert_string_equal(json_string_value(json_object_get(json_object_get(m, "wake"), "mac")),
                        "de:ad:be:ef:00:01");
    json_decref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(reading_machines_rewrites_a_record_only_when_it_changed, flush_db),
        cmocka_unit_test_setup(machines_are_online_busy_then_offline_but_still_known, flush_db),
        cmocka_unit_test_setup(unknown_machine_is_not_found, flush_db),
        cmocka_unit_test_setup(offline_pin_is_refused_unless_the_job_says_wait_or_any, flush_db),
        cmocka_unit_test_setup(wake_sends_the_packet_to_the_machines_stored_address, flush_db),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
