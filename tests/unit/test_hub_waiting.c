/* "Why is my job waiting?" against a real redis-server, and the C matcher
 * (kiln/hub_match.h) checked against the broker's Lua matcher on a table of
 * cases: each case is submitted and claimed through the broker for real. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/hub_machines.h"
#include "kiln/hub_match.h"
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

static void submit(const char *text, char *id)
{
    kiln_job_spec_t js;
    kiln_err_t err = {0};
    if (kiln_job_spec_parse(text, strlen(text), 0, &js, &err) != 0)
        fail_msg("%s: %s", text, err.msg);
    assert_int_equal(kiln_broker_submit(broker, &js, id, NULL, &err), 0);
    kiln_job_spec_clear(&js);
}

typedef struct match_case {
    const char *requirements;
    const char *customer; /* NULL: none */
    const char *caps;
    const char *reason; /* expected C reason when it does not match ("" when it does) */
} match_case_t;

static const match_case_t cases[] = {
    {"{}", NULL, "{}", ""},
    {"{\"gpu_memory_gb\":24}", NULL, "{\"gpu_memory_gb\":12}", "gpu_memory_gb: needs 24, has 12"},
    {"{\"gpu_memory_gb\":24}", NULL, "{\"gpu_memory_gb\":24.0}", ""},
    {"{\"ram_gb\":8}", NULL, "{}", "ram_gb: needs 8, has none"},
    {"{\"cpu_cores\":4}", NULL, "{\"cpu_cores\":\"8\"}", "cpu_cores: needs 4, has 8"},
    {"{\"models\":[\"sdxl\",\"flux\"]}", NULL, "{\"models\":[\"flux\",\"sdxl\",\"x\"]}", ""},
    {"{\"models\":[\"sdxl\"]}", NULL, "{\"models\":[\"sd15\"]}", "models: missing sdxl"},
    {"{\"models\":[\"sdxl\"]}", NULL, "{\"models\":\"sdxl\"}", ""},
    {"{\"machine\":\"desktop\"}", NULL, "{\"machine_id\":\"laptop\"}",
     "machine: pinned to desktop"},
    {"{\"machine\":\"desktop\"}", NULL, "{\"machine_id\":\"desktop\"}", ""},
    {"{\"pool\":\"fast\"}", NULL, "{\"pools\":[\"slow\",\"fast\"]}", ""},
    {"{\"pool\":\"fast\"}", NULL, "{\"pool\":\"slow\"}", "pool: needs fast, has slow"},
    {"{}", "acme", "{\"customer_access\":{\"denied_customers\":[\"acme\"]}}",
     "customer: worker denies customer acme"},
    {"{}", "acme", "{\"customer_access\":{\"allowed_customers\":[\"other\"]}}",
     "customer: worker serves only its allowed customers, not acme"},
    {"{}", NULL, "{\"customer_access\":{\"isolation\":\"strict\",\"allowed_customers\":[\"a\"]}}",
     "customer: worker serves only its allowed customers, not a job without a customer"},
    {"{\"customer_isolation\":\"strict\"}", "acme", "{}",
     "customer_isolation: strict needs a strict worker that allows customer acme"},
    {"{\"customer_isolation\":\"strict\"}", "acme",
     "{\"customer_access\":{\"isolation\":\"strict\",\"allowed_customers\":[\"acme\"]}}", ""},
    {"{\"customer_isolation\":\"loose\"}", "acme", "{\"customer_access\":{}}", ""},
    {"{\"capabilities\":{\"gpu.vendor\":\"nvidia\",\"cuda\":12}}", NULL,
     "{\"gpu\":{\"vendor\":\"nvidia\"},\"cuda\":12.4}", ""},
    {"{\"capabilities\":{\"gpu.vendor\":\"nvidia\"}}", NULL, "{\"gpu\":{\"vendor\":\"amd\"}}",
     "capabilities.gpu.vendor: needs nvidia, has amd"},
    {"{\"capabilities\":{\"features\":[\"fp8\",\"trt\"]}}", NULL, "{\"features\":[\"fp8\"]}",
     "capabilities.features: needs [\"fp8\",\"trt\"], has [\"fp8\"]"},
    {"{\"capabilities\":{\"tags\":\"a\"}}", NULL, "{\"tags\":[\"b\",\"a\"]}", ""},
    {"{\"capabilities\":{\"fast\":true}}", NULL, "{\"fast\":1}",
     "capabilities.fast: needs true, "
     "has 1"},
    {"{\"capabilities\":{\"gpu.0\":\"x\"}}", NULL, "{\"gpu\":[\"x\"]}",
     "capabilities.gpu.0: needs x, has none"},
    {"{\"not\":{\"gpu.model\":\"T4\"}}", NULL, "{\"gpu\":{\"model\":\"T4\"}}",
     "not.gpu.model: excluded, has T4"},
    {"{\"not\":{\"gpu.model\":\"T4\"}}", NULL, "{\"gpu\":{\"model\":\"A100\"}}", ""},
    {"{\"not\":{\"tags\":[\"spot\",\"old\"]}}", NULL, "{\"tags\":[\"old\"]}",
     "not.tags: excluded, has [\"old\"]"},
    {"{\"not\":{\"gpu_memory_gb\":80}}", NULL, "{\"gpu_memory_gb\":40}", ""},
    {"{\"not\":{\"gpu_memory_gb\":80}}", NULL, "{\"gpu_memory_gb\":80}",
     "not.gpu_memory_gb: excluded, has 80"},
};

