/*
 * GPU discovery (docs/gpu.md). The order is fixed: NVML through dlopen, then
 * `nvidia-smi` (src/agent/gpu_smi.c), else no GPUs; a configured count
 * overrides both but keeps the details of the GPUs that were found.
 *
 * NVML is loaded at run time so that kiln neither builds nor links against
 * NVIDIA's libraries, and a machine without a driver is an ordinary case,
 * not an error. Each call loads, initialises, shuts down and unloads NVML:
 * both nvmlInit_v2/nvmlShutdown and dlopen/dlclose are reference counted
 * and thread-safe, so concurrent calls need no lock and nothing global.
 */
#include "kiln/gpu.h"
#include "kiln/log.h"

#include "agent/gpu_internal.h"

#include <dlfcn.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPU_LOG           "gpu"
#define NVML_DEFAULT_PATH "libnvidia-ml.so.1"
#define BYTES_PER_MIB     (1024ULL * 1024ULL)

/* The few NVML declarations we need, written from the NVML API reference
 * (docs.nvidia.com/deploy/nvml-api). nvmlReturn_t is an enum, which the C
 * ABI passes as an int; nvmlDevice_t is an opaque pointer. */
typedef int nvml_return_t;
typedef struct nvml_device_opaque *nvml_device_t;
typedef struct nvml_memory {
    unsigned long long total; /* bytes */
    unsigned long long free;
    unsigned long long used;
} nvml_memory_t;
typedef struct nvml_utilization {
    unsigned int gpu; /* percent of time a kernel ran over the last sample period */
    unsigned int memory;
} nvml_utilization_t;

#define NVML_SUCCESS         0
#define NVML_TEMPERATURE_GPU 0 /* nvmlTemperatureSensors_t: the GPU die */

typedef struct nvml_api {
    void *lib;
    /* required */
    nvml_return_t (*init)(void);
    nvml_return_t (*shutdown)(void);
    nvml_return_t (*device_count)(unsigned int *count);
    nvml_return_t (*device_by_index)(unsigned int index, nvml_device_t *device);
    nvml_return_t (*device_name)(nvml_device_t device, char *name, unsigned int length);
    nvml_return_t (*device_uuid)(nvml_device_t device, char *uuid, unsigned int length);
    nvml_return_t (*device_memory)(nvml_device_t device, nvml_memory_t *memory);
    /* optional: a missing one reads as "unknown" */
    nvml_return_t (*device_utilization)(nvml_device_t device, nvml_utilization_t *utilization);
    nvml_return_t (*device_temperature)(nvml_device_t device, int sensor, unsigned int *temp);
    const char *(*error_string)(nvml_return_t result);
} nvml_api_t;

/* ---- NVML ------------------------------------------------------------------ */

/* dlsym returns void *; converting it to a function pointer goes through
 * memcpy so the compiler sees no object-to-function pointer cast. */
static bool nvml_sym(void *lib, const char *name, void *fn_ptr_out, size_t fn_ptr_size)
{
    void *sym = dlsym(lib, name);
    memset(fn_ptr_out, 0, fn_ptr_size);
    if (!sym)
        return false;
    memcpy(fn_ptr_out, &sym, fn_ptr_size);
    return true;
}

#define NVML_SYM(api, field, name) nvml_sym((api)->lib, name, &(api)->field, sizeof((api)->field))

static const char *nvml_error(const nvml_api_t *api, nvml_return_t rc)
{
    const char *text = api->error_string ? api->error_string(rc) : NULL;
    return text ? text : "unknown NVML error";
}

/* Loads the library and its symbols. Returns false (logged at debug level,
 * nothing left loaded) when NVML is missing or lacks a required symbol. */
static bool nvml_load(const char *path, nvml_api_t *api)
{
    memset(api, 0, sizeof *api);
    api->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!api->lib) {
        const char *why = dlerror();
        KILN_LOG_DEBUG_(GPU_LOG, "NVML not loaded from %s: %s", path, why ? why : "dlopen failed");
        return false;
    }
    static const char *const required[] = {"nvmlInit_v2",
                                           "nvmlShutdown",
                                           "nvmlDeviceGetCount_v2",
                                           "nvmlDeviceGetHandleByIndex_v2",
                                           "nvmlDeviceGetName",
                                           "nvmlDeviceGetUUID",
                                           "nvmlDeviceGetMemoryInfo"};
    bool ok = NVML_SYM(api, init, required[0]) && NVML_SYM(api, shutdown, required[1]) &&
              NVML_SYM(api, device_count, required[2]) &&
              NVML_SYM(api, device_by_index, required[3]) &&
              NVML_SYM(api, device_name, required[4]) && NVML_SYM(api, device_uuid, required[5]) &&
              NVML_SYM(api, device_memory, required[6]);
    if (!ok) {
        KILN_LOG_DEBUG_(GPU_LOG, "NVML at %s lacks a required function (%s); not using it", path,
                        dlerror());
        dlclose(api->lib);
        api->lib = NULL;
        return false;
    }
    NVML_SYM(api, device_utilization, "nvmlDeviceGetUtilizationRates");
    NVML_SYM(api, device_temperature, "nvmlDeviceGetTemperature");
    NVML_SYM(api, error_string, "nvmlErrorString");
    return true;
}

