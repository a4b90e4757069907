/*
 * fake_nvml: a shared library that exports the NVML functions kiln's GPU
 * discovery loads with dlopen (src/agent/gpu.c), so the NVML path is tested
 * on machines without NVIDIA hardware. It follows the NVML API reference:
 * calls before nvmlInit_v2 answer NVML_ERROR_UNINITIALIZED, init and
 * shutdown are reference counted, memory is reported in bytes.
 *
 * Driven by the environment, read on every call:
 *   FAKE_NVML_GPUS=N            N GPUs (default 0, at most FAKE_NVML_MAX)
 *   FAKE_NVML_INIT_FAIL=1       nvmlInit_v2 answers NVML_ERROR_DRIVER_NOT_LOADED
 *   FAKE_NVML_NO_TEMPERATURE=1  nvmlDeviceGetTemperature answers NOT_SUPPORTED
 *   FAKE_NVML_BUSY=P            every GPU is P % busy, P * 100 MiB more used, P / 2
 *                               degrees warmer (a load that changes while a test runs)
 *
 * GPU i is "Fake GPU i", uuid "GPU-fake-000i-...", with 24576 MiB * (i + 1)
 * of memory of which 1024 MiB * i used, 10 * i % utilization, 40 + i degrees.
 *
 * Built twice (CMakeLists.txt): fake_nvml.so, and fake_nvml_minimal.so with
 * FAKE_NVML_MINIMAL defined, which lacks the optional functions
 * nvmlDeviceGetUtilizationRates and nvmlDeviceGetTemperature.
 *
 * fake_nvml_init_calls() and fake_nvml_shutdown_calls() let a test that
 * dlopens the same file check that every successful init was shut down.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The NVML ABI: enums are ints, a device is an opaque pointer. */
typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
};

#define FAKE_NVML_MAX 16
#define MIB           (1024ULL * 1024ULL)

struct fake_device {
    unsigned int index;
};

static struct fake_device devices[FAKE_NVML_MAX];
static atomic_int refcount;
static atomic_int init_calls;
static atomic_int shutdown_calls;

static int env_int(const char *name)
{
    const char *value = getenv(name);
    return value ? atoi(value) : 0;
}

static int busy(void)
{
    int p = env_int("FAKE_NVML_BUSY");
    return p < 0 ? 0 : p > 100 ? 100 : p;
}

static unsigned int gpu_count(void)
{
    int n = env_int("FAKE_NVML_GPUS");
    return n < 0 ? 0 : n > FAKE_NVML_MAX ? FAKE_NVML_MAX : (unsigned int)n;
}

/* Checks that NVML is initialised and device is one of ours. */
static nvmlReturn_t check_device(nvmlDevice_t device)
{
    if (atomic_load(&refcount) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    if (device < devices || device >= devices + gpu_count())
        return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_text(char *dst, unsigned int length, const char *text)
{
    if (!dst || strlen(text) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

int fake_nvml_init_calls(void)
{
    return atomic_load(&init_calls);
}

int fake_nvml_shutdown_calls(void)
{
    return atomic_load(&shutdown_calls);
}

nvmlReturn_t nvmlInit_v2(void)
{
    if (env_int("FAKE_NVML_INIT_FAIL"))
        return NVML_ERROR_DRIVER_NOT_LOADED;
    atomic_fetch_add(&init_calls, 1);
    atomic_fetch_add(&refcount, 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    int old = atomic_load(&refcount);
    do {
        if (old <= 0)
            return NVML_ERROR_UNINITIALIZED;
    } while (!atomic_compare_exchange_weak(&refcount, &old, old - 1));
    atomic_fetch_add(&shutdown_calls, 1);
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
        return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED:
        return "Driver Not Loaded";
    default:
        return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (atomic_load(&refcount) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (atomic_load(&refcount) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= gpu_count())
        return NVML_ERROR_INVALID_ARGUMENT;
    devices[index].index = index;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS)
        return rc;
    char text[64];
    snprintf(text, sizeof text, "Fake GPU %u", device->index);
    return copy_text(name, length, text);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS)
        return rc;
    char text[64];
    snprintf(text, sizeof text, "GPU-fake-%04u-0000-0000-000000000000", device->index);
    return copy_text(uuid, length, text);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = 24576ULL * MIB * (device->index + 1);
    memory->used = 1024ULL * MIB * device->index + 100ULL * MIB * (unsigned)busy();
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_MINIMAL
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!utilization)
        return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = busy() ? (unsigned)busy() : 10 * device->index;
    utilization->memory = 5 * device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp)
{
    nvmlReturn_t rc = check_device(device);
    if (rc != NVML_SUCCESS)
        return rc;
    if (env_int("FAKE_NVML_NO_TEMPERATURE"))
        return NVML_ERROR_NOT_SUPPORTED;
    if (sensor != 0 /* NVML_TEMPERATURE_GPU */ || !temp)
        return NVML_ERROR_INVALID_ARGUMENT;
    *temp = 40 + device->index + (unsigned)busy() / 2;
    return NVML_SUCCESS;
}
#endif
