/*
 * Shared between gpu.c (NVML, override, public API) and gpu_smi.c (the
 * nvidia-smi fallback). Not part of libkiln's public API.
 */
#ifndef KILN_AGENT_GPU_INTERNAL_H
#define KILN_AGENT_GPU_INTERNAL_H

#include "kiln/gpu.h"

#define KILN_GPU_SMI_OUTPUT_MAX (64 * 1024) /* bytes of nvidia-smi output read at most */

/* Runs nvidia-smi (path, or a name looked up on PATH) as argv, with its
 * output bounded to KILN_GPU_SMI_OUTPUT_MAX and its run time to timeout_ms
 * (then SIGKILL), and fills out (which must be empty) from its CSV.
 * Returns 1 when nvidia-smi answered (out->count may be 0), 0 when it is
 * missing, failed or hung (logged; out untouched), or KILN_ENOMEM. */
int kiln_gpu_smi_discover(const char *path, int timeout_ms, kiln_gpu_list_t *out, kiln_err_t *err);

/* Parses nvidia-smi's `--format=csv,noheader,nounits` output for the
 * query in gpu_smi.c into out (which must be empty; source left as is).
 * Malformed lines are skipped with a debug log. Returns 0 or KILN_ENOMEM. */
int kiln_gpu_smi_parse(const char *csv, kiln_gpu_list_t *out, kiln_err_t *err);

/* Replaces bytes outside printable ASCII in text with '?', so names from
 * drivers are always valid JSON strings and safe in logs. */
void kiln_gpu_text_clean(char *text);

#endif
