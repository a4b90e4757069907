/*
 * The machine's status as Prometheus text exposition (format 0.0.4), for
 * GET /metrics. Rendered from the status JSON the machine API serves, so
 * the two always agree: one source of truth, two views.
 *
 * Families (HELP and TYPE lines first; a family with no samples is left
 * out):
 *   kiln_machine_up                                   gauge, always 1
 *   kiln_machine_info{machine_id,machine_type}        gauge, always 1
 *   kiln_service_up{service}                          gauge 1 running/exited ok, else 0
 *   kiln_service_restarts_total{service}              counter
 *   kiln_service_rss_bytes{service}                   gauge
 *   kiln_service_cpu_ratio{service}                   gauge, 1.0 = one CPU
 *   kiln_gpu_memory_used_bytes{gpu,uuid}              gauge
 *   kiln_gpu_memory_total_bytes{gpu,uuid}             gauge
 *   kiln_gpu_utilization_ratio{gpu}                   gauge 0-1
 *   kiln_gpu_temperature_celsius{gpu}                 gauge
 *   kiln_memory_{total,used,available}_bytes          gauge
 *   kiln_disk_{total,used,free}_bytes{path}           gauge
 */
#ifndef KILN_AGENT_METRICS_H
#define KILN_AGENT_METRICS_H

#include <jansson.h>
#include <stddef.h>

#include "kiln/err.h"

/* Default bound of one rendering: about 1500 services' worth. */
#define KILN_METRICS_MAX_BYTES (1024 * 1024)

/* The Content-Type of what kiln_metrics_render produces. */
#define KILN_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Renders status (borrowed) as exposition text into *out (caller frees;
 * NUL-terminated, *len bytes). The status fields read are those of
 * docs/machine-api.md: services[] {name, state, restarts, rss_mb or
 * rss_bytes, cpu_pct}, gpus[] {index, uuid, memory_used_mb,
 * memory_total_mb, utilization_pct, temperature_c (-1 = unknown, left
 * out)}, memory {total_bytes, used_bytes, available_bytes}, disk {path,
 * total_bytes, used_bytes, free_bytes}; anything missing is left out.
 * max_bytes 0 means KILN_METRICS_MAX_BYTES. Returns 0, KILN_ETOOBIG past
 * max_bytes, or KILN_ENOMEM. */
int kiln_metrics_render(const json_t *status, size_t max_bytes, char **out, size_t *len,
                        kiln_err_t *err);

#endif