/* Reads what changes of a device into gpu: memory, utilisation and
 * temperature (-1 when NVML cannot tell). */
static void nvml_read_usage(const nvml_api_t *api, nvml_device_t device, kiln_gpu_t *gpu)
{
    gpu->utilization_pct = -1;
    gpu->temperature_c = -1;
    nvml_memory_t memory = {0};
    if (api->device_memory(device, &memory) == NVML_SUCCESS) {
        gpu->memory_total_mb = memory.total / BYTES_PER_MIB;
        gpu->memory_used_mb = memory.used / BYTES_PER_MIB;
    }
    nvml_utilization_t utilization = {0};
    if (api->device_utilization && api->device_utilization(device, &utilization) == NVML_SUCCESS &&
        utilization.gpu <= 100)
        gpu->utilization_pct = (int)utilization.gpu;
    unsigned int temperature = 0;
    if (api->device_temperature &&
        api->device_temperature(device, NVML_TEMPERATURE_GPU, &temperature) == NVML_SUCCESS &&
        temperature <= 1000)
        gpu->temperature_c = (int)temperature;
}

/* Reads one device into gpu. Returns false when the device cannot be
 * reached at all (it is then left out). */
static bool nvml_read_device(const nvml_api_t *api, unsigned int index, kiln_gpu_t *gpu)
{
    nvml_device_t device = NULL;
    nvml_return_t rc = api->device_by_index(index, &device);
    if (rc != NVML_SUCCESS) {
        KILN_LOG_WARN_(GPU_LOG, "NVML: GPU %u is unreachable and left out: %s", index,
                       nvml_error(api, rc));
        return false;
    }
    memset(gpu, 0, sizeof *gpu);
    gpu->index = (int)index;
    if (api->device_name(device, gpu->name, (unsigned int)sizeof gpu->name) != NVML_SUCCESS)
        gpu->name[0] = '\0';
    gpu->name[sizeof gpu->name - 1] = '\0';
    if (api->device_uuid(device, gpu->uuid, (unsigned int)sizeof gpu->uuid) != NVML_SUCCESS)
        gpu->uuid[0] = '\0';
    gpu->uuid[sizeof gpu->uuid - 1] = '\0';
    kiln_gpu_text_clean(gpu->name);
    kiln_gpu_text_clean(gpu->uuid);
    nvml_read_usage(api, device, gpu);
    return true;
}

/* ---- refresh ---------------------------------------------------------------- */

/* See gpu.h. NVML is loaded and initialised for the refresh only (as for
 * discovery), so no NVML state outlives a call. */
int kiln_gpu_refresh(kiln_gpu_list_t *list, const char *nvml_path)
{
    if (!list || strcmp(list->source, "nvml") != 0 || list->count == 0)
        return 0;
    nvml_api_t api;
    if (!nvml_load(nvml_path ? nvml_path : NVML_DEFAULT_PATH, &api))
        return 0;
    if (api.init() == NVML_SUCCESS) {
        for (size_t i = 0; i < list->count; i++) {
            nvml_device_t device = NULL;
            if (api.device_by_index((unsigned int)list->gpus[i].index, &device) == NVML_SUCCESS)
                nvml_read_usage(&api, device, &list->gpus[i]);
        }
        api.shutdown();
    }
    dlclose(api.lib);
    return 0;
}

/* Fills out from NVML. Returns 1 when NVML answered (out->count may be 0),
 * 0 when NVML is unavailable (out untouched), or KILN_ENOMEM. */
static int nvml_discover(const char *path, kiln_gpu_list_t *out, kiln_err_t *err)
{
    nvml_api_t api;
    if (!nvml_load(path, &api))
        return 0;
    int result = 0;
    nvml_return_t rc = api.init();
    if (rc != NVML_SUCCESS) {
        KILN_LOG_DEBUG_(GPU_LOG, "NVML at %s did not initialise: %s", path, nvml_error(&api, rc));
        goto unload;
    }
    unsigned int count = 0;
    rc = api.device_count(&count);
    if (rc != NVML_SUCCESS) {
        KILN_LOG_DEBUG_(GPU_LOG, "NVML at %s cannot count GPUs: %s", path, nvml_error(&api, rc));
        goto shutdown;
    }
    if (count > KILN_GPU_MAX) {
        KILN_LOG_WARN_(GPU_LOG, "NVML reports %u GPUs; using the first %d", count, KILN_GPU_MAX);
        count = KILN_GPU_MAX;
    }
    kiln_gpu_t *gpus = count ? calloc(count, sizeof *gpus) : NULL;
    if (count && !gpus) {
        result = kiln_err_set(err, KILN_ENOMEM, "gpu: out of memory listing %u GPUs", count);
        goto shutdown;
    }
    size_t found = 0;
    for (unsigned int i = 0; i < count; i++)
        found += nvml_read_device(&api, i, &gpus[found]);
    out->gpus = gpus;
    out->count = found;
    snprintf(out->source, sizeof out->source, "nvml");
    result = 1;
shutdown:
    api.shutdown();
unload:
    dlclose(api.lib);
    return result;
}