static void c_matcher_agrees_with_the_brokers_lua_matcher(void **state)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const match_case_t *c = &cases[i];
        char service[32], spec[1024], id[KILN_JOB_ID_MAX];
        snprintf(service, sizeof service, "match%zu", i);
        snprintf(spec, sizeof spec, "{\"service\":\"%s\",\"requirements\":%s%s%s%s}", service,
                 c->requirements, c->customer ? ",\"customer_id\":\"" : "",
                 c->customer ? c->customer : "", c->customer ? "\"" : "");
        submit(spec, id);
        json_t *caps = json_loads(c->caps, 0, NULL);
        kiln_worker_identity_t who;
        kiln_err_t err = {0};
        assert_int_equal(kiln_worker_identity_init(&who, "w", NULL, caps, &err), 0);
        kiln_claimed_job_t claimed[1];
        int n = 0;
        assert_int_equal(kiln_broker_claim(broker, service, &who, 1, claimed, &n, NULL, &err), 0);
        if (n)
            kiln_claimed_job_clear(&claimed[0]);
        kiln_worker_identity_clear(&who);

        json_t *req = json_loads(c->requirements, 0, NULL);
        char reason[256] = "unset";
        bool matched = kiln_hub_match(req, c->customer, caps, reason, sizeof reason);
        if (matched != (n == 1))
            fail_msg("case %zu %s / %s: Lua %s, C %s (%s)", i, c->requirements, c->caps,
                     n ? "matches" : "refuses", matched ? "matches" : "refuses", reason);
        if (strcmp(reason, c->reason) != 0)
            fail_msg("case %zu: reason \"%s\", expected \"%s\"", i, reason, c->reason);
        json_decref(req);
        json_decref(caps);
    }
}

static void register_worker(const char *id, const char *machine, const char *caps_json,
                            bool claiming, const char *windows)
{
    json_t *caps = json_loads(caps_json, 0, NULL);
    json_object_set_new(caps, "machine_id", json_string(machine));
    json_t *info = json_pack("{s:s, s:s, s:[s], s:o, s:i, s:i, s:s, s:b}", "id", id, "machine_id",
                             machine, "services", "comfyui", "capabilities", caps, "concurrency", 1,
                             "busy", 0, "active_windows", windows, "claiming", claiming);
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_register_worker(broker, id, info, 60000, &err), 0);
    json_decref(info);
}

static json_t *explain(const char *id)
{
    json_t *out = NULL;
    kiln_hub_error_t e = {0};
    if (kiln_hub_explain_waiting(broker, id, &out, &e) != 0)
        fail_msg("%s", e.message);
    return out;
}

