/*
 * GPU discovery against a fake NVML (tests/fakes/fake_nvml.c, loaded with
 * dlopen exactly as libnvidia-ml.so.1 would be) and a fake nvidia-smi
 * (tests/fakes/fake_nvidia_smi.c, run as a real child process).
 */
#include "kiln/gpu.h"
#include "kiln_test.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAKE_NVML         KILN_TEST_FAKES_DIR "/fake_nvml.so"
#define FAKE_NVML_MINIMAL KILN_TEST_FAKES_DIR "/fake_nvml_minimal.so"
#define FAKE_SMI          KILN_TEST_FAKES_DIR "/fake_nvidia_smi"
#define MISSING_NVML      "/nonexistent/kiln-test/libnvidia-ml.so.1"
#define MISSING_SMI       "/nonexistent/kiln-test/nvidia-smi"

/* ---- fixtures --------------------------------------------------------------- */

static const char *const fake_env[] = {
    "FAKE_NVML_GPUS",    "FAKE_NVML_INIT_FAIL", "FAKE_NVML_NO_TEMPERATURE",
    "FAKE_NVML_BUSY",    "FAKE_SMI_GPUS",       "FAKE_SMI_GARBAGE",
    "FAKE_SMI_ODD",      "FAKE_SMI_FAIL",       "FAKE_SMI_HANG",
    "FAKE_SMI_PID_FILE",
};

static int reset_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof fake_env / sizeof fake_env[0]; i++)
        unsetenv(fake_env[i]);
    return 0;
}

static void set_env_int(const char *name, int value)
{
    char text[32];
    snprintf(text, sizeof text, "%d", value);
    assert_int_equal(setenv(name, text, 1), 0);
}

static kiln_gpu_options_t options(const char *nvml, const char *smi)
{
    return (kiln_gpu_options_t){.nvml_path = nvml, .nvidia_smi_path = smi, .override_count = -1};
}

static void discover(const kiln_gpu_options_t *opts, kiln_gpu_list_t *list)
{
    kiln_err_t err = {0};
    int rc = kiln_gpu_discover(opts, list, &err);
    if (rc != 0)
        fail_msg("kiln_gpu_discover: %d %s", rc, err.msg);
}

/* The fake NVML's init/shutdown counters. Holding our own dlopen handle
 * keeps the library (and its counters) loaded between discoveries. */
typedef struct nvml_counters {
    void *lib;
    int (*init_calls)(void);
    int (*shutdown_calls)(void);
} nvml_counters_t;

static void counters_open(nvml_counters_t *c)
{
    c->lib = dlopen(FAKE_NVML, RTLD_NOW | RTLD_LOCAL);
    if (!c->lib)
        fail_msg("dlopen %s: %s", FAKE_NVML, dlerror());
    *(void **)&c->init_calls = dlsym(c->lib, "fake_nvml_init_calls");
    *(void **)&c->shutdown_calls = dlsym(c->lib, "fake_nvml_shutdown_calls");
    assert_non_null(c->init_calls);
    assert_non_null(c->shutdown_calls);
}

static void counters_close(nvml_counters_t *c)
{
    dlclose(c->lib);
}

static void assert_fake_nvml_gpu(const kiln_gpu_t *gpu, int i)
{
    char name[64], uuid[64];
    snprintf(name, sizeof name, "Fake GPU %d", i);
    snprintf(uuid, sizeof uuid, "GPU-fake-%04d-0000-0000-000000000000", i);
    assert_int_equal(gpu->index, i);
    assert_string_equal(gpu->name, name);
    assert_string_equal(gpu->uuid, uuid);
    assert_int_equal(gpu->memory_total_mb, 24576 * (i + 1));
    assert_int_equal(gpu->memory_used_mb, 1024 * i);
}

static void assert_fake_smi_gpu(const kiln_gpu_t *gpu, int i)
{
    char name[64], uuid[64];
    snprintf(name, sizeof name, "Fake SMI GPU %d", i);
    snprintf(uuid, sizeof uuid, "GPU-smi-%04d-0000-0000-000000000000", i);
    assert_int_equal(gpu->index, i);
    assert_string_equal(gpu->name, name);
    assert_string_equal(gpu->uuid, uuid);
    assert_int_equal(gpu->memory_total_mb, 24576 * (i + 1));
    assert_int_equal(gpu->memory_used_mb, 1024 * i);
    assert_int_equal(gpu->utilization_pct, 10 * i);
    assert_int_equal(gpu->temperature_c, 40 + i);
}