/* ---- override -------------------------------------------------------------- */

/* Makes list exactly want entries long: discovered GPUs keep their details,
 * the missing ones become "configured GPU n". Returns 0 or KILN_ENOMEM. */
static int apply_override(kiln_gpu_list_t *list, size_t want, kiln_err_t *err)
{
    if (list->count != want)
        KILN_LOG_DEBUG_(GPU_LOG, "configuration says %zu GPUs; discovery (%s) found %zu", want,
                        list->source, list->count);
    if (want > list->count) {
        kiln_gpu_t *grown = realloc(list->gpus, want * sizeof *grown);
        if (!grown)
            return kiln_err_set(err, KILN_ENOMEM, "gpu: out of memory listing %zu GPUs", want);
        for (size_t i = list->count; i < want; i++) {
            kiln_gpu_t *gpu = &grown[i];
            memset(gpu, 0, sizeof *gpu);
            gpu->index = (int)i;
            snprintf(gpu->name, sizeof gpu->name, "configured GPU %zu", i);
            gpu->utilization_pct = -1;
            gpu->temperature_c = -1;
        }
        list->gpus = grown;
    }
    list->count = want;
    if (want == 0) {
        free(list->gpus);
        list->gpus = NULL;
    }
    snprintf(list->source, sizeof list->source, "config");
    return 0;
}

/* ---- public API ------------------------------------------------------------ */

int kiln_gpu_discover(const kiln_gpu_options_t *opts, kiln_gpu_list_t *out, kiln_err_t *err)
{
    static const kiln_gpu_options_t defaults = {.override_count = -1};
    if (!out)
        return kiln_err_set(err, KILN_EINVAL,
                            "kiln_gpu_discover: out is NULL; pass a list to fill");
    memset(out, 0, sizeof *out);
    if (!opts)
        opts = &defaults;
    if (opts->override_count < -1 || opts->override_count > KILN_GPU_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "gpu: override_count %d is out of range; use -1 to discover or a GPU "
                            "count from 0 to %d (MACHINE_GPU_COUNT)",
                            opts->override_count, KILN_GPU_MAX);
    if (opts->smi_timeout_ms < 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "gpu: smi_timeout_ms %d is negative; use 0 for the default (%d ms)",
                            opts->smi_timeout_ms, KILN_GPU_SMI_TIMEOUT_MS);
    snprintf(out->source, sizeof out->source, "none");
    if (opts->override_count == 0)
        return apply_override(out, 0, err);

    const char *nvml_path = opts->nvml_path ? opts->nvml_path : NVML_DEFAULT_PATH;
    int rc = nvml_discover(nvml_path, out, err);
    if (rc == 0) {
        const char *smi_path = opts->nvidia_smi_path ? opts->nvidia_smi_path : "nvidia-smi";
        int timeout_ms = opts->smi_timeout_ms ? opts->smi_timeout_ms : KILN_GPU_SMI_TIMEOUT_MS;
        rc = smi_path[0] ? kiln_gpu_smi_discover(smi_path, timeout_ms, out, err) : 0;
    }
    if (rc < 0) {
        kiln_gpu_list_free(out);
        return rc;
    }
    if (out->count == 0)
        snprintf(out->source, sizeof out->source, "none");
    if (opts->override_count >= 0 && (rc = apply_override(out, (size_t)opts->override_count, err)))
        kiln_gpu_list_free(out);
    return rc < 0 ? rc : 0;
}

json_t *kiln_gpu_list_to_json(const kiln_gpu_list_t *list)
{
    json_t *array = json_array();
    if (!array || !list)
        return array;
    for (size_t i = 0; i < list->count; i++) {
        const kiln_gpu_t *gpu = &list->gpus[i];
        json_t *obj =
            json_pack("{s:i, s:s, s:s, s:I, s:I, s:i, s:i}", "index", gpu->index, "name", gpu->name,
                      "uuid", gpu->uuid, "memory_total_mb", (json_int_t)gpu->memory_total_mb,
                      "memory_used_mb", (json_int_t)gpu->memory_used_mb, "utilization_pct",
                      gpu->utilization_pct, "temperature_c", gpu->temperature_c);
        if (!obj || json_array_append_new(array, obj) < 0) {
            json_decref(array);
            return NULL;
        }
    }
    return array;
}

void kiln_gpu_list_free(kiln_gpu_list_t *list)
{
    if (!list)
        return;
    free(list->gpus);
    list->gpus = NULL;
    list->count = 0;
}
