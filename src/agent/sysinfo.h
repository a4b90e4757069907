/*
 * What the machine has and uses, read from the kernel: memory from
 * /proc/meminfo, a file system's size with statvfs, load averages from
 * /proc/loadavg and the online CPU count. Plain reads: no thread, no
 * state, safe to call from any thread.
 */
#ifndef KILN_AGENT_SYSINFO_H
#define KILN_AGENT_SYSINFO_H

#include <jansson.h>
#include <stdint.h>

#include "kiln/err.h"

typedef struct kiln_sysinfo_memory {
    uint64_t total_bytes;
    uint64_t available_bytes; /* MemAvailable: what can be allocated without swapping */
    uint64_t used_bytes;      /* total - available */
} kiln_sysinfo_memory_t;

typedef struct kiln_sysinfo_disk {
    uint64_t total_bytes;
    uint64_t free_bytes; /* available to an unprivileged user (f_bavail) */
    uint64_t used_bytes; /* total - free as the root user sees it (f_bfree) */
} kiln_sysinfo_disk_t;

/* Reads memory from meminfo_path (NULL: /proc/meminfo). A kernel without
 * MemAvailable (before 3.14) gets MemFree + Buffers + Cached instead.
 * Returns 0, KILN_EIO when the file cannot be read, or KILN_EINVAL when it
 * has no MemTotal line (the message names the file). */
int kiln_sysinfo_memory(const char *meminfo_path, kiln_sysinfo_memory_t *out, kiln_err_t *err);

/* Reads the size of the file system holding path. Returns 0 or KILN_EIO
 * (the message names the path and the reason). */
int kiln_sysinfo_disk(const char *path, kiln_sysinfo_disk_t *out, kiln_err_t *err);

/* Reads the 1, 5 and 15 minute load averages into load[3]. Returns 0 or
 * KILN_EIO. */
int kiln_sysinfo_load(double load[3], kiln_err_t *err);

/* The number of online CPUs (at least 1). */
int kiln_sysinfo_cpu_count(void);

/* Everything above as JSON members of obj (borrowed, modified): "memory"
 * {total_bytes, used_bytes, available_bytes}, "disk" {path, total_bytes,
 * used_bytes, free_bytes}, "load" [1m, 5m, 15m], "cpus". A member already in
 * obj is left alone, so a caller's own figures win; one that cannot be read
 * is left out. disk_path NULL means "/". Returns 0 or KILN_ENOMEM. */
int kiln_sysinfo_fill_json(json_t *obj, const char *disk_path);

#endif