/* ---- NVML ------------------------------------------------------------------- */

static void nvml_with_zero_one_and_four_gpus_is_read_through_dlopen(void **state)
{
    (void)state;
    nvml_counters_t counters;
    counters_open(&counters);
    /* nvidia-smi would report 2 GPUs: NVML's answer, even "none", must win. */
    set_env_int("FAKE_SMI_GPUS", 2);
    kiln_gpu_options_t opts = options(FAKE_NVML, FAKE_SMI);
    const int counts[] = {0, 1, 4};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        int n = counts[k];
        set_env_int("FAKE_NVML_GPUS", n);
        int inits = counters.init_calls(), shutdowns = counters.shutdown_calls();
        kiln_gpu_list_t list;
        discover(&opts, &list);
        assert_int_equal(list.count, n);
        assert_string_equal(list.source, n ? "nvml" : "none");
        for (int i = 0; i < n; i++) {
            assert_fake_nvml_gpu(&list.gpus[i], i);
            assert_int_equal(list.gpus[i].utilization_pct, 10 * i);
            assert_int_equal(list.gpus[i].temperature_c, 40 + i);
        }
        assert_int_equal(counters.init_calls(), inits + 1);
        assert_int_equal(counters.shutdown_calls(), shutdowns + 1);
        kiln_gpu_list_free(&list);
        assert_null(list.gpus);
        assert_int_equal(list.count, 0);
    }
    counters_close(&counters);
}

static void nvml_init_failure_falls_back_to_nvidia_smi(void **state)
{
    (void)state;
    nvml_counters_t counters;
    counters_open(&counters);
    set_env_int("FAKE_NVML_GPUS", 2);
    set_env_int("FAKE_NVML_INIT_FAIL", 1);
    set_env_int("FAKE_SMI_GPUS", 3);
    int shutdowns = counters.shutdown_calls();
    kiln_gpu_options_t opts = options(FAKE_NVML, FAKE_SMI);
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_string_equal(list.source, "nvidia-smi");
    assert_int_equal(list.count, 3);
    for (int i = 0; i < 3; i++)
        assert_fake_smi_gpu(&list.gpus[i], i);
    /* NVML never initialised, so it must not be shut down either. */
    assert_int_equal(counters.shutdown_calls(), shutdowns);
    kiln_gpu_list_free(&list);
    counters_close(&counters);
}

static void missing_nvml_library_falls_back_to_nvidia_smi(void **state)
{
    (void)state;
    set_env_int("FAKE_SMI_GPUS", 2);
    kiln_gpu_options_t opts = options(MISSING_NVML, FAKE_SMI);
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_string_equal(list.source, "nvidia-smi");
    assert_int_equal(list.count, 2);
    assert_fake_smi_gpu(&list.gpus[0], 0);
    assert_fake_smi_gpu(&list.gpus[1], 1);
    kiln_gpu_list_free(&list);
}

static void no_nvml_and_no_nvidia_smi_means_no_gpus(void **state)
{
    (void)state;
    set_env_int("FAKE_SMI_GPUS", 2);
    /* Disabled, absent at a path, absent from PATH: all the same to a caller. */
    const char *smi_paths[] = {"", MISSING_SMI, "kiln-test-no-such-nvidia-smi"};
    for (size_t k = 0; k < sizeof smi_paths / sizeof smi_paths[0]; k++) {
        kiln_gpu_options_t opts = options(MISSING_NVML, smi_paths[k]);
        kiln_gpu_list_t list;
        discover(&opts, &list);
        assert_string_equal(list.source, "none");
        assert_int_equal(list.count, 0);
        assert_null(list.gpus);
        kiln_gpu_list_free(&list);
    }
}

static void nvidia_smi_that_fails_means_no_gpus(void **state)
{
    (void)state;
    set_env_int("FAKE_SMI_GPUS", 2);
    set_env_int("FAKE_SMI_FAIL", 1);
    kiln_gpu_options_t opts = options(MISSING_NVML, FAKE_SMI);
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_string_equal(list.source, "none");
    assert_int_equal(list.count, 0);
    kiln_gpu_list_free(&list);
}

