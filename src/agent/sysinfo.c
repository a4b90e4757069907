#include "agent/sysinfo.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* /proc/meminfo is a few KiB; a line longer than this is not one we read. */
#define MEMINFO_LINE_MAX 256

typedef struct meminfo_fields {
    uint64_t total_kb, available_kb, free_kb, buffers_kb, cached_kb;
    bool has_total, has_available;
} meminfo_fields_t;

/* Parses "Name:   12345 kB" into *kb when the line starts with name. */
static bool meminfo_value(const char *line, const char *name, uint64_t *kb)
{
    size_t n = strlen(name);
    if (strncmp(line, name, n) != 0 || line[n] != ':')
        return false;
    char *end;
    errno = 0;
    unsigned long long value = strtoull(line + n + 1, &end, 10);
    if (errno != 0 || end == line + n + 1)
        return false;
    *kb = (uint64_t)value;
    return true;
}

static void meminfo_parse_line(const char *line, meminfo_fields_t *f)
{
    if (meminfo_value(line, "MemTotal", &f->total_kb))
        f->has_total = true;
    else if (meminfo_value(line, "MemAvailable", &f->available_kb))
        f->has_available = true;
    else if (meminfo_value(line, "MemFree", &f->free_kb) ||
             meminfo_value(line, "Buffers", &f->buffers_kb) ||
             meminfo_value(line, "Cached", &f->cached_kb))
        return;
}

int kiln_sysinfo_memory(const char *meminfo_path, kiln_sysinfo_memory_t *out, kiln_err_t *err)
{
    const char *path = meminfo_path ? meminfo_path : "/proc/meminfo";
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "re");
    if (!f)
        return kiln_err_set(err, KILN_EIO, "sysinfo: cannot read %s: %s", path, strerror(errno));
    meminfo_fields_t fields = {0};
    char line[MEMINFO_LINE_MAX];
    while (fgets(line, sizeof line, f))
        meminfo_parse_line(line, &fields);
    fclose(f);
    if (!fields.has_total)
        return kiln_err_set(err, KILN_EINVAL,
                            "sysinfo: %s has no MemTotal line; is it a Linux meminfo file?", path);
    uint64_t available_kb = fields.has_available
                                ? fields.available_kb
                                : fields.free_kb + fields.buffers_kb + fields.cached_kb;
    if (available_kb > fields.total_kb)
        available_kb = fields.total_kb;
    out->total_bytes = fields.total_kb * 1024;
    out->available_bytes = available_kb * 1024;
    out->used_bytes = out->total_bytes - out->available_bytes;
    return 0;
}

int kiln_sysinfo_disk(const char *path, kiln_sysinfo_disk_t *out, kiln_err_t *err)
{
    memset(out, 0, sizeof *out);
    struct statvfs st;
    if (statvfs(path, &st) != 0)
        return kiln_err_set(err, KILN_EIO, "sysinfo: cannot read the file system of %s: %s", path,
                            strerror(errno));
    uint64_t unit = st.f_frsize ? st.f_frsize : st.f_bsize;
    out->total_bytes = (uint64_t)st.f_blocks * unit;
    out->free_bytes = (uint64_t)st.f_bavail * unit;
    uint64_t root_free = (uint64_t)st.f_bfree * unit;
    out->used_bytes = out->total_bytes > root_free ? out->total_bytes - root_free : 0;
    return 0;
}

int kiln_sysinfo_load(double load[3], kiln_err_t *err)
{
    load[0] = load[1] = load[2] = 0;
    FILE *f = fopen("/proc/loadavg", "re");
    if (!f)
        return kiln_err_set(err, KILN_EIO, "sysinfo: cannot read /proc/loadavg: %s",
                            strerror(errno));
    int n = fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]);
    fclose(f);
    if (n != 3)
        return kiln_err_set(err, KILN_EIO, "sysinfo: /proc/loadavg does not start with 3 numbers");
    return 0;
}

int kiln_sysinfo_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > 1 << 20 ? 1 << 20 : (int)n);
}

/* Sets obj[key] = value (stolen) unless obj already has key. */
static int set_missing(json_t *obj, const char *key, json_t *value)
{
    if (json_object_get(obj, key)) {
        json_decref(value);
        return 0;
    }
    if (!value || json_object_set_new(obj, key, value) != 0)
        return KILN_ENOMEM;
    return 0;
}

int kiln_sysinfo_fill_json(json_t *obj, const char *disk_path)
{
    const char *path = disk_path ? disk_path : "/";
    int rc = 0;
    kiln_sysinfo_memory_t mem;
    if (!json_object_get(obj, "memory") && kiln_sysinfo_memory(NULL, &mem, NULL) == 0)
        rc = set_missing(obj, "memory",
                         json_pack("{s:I, s:I, s:I}", "total_bytes", (json_int_t)mem.total_bytes,
                                   "used_bytes", (json_int_t)mem.used_bytes, "available_bytes",
                                   (json_int_t)mem.available_bytes));
    kiln_sysinfo_disk_t disk;
    if (rc == 0 && !json_object_get(obj, "disk") && kiln_sysinfo_disk(path, &disk, NULL) == 0)
        rc = set_missing(obj, "disk",
                         json_pack("{s:s, s:I, s:I, s:I}", "path", path, "total_bytes",
                                   (json_int_t)disk.total_bytes, "used_bytes",
                                   (json_int_t)disk.used_bytes, "free_bytes",
                                   (json_int_t)disk.free_bytes));
    double load[3];
    if (rc == 0 && !json_object_get(obj, "load") && kiln_sysinfo_load(load, NULL) == 0)
        rc = set_missing(obj, "load", json_pack("[f, f, f]", load[0], load[1], load[2]));
    if (rc == 0)
        rc = set_missing(obj, "cpus", json_integer(kiln_sysinfo_cpu_count()));
    return rc;
}
