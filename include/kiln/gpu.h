/*
 * GPU discovery for the machine agent: NVML loaded with dlopen (no build or
 * link dependency on NVIDIA's libraries), `nvidia-smi` as a fallback, and
 * the configuration as an override (MACHINE_GPU_COUNT, MACHINE_HAS_GPU).
 */
#ifndef KILN_GPU_H
#define KILN_GPU_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln/err.h"

typedef struct kiln_gpu {
    int index; /* NVML / CUDA_DEVICE_ORDER=PCI_BUS_ID order */
    char name[96];
    char uuid[96];
    uint64_t memory_total_mb;
    uint64_t memory_used_mb;
    int utilization_pct; /* -1 when unknown */
    int temperature_c;   /* -1 when unknown */
} kiln_gpu_t;

typedef struct kiln_gpu_list {
    kiln_gpu_t *gpus; /* owned; count entries */
    size_t count;
    char source[16]; /* "nvml", "nvidia-smi", "config" or "none" */
} kiln_gpu_list_t;

typedef struct kiln_gpu_options {
    const char *nvml_path;       /* NULL: "libnvidia-ml.so.1" */
    const char *nvidia_smi_path; /* NULL: "nvidia-smi" looked up on PATH; "" disables */
    int override_count;          /* >= 0: the config says this many GPUs (no hardware
                                    needed: names "configured GPU n"); -1: discover */
    int smi_timeout_ms;          /* nvidia-smi is killed after this long; 0: 5000 */
} kiln_gpu_options_t;

#define KILN_GPU_MAX            256  /* GPUs one machine may report or configure */
#define KILN_GPU_SMI_TIMEOUT_MS 5000 /* default for smi_timeout_ms */

/* Discovers the machine's GPUs: NVML first, then nvidia-smi, else none;
 * override_count >= 0 wins over both (but discovered details are kept for
 * the GPUs that exist). Never fails for a machine without GPUs (count 0,
 * source "none"); returns a negative KILN_E* only on internal errors. */
int kiln_gpu_discover(const kiln_gpu_options_t *opts, kiln_gpu_list_t *out, kiln_err_t *err);

/* Re-reads what changes (memory used, utilisation, temperature) of the GPUs
 * in list when they came from NVML (list->source "nvml"; others are left
 * as discovered), through the library at nvml_path (NULL: the default).
 * A GPU NVML cannot read now keeps its last values. Returns 0. */
int kiln_gpu_refresh(kiln_gpu_list_t *list, const char *nvml_path);

/* The list as a JSON array of objects (index, name, uuid, memory_total_mb,
 * memory_used_mb, utilization_pct, temperature_c). Caller owns it. */
json_t *kiln_gpu_list_to_json(const kiln_gpu_list_t *list);

void kiln_gpu_list_free(kiln_gpu_list_t *list);

#endif