static void nvidia_smi_garbage_lines_are_skipped(void **state)
{
    (void)state;
    set_env_int("FAKE_SMI_GPUS", 3);
    set_env_int("FAKE_SMI_GARBAGE", 1);
    kiln_gpu_options_t opts = options(MISSING_NVML, FAKE_SMI);
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_string_equal(list.source, "nvidia-smi");
    assert_int_equal(list.count, 3);
    for (int i = 0; i < 3; i++)
        assert_fake_smi_gpu(&list.gpus[i], i);
    kiln_gpu_list_free(&list);
}

static void nvidia_smi_unknown_values_and_commas_in_names_are_read(void **state)
{
    (void)state;
    set_env_int("FAKE_SMI_GPUS", 1);
    set_env_int("FAKE_SMI_ODD", 1);
    kiln_gpu_options_t opts = options(MISSING_NVML, FAKE_SMI);
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_int_equal(list.count, 2);
    assert_fake_smi_gpu(&list.gpus[0], 0);
    const kiln_gpu_t *odd = &list.gpus[1];
    assert_int_equal(odd->index, 1);
    assert_string_equal(odd->name, "Fake SMI GPU, with a comma");
    assert_string_equal(odd->uuid, "");
    assert_int_equal(odd->memory_total_mb, 0);
    assert_int_equal(odd->memory_used_mb, 0);
    assert_int_equal(odd->utilization_pct, -1);
    assert_int_equal(odd->temperature_c, -1);
    kiln_gpu_list_free(&list);
}

static void nvidia_smi_that_hangs_is_killed_and_ignored(void **state)
{
    (void)state;
    char dir[256], pid_file[320];
    kiln_test_tmpdir(dir, sizeof dir);
    snprintf(pid_file, sizeof pid_file, "%s/smi.pid", dir);
    set_env_int("FAKE_SMI_GPUS", 2);
    set_env_int("FAKE_SMI_HANG", 1);
    assert_int_equal(setenv("FAKE_SMI_PID_FILE", pid_file, 1), 0);
    kiln_gpu_options_t opts = options(MISSING_NVML, FAKE_SMI);
    opts.smi_timeout_ms = 300;

    int64_t started = kiln_test_now_ms();
    kiln_gpu_list_t list;
    discover(&opts, &list);
    int64_t took = kiln_test_now_ms() - started;

    /* It printed one GPU before hanging: a partial answer is no answer. */
    assert_string_equal(list.source, "none");
    assert_int_equal(list.count, 0);
    assert_true(took >= 300);
    assert_true(took < KILN_GPU_SMI_TIMEOUT_MS);
    /* Killed and reaped: the pid no longer exists. */
    FILE *f = fopen(pid_file, "r");
    assert_non_null(f);
    int pid = 0;
    assert_int_equal(fscanf(f, "%d", &pid), 1);
    fclose(f);
    assert_true(pid > 0);
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    kiln_gpu_list_free(&list);
    unlink(pid_file);
    rmdir(dir);
}

/* ---- override and optional values ----------------------------------------- */

static void config_override_wins_and_keeps_discovered_details(void **state)
{
    (void)state;
    set_env_int("FAKE_NVML_GPUS", 2);
    kiln_gpu_options_t opts = options(FAKE_NVML, "");
    kiln_gpu_list_t list;

    opts.override_count = 4; /* more than found: the rest are configured */
    discover(&opts, &list);
    assert_string_equal(list.source, "config");
    assert_int_equal(list.count, 4);
    assert_fake_nvml_gpu(&list.gpus[0], 0);
    assert_fake_nvml_gpu(&list.gpus[1], 1);
    for (int i = 2; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "configured GPU %d", i);
        assert_int_equal(list.gpus[i].index, i);
        assert_string_equal(list.gpus[i].name, name);
        assert_string_equal(list.gpus[i].uuid, "");
        assert_int_equal(list.gpus[i].memory_total_mb, 0);
        assert_int_equal(list.gpus[i].utilization_pct, -1);
        assert_int_equal(list.gpus[i].temperature_c, -1);
    }
    kiln_gpu_list_free(&list);

    opts.override_count = 1; /* fewer than found: only the first is used */
    discover(&opts, &list);
    assert_string_equal(list.source, "config");
    assert_int_equal(list.count, 1);
    assert_fake_nvml_gpu(&list.gpus[0], 0);
    kiln_gpu_list_free(&list);

    opts.override_count = 0; /* MACHINE_HAS_GPU=false on a GPU machine */
    discover(&opts, &list);
    assert_string_equal(list.source, "config");
    assert_int_equal(list.count, 0);
    kiln_gpu_list_free(&list);

    opts = options(MISSING_NVML, ""); /* no hardware at all */
    opts.override_count = 2;
    discover(&opts, &list);
    assert_string_equal(list.source, "config");
    assert_int_equal(list.count, 2);
    assert_string_equal(list.gpus[0].name, "configured GPU 0");
    assert_string_equal(list.gpus[1].name, "configured GPU 1");
    kiln_gpu_list_free(&list);
}

