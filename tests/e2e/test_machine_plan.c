/*
 * End-to-end: `kiln machine plan` as a user or a script runs it, the real
 * binary reading a real config file and the environment. It starts nothing,
 * so no Redis is needed.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln_test.h"

#define OUTPUT_MAX (256 * 1024)

static char tmp_dir[256];
static char config_path[512];
static char out[OUTPUT_MAX];

static int setup(void **state)
{
    kiln_test_tmpdir(tmp_dir, sizeof tmp_dir);
    snprintf(config_path, sizeof config_path, "%s/kiln.yaml", tmp_dir);
    FILE *f = fopen(config_path, "w");
    assert_non_null(f);
    fputs("machine:\n  id: render-01\n", f);
    fclose(f);
    /* The machine settings of the earlier system, as a container passes them. */
    setenv("MACHINE_TYPE", "gpu", 1);
    setenv("WORKER_CONNECTORS", "comfyui,openai", 1);
    return 0;
}

static int teardown(void **state)
{
    unlink(config_path);
    rmdir(tmp_dir);
    unsetenv("MACHINE_TYPE");
    unsetenv("WORKER_CONNECTORS");
    return 0;
}

static int run_kiln(const char *a, const char *b, const char *c, const char *d)
{
    char *argv[] = {KILN_BIN,  "machine", "plan",    "--config", config_path,
                    (char *)a, (char *)b, (char *)c, (char *)d,  NULL};
    return kiln_test_run(argv, NULL, out, sizeof out);
}

static void plan_json_lists_comfyui_and_a_worker_per_gpu_then_the_api_worker(void **state)
{
    assert_int_equal(run_kiln("--json", "--gpus", "2", NULL), 0);
    json_error_t jerr;
    json_t *plan = json_loads(out, 0, &jerr);
    if (!plan)
        fail_msg("not JSON (%s): %s", jerr.text, out);
    assert_string_equal(json_string_value(json_object_get(plan, "machine_id")), "render-01");
    assert_string_equal(json_string_value(json_object_get(plan, "machine_type")), "gpu");
    assert_int_equal(json_integer_value(json_object_get(plan, "gpus")), 2);
    json_t *services = json_object_get(plan, "services");
    static const char *const names[] = {"comfyui-gpu0", "comfyui-gpu1", "worker-gpu0",
                                        "worker-gpu1", "worker-api0"};
    assert_int_equal(json_array_size(services), 5);
    for (size_t i = 0; i < 5; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(services, i), "name")),
                            names[i]);
    json_t *comfy1 = json_array_get(services, 1), *worker1 = json_array_get(services, 3);
    assert_int_equal(json_integer_value(json_object_get(comfy1, "port")), 8189);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(comfy1, "env"), "CUDA_VISIBLE_DEVICES")),
        "1");
    /* The worker runs this very binary. */
    json_t *argv = json_object_get(worker1, "argv");
    char self[4096] = "";
    assert_non_null(realpath(KILN_BIN, self));
    assert_string_equal(json_string_value(json_array_get(argv, 0)), self);
    assert_string_equal(json_string_value(json_array_get(argv, 1)), "worker");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(worker1, "env"), "KILN_CONNECTOR_URLS")),
        "comfyui=http://127.0.0.1:8189");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(worker1, "depends_on"), 0)),
        "comfyui-gpu1");
    json_decref(plan);
}

static void plan_table_has_one_row_per_service(void **state)
{
    assert_int_equal(run_kiln("--gpus", "1", NULL, NULL), 0);
    assert_non_null(strstr(out, "machine render-01: type gpu, 1 GPU (--gpus), 3 services\n"));
    assert_non_null(strstr(out, "NAME"));
    assert_non_null(strstr(out, "DEPENDS"));
    assert_non_null(strstr(out, "COMMAND"));
    assert_non_null(strstr(out, "comfyui-gpu0"));
    assert_non_null(strstr(out, "python3 main.py --listen 127.0.0.1 --port 8188"));
    assert_non_null(strstr(out, "worker-api0"));
}

static void plan_for_a_gpu_machine_without_gpus_exits_2(void **state)
{
    assert_int_equal(run_kiln("--gpus", "0", NULL, NULL), 2);
    assert_string_equal(out, "");
    assert_int_equal(run_kiln("--gpus", "65", NULL, NULL), 2);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(plan_json_lists_comfyui_and_a_worker_per_gpu_then_the_api_worker),
        TEST(plan_table_has_one_row_per_service),
        TEST(plan_for_a_gpu_machine_without_gpus_exits_2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