static const char *reason_of(json_t *list, const char *id)
{
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        if (!strcmp(json_string_value(json_object_get(item, "id")), id))
            return json_string_value(json_object_get(item, "reason"));
    }
    return "(not listed)";
}

static void waiting_job_names_each_workers_first_failure_and_offline_matches(void **state)
{
    /* bigbox would match but goes offline; the registry keeps its caps. */
    register_worker("bigbox-1", "bigbox", "{\"gpu_memory_gb\":48,\"models\":[\"sdxl\"]}", true, "");
    json_t *list = NULL;
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_hub_machines_list(broker, &list, &e), 0);
    json_decref(list);
    redisContext *c = kiln_test_redis_connect(&redis_server);
    freeReplyObject(redisCommand(c, "DEL kiln:worker:bigbox-1"));
    redisFree(c);

    register_worker("small-1", "small", "{\"gpu_memory_gb\":12,\"models\":[\"sdxl\"]}", true, "");
    register_worker("nomodel-1", "nomodel", "{\"gpu_memory_gb\":24,\"models\":[\"sd15\"]}", true,
                    "");
    register_worker("night-1", "night", "{\"gpu_memory_gb\":24,\"models\":[\"sdxl\"]}", false,
                    "22:00-06:00");
    char id[KILN_JOB_ID_MAX];
    submit("{\"service\":\"comfyui\",\"requirements\":{\"gpu_memory_gb\":24,\"models\":"
           "[\"sdxl\"]}}",
           id);
    json_t *out = explain(id);
    json_t *workers = json_object_get(out, "workers");
    assert_true(json_is_true(json_object_get(out, "waiting")));
    assert_string_equal(reason_of(workers, "small-1"), "gpu_memory_gb: needs 24, has 12");
    assert_string_equal(reason_of(workers, "nomodel-1"), "models: missing sdxl");
    assert_string_equal(reason_of(workers, "night-1"), "outside active window 22:00-06:00");
    json_t *offline = json_object_get(out, "offline_matches");
    assert_int_equal(json_array_size(offline), 1);
    assert_string_equal(json_string_value(json_array_get(offline, 0)), "bigbox");
    assert_string_equal(reason_of(json_object_get(out, "machines"), "small"),
                        "gpu_memory_gb: needs 24, has 12");
    const char *summary = json_string_value(json_object_get(out, "summary"));
    assert_non_null(strstr(summary, "busy or outside its active window"));
    assert_non_null(strstr(summary, "offline machine(s) [\"bigbox\"] would run it"));
    json_decref(out);

    submit("{\"service\":\"comfyui\",\"requirements\":{\"machine\":\"desktop\"}}", id);
    out = explain(id);
    assert_string_equal(reason_of(json_object_get(out, "workers"), "small-1"),
                        "machine: pinned to desktop");
    assert_non_null(strstr(json_string_value(json_object_get(out, "summary")),
                           "no live worker meets its requirements"));
    json_decref(out);
}

static void unknown_job_is_not_found_and_a_finished_job_is_not_waiting(void **state)
{
    json_t *out = NULL;
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_hub_explain_waiting(broker, "comfyui.999", &out, &e), KILN_ENOTFOUND);
    assert_int_equal(e.status, 404);
    char id[KILN_JOB_ID_MAX];
    submit("{\"service\":\"comfyui\"}", id);
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_cancel(broker, id, &err), 0);
    out = explain(id);
    assert_false(json_is_true(json_object_get(out, "waiting")));
    assert_string_equal(json_string_value(json_object_get(out, "summary")),
                        "the job is cancelled, not waiting");
    json_decref(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(c_matcher_agrees_with_the_brokers_lua_matcher, flush_db),
        cmocka_unit_test_setup(waiting_job_names_each_workers_first_failure_and_offline_matches,
                               flush_db),
        cmocka_unit_test_setup(unknown_job_is_not_found_and_a_finished_job_is_not_waiting,
                               flush_db),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