static void unsupported_temperature_reads_as_minus_one(void **state)
{
    (void)state;
    set_env_int("FAKE_NVML_GPUS", 2);
    set_env_int("FAKE_NVML_NO_TEMPERATURE", 1);
    kiln_gpu_options_t opts = options(FAKE_NVML, "");
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_string_equal(list.source, "nvml");
    assert_int_equal(list.count, 2);
    for (int i = 0; i < 2; i++) {
        assert_fake_nvml_gpu(&list.gpus[i], i);
        assert_int_equal(list.gpus[i].utilization_pct, 10 * i);
        assert_int_equal(list.gpus[i].temperature_c, -1);
    }
    kiln_gpu_list_free(&list);
}

static void nvml_without_optional_functions_reads_them_as_minus_one(void **state)
{
    (void)state;
    set_env_int("FAKE_NVML_GPUS", 2);
    kiln_gpu_options_t opts = options(FAKE_NVML_MINIMAL, "");
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_string_equal(list.source, "nvml");
    assert_int_equal(list.count, 2);
    for (int i = 0; i < 2; i++) {
        assert_fake_nvml_gpu(&list.gpus[i], i);
        assert_int_equal(list.gpus[i].utilization_pct, -1);
        assert_int_equal(list.gpus[i].temperature_c, -1);
    }
    kiln_gpu_list_free(&list);
}

/* ---- JSON, arguments, threads ---------------------------------------------- */

/* Memory, utilisation and temperature change while the agent runs: a
 * refresh reads them again (through NVML), the rest stays as discovered. */
static void refresh_rereads_usage_through_nvml(void **state)
{
    set_env_int("FAKE_NVML_GPUS", 2);
    kiln_gpu_options_t opts = options(FAKE_NVML, "");
    kiln_gpu_list_t list;
    discover(&opts, &list);
    assert_int_equal(list.count, 2);
    assert_int_equal(list.gpus[1].utilization_pct, 10);
    set_env_int("FAKE_NVML_BUSY", 80);
    assert_int_equal(kiln_gpu_refresh(&list, FAKE_NVML), 0);
    unsetenv("FAKE_NVML_BUSY");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(list.gpus[i].utilization_pct, 80);
        assert_int_equal(list.gpus[i].temperature_c, 40 + i + 40);
        assert_int_equal(list.gpus[i].memory_used_mb, 1024 * i + 8000);
        assert_int_equal(list.gpus[i].memory_total_mb, 24576 * (i + 1));
    }
    assert_string_equal(list.gpus[1].name, "Fake GPU 1");
    kiln_gpu_list_free(&list);
}

static void gpu_list_to_json_has_every_field(void **state)
{
    (void)state;
    set_env_int("FAKE_NVML_GPUS", 2);
    kiln_gpu_options_t opts = options(FAKE_NVML, "");
    opts.override_count = 3;
    kiln_gpu_list_t list;
    discover(&opts, &list);
    json_t *array = kiln_gpu_list_to_json(&list);
    assert_non_null(array);
    assert_true(json_is_array(array));
    assert_int_equal(json_array_size(array), 3);
    for (size_t i = 0; i < 3; i++) {
        const kiln_gpu_t *gpu = &list.gpus[i];
        json_t *obj = json_array_get(array, i);
        assert_true(json_is_object(obj));
        assert_int_equal(json_object_size(obj), 7);
        assert_int_equal(json_integer_value(json_object_get(obj, "index")), gpu->index);
        assert_string_equal(json_string_value(json_object_get(obj, "name")), gpu->name);
        assert_string_equal(json_string_value(json_object_get(obj, "uuid")), gpu->uuid);
        assert_int_equal(json_integer_value(json_object_get(obj, "memory_total_mb")),
                         gpu->memory_total_mb);
        assert_int_equal(json_integer_value(json_object_get(obj, "memory_used_mb")),
                         gpu->memory_used_mb);
        assert_true(json_is_integer(json_object_get(obj, "utilization_pct")));
        assert_int_equal(json_integer_value(json_object_get(obj, "utilization_pct")),
                         gpu->utilization_pct);
        assert_true(json_is_integer(json_object_get(obj, "temperature_c")));
        assert_int_equal(json_integer_value(json_object_get(obj, "temperature_c")),
                         gpu->temperature_c);
    }
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(array, 1), "memory_total_mb")), 49152);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(array, 2), "temperature_c")),
                     -1);
    json_decref(array);
    kiln_gpu_list_free(&list);

    kiln_gpu_list_t empty = {0};
    array = kiln_gpu_list_to_json(&empty);
    assert_non_null(array);
    assert_int_equal(json_array_size(array), 0);
    json_decref(array);
}

static void invalid_options_are_refused_with_a_message(void **state)
{
    (void)state;
    kiln_err_t err = {0};
    kiln_gpu_list_t list;
    kiln_gpu_options_t opts = options(MISSING_NVML, "");
    opts.override_count = -2;
    assert_int_equal(kiln_gpu_discover(&opts, &list, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "override_count"));
    assert_int_equal(list.count, 0);
    opts.override_count = KILN_GPU_MAX + 1;
    assert_int_equal(kiln_gpu_discover(&opts, &list, &err), KILN_EINVAL);
    opts.override_count = -1;
    opts.smi_timeout_ms = -5;
    assert_int_equal(kiln_gpu_discover(&opts, &list, &err), KILN_EINVAL);
    assert_non_null(strstr(err.msg, "smi_timeout_ms"));
    assert_int_equal(kiln_gpu_discover(&opts, NULL, &err), KILN_EINVAL);
}

#define THREADS 8
#define ROUNDS  25

static void *discover_repeatedly(void *arg)
{
    int *mismatches = arg;
    kiln_gpu_options_t opts = options(FAKE_NVML, "");
    for (int r = 0; r < ROUNDS; r++) {
        kiln_gpu_list_t list;
        if (kiln_gpu_discover(&opts, &list, NULL) != 0 || list.count != 4 ||
            strcmp(list.gpus[3].name, "Fake GPU 3") != 0)
            (*mismatches)++;
        kiln_gpu_list_free(&list);
    }
    return NULL;
}

static void discovery_from_several_threads_at_once_agrees(void **state)
{
    (void)state;
    nvml_counters_t counters;
    counters_open(&counters);
    set_env_int("FAKE_NVML_GPUS", 4);
    int inits = counters.init_calls(), shutdowns = counters.shutdown_calls();
    pthread_t threads[THREADS];
    int mismatches[THREADS] = {0};
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, discover_repeatedly, &mismatches[t]), 0);
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        assert_int_equal(mismatches[t], 0);
    }
    assert_int_equal(counters.init_calls() - inits, THREADS * ROUNDS);
    assert_int_equal(counters.shutdown_calls() - shutdowns, THREADS * ROUNDS);
    counters_close(&counters);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(nvml_with_zero_one_and_four_gpus_is_read_through_dlopen, reset_env),
        cmocka_unit_test_setup(nvml_init_failure_falls_back_to_nvidia_smi, reset_env),
        cmocka_unit_test_setup(missing_nvml_library_falls_back_to_nvidia_smi, reset_env),
        cmocka_unit_test_setup(no_nvml_and_no_nvidia_smi_means_no_gpus, reset_env),
        cmocka_unit_test_setup(nvidia_smi_that_fails_means_no_gpus, reset_env),
        cmocka_unit_test_setup(nvidia_smi_garbage_lines_are_skipped, reset_env),
        cmocka_unit_test_setup(nvidia_smi_unknown_values_and_commas_in_names_are_read, reset_env),
        cmocka_unit_test_setup(nvidia_smi_that_hangs_is_killed_and_ignored, reset_env),
        cmocka_unit_test_setup(config_override_wins_and_keeps_discovered_details, reset_env),
        cmocka_unit_test_setup(unsupported_temperature_reads_as_minus_one, reset_env),
        cmocka_unit_test_setup(nvml_without_optional_functions_reads_them_as_minus_one, reset_env),
        cmocka_unit_test_setup(refresh_rereads_usage_through_nvml, reset_env),
        cmocka_unit_test_setup(gpu_list_to_json_has_every_field, reset_env),
        cmocka_unit_test_setup(invalid_options_are_refused_with_a_message, reset_env),
        cmocka_unit_test_setup(discovery_from_several_threads_at_once_agrees, reset_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
