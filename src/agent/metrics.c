#include "agent/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB 1048576.0

/* A growable text buffer with a hard maximum (curl's dynbuf idea). */
typedef struct text_buf {
    char *data;
    size_t len, cap, max;
    int error; /* first failure: KILN_ETOOBIG or KILN_ENOMEM; later appends are no-ops */
} text_buf_t;

static void buf_append(text_buf_t *b, const char *text, size_t n)
{
    if (b->error)
        return;
    if (b->len + n + 1 > b->max) {
        b->error = KILN_ETOOBIG;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->error = KILN_ENOMEM;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_printf(text_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(text_buf_t *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->error = b->error ? b->error : KILN_ENOMEM;
        return;
    }
    if ((size_t)n < sizeof small) {
        buf_append(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->error = b->error ? b->error : KILN_ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_append(b, big, (size_t)n);
    free(big);
}

/* A label value as the text format wants it: backslash, double quote and
 * line feed escaped; jansson strings are valid UTF-8 already. */
static void buf_label_value(text_buf_t *b, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            buf_append(b, "\\\\", 2);
        else if (*p == '"')
            buf_append(b, "\\\"", 2);
        else if (*p == '\n')
            buf_append(b, "\\n", 2);
        else
            buf_append(b, p, 1);
    }
}

/* A metric family: HELP and TYPE are written before its first sample, so a
 * family without samples leaves no trace. */
typedef struct family {
    const char *name, *type, *help;
    bool started;
} family_t;

#define FAMILY(name, type, help)                                                                   \
    {                                                                                              \
        name, type, help, false                                                                    \
    }

/* Writes one sample: name{k1="v1",k2="v2"} value. labels holds n_labels
 * name/value pairs; a NULL value drops that label. */
static void sample(text_buf_t *b, family_t *f, const char *const *labels, size_t n_labels,
                   double value)
{
    if (!isfinite(value))
        return;
    if (!f->started) {
        buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, f->type);
        f->started = true;
    }
    buf_append(b, f->name, strlen(f->name));
    bool open = false;
    for (size_t i = 0; i < n_labels; i++) {
        if (!labels[2 * i + 1])
            continue;
        buf_printf(b, "%s%s=\"", open ? "," : "{", labels[2 * i]);
        buf_label_value(b, labels[2 * i + 1]);
        buf_append(b, "\"", 1);
        open = true;
    }
    if (open)
        buf_append(b, "}", 1);
    /* Integers print exactly; %.17g would turn 2^53+ byte counts into
     * exponent notation that is still valid but harder to read. */
    if (value == floor(value) && fabs(value) < 9.2e18)
        buf_printf(b, " %" PRId64 "\n", (int64_t)value);
    else
        buf_printf(b, " %.17g\n", value);
}

static bool json_number(const json_t *obj, const char *key, double *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_number(v))
        return false;
    *out = json_number_value(v);
    return true;
}

static bool service_is_up(const json_t *svc)
{
    const char *state = json_string_value(json_object_get(svc, "state"));
    if (!state)
        return false;
    if (strcmp(state, "running") == 0)
        return true;
    /* A one-shot step that finished well did its job: count it as up, so an
     * alert on kiln_service_up == 0 fires only for real trouble. */
    return strcmp(state, "exited") == 0;
}

static void render_services(text_buf_t *b, const json_t *services)
{
    family_t up = FAMILY("kiln_service_up", "gauge",
                         "1 when the service is running (or a one-shot step finished), else 0.");
    family_t restarts = FAMILY("kiln_service_restarts_total", "counter",
                               "Times the supervisor restarted the service.");
    family_t rss = FAMILY("kiln_service_rss_bytes", "gauge",
                          "Resident memory of the service's process group in bytes.");
    family_t cpu = FAMILY("kiln_service_cpu_ratio", "gauge",
                          "CPU used by the service's process group; 1.0 is one CPU.");
    family_t *families[] = {&up, &restarts, &rss, &cpu};
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        size_t i;
        const json_t *svc;
        json_array_foreach(services, i, svc)
        {
            const char *name = json_string_value(json_object_get(svc, "name"));
            if (!name)
                continue;
            const char *labels[] = {"service", name};
            double v;
            if (families[f] == &up)
                sample(b, &up, labels, 1, service_is_up(svc) ? 1 : 0);
            else if (families[f] == &restarts)
                sample(b, &restarts, labels, 1, json_number(svc, "restarts", &v) && v >= 0 ? v : 0);
            else if (families[f] == &rss && json_number(svc, "rss_bytes", &v))
                sample(b, &rss, labels, 1, v);
            else if (families[f] == &rss && json_number(svc, "rss_mb", &v))
                sample(b, &rss, labels, 1, round(v * MIB));
            else if (families[f] == &cpu && json_number(svc, "cpu_pct", &v) && v >= 0)
                sample(b, &cpu, labels, 1, v / 100.0);
        }
    }
}

static void render_gpus(text_buf_t *b, const json_t *gpus)
{
    family_t used = FAMILY("kiln_gpu_memory_used_bytes", "gauge", "GPU memory in use in bytes.");
    family_t total = FAMILY("kiln_gpu_memory_total_bytes", "gauge", "GPU memory in bytes.");
    family_t util = FAMILY("kiln_gpu_utilization_ratio", "gauge",
                           "Fraction of time the GPU was busy over the last sample period (0-1).");
    family_t temp =
        FAMILY("kiln_gpu_temperature_celsius", "gauge", "GPU core temperature in Celsius.");
    family_t *families[] = {&used, &total, &util, &temp};
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        size_t i;
        const json_t *gpu;
        json_array_foreach(gpus, i, gpu)
        {
            double index, v;
            if (!json_number(gpu, "index", &index))
                continue;
            char gpu_label[32];
            snprintf(gpu_label, sizeof gpu_label, "%" PRId64, (int64_t)index);
            const char *uuid = json_string_value(json_object_get(gpu, "uuid"));
            const char *labels[] = {"gpu", gpu_label, "uuid", uuid && *uuid ? uuid : NULL};
            if (families[f] == &used && json_number(gpu, "memory_used_mb", &v))
                sample(b, &used, labels, 2, round(v * MIB));
            else if (families[f] == &total && json_number(gpu, "memory_total_mb", &v))
                sample(b, &total, labels, 2, round(v * MIB));
            else if (families[f] == &util && json_number(gpu, "utilization_pct", &v) && v >= 0)
                sample(b, &util, labels, 1, v / 100.0);
            else if (families[f] == &temp && json_number(gpu, "temperature_c", &v) && v >= 0)
                sample(b, &temp, labels, 1, v);
        }
    }
}

static void render_host(text_buf_t *b, const json_t *status)
{
    static const struct {
        const char *section, *field, *name, *help;
    } gauges[] = {
        {"memory", "total_bytes", "kiln_memory_total_bytes", "Memory of the machine in bytes."},
        {"memory", "used_bytes", "kiln_memory_used_bytes",
         "Memory in use (total minus available) in bytes."},
        {"memory", "available_bytes", "kiln_memory_available_bytes",
         "Memory that can be allocated without swapping, in bytes."},
        {"disk", "total_bytes", "kiln_disk_total_bytes",
         "Size of the machine's data disk in bytes."},
        {"disk", "used_bytes", "kiln_disk_used_bytes", "Bytes in use on the machine's data disk."},
        {"disk", "free_bytes", "kiln_disk_free_bytes",
         "Bytes free for unprivileged use on the machine's data disk."},
    };
    for (size_t i = 0; i < sizeof gauges / sizeof gauges[0]; i++) {
        const json_t *section = json_object_get(status, gauges[i].section);
        double v;
        if (!json_number(section, gauges[i].field, &v))
            continue;
        family_t f = FAMILY(gauges[i].name, "gauge", gauges[i].help);
        const char *path = json_string_value(json_object_get(section, "path"));
        const char *labels[] = {"path", path};
        sample(b, &f, labels, strcmp(gauges[i].section, "disk") == 0 ? 1 : 0, v);
    }
}

int kiln_metrics_render(const json_t *status, size_t max_bytes, char **out, size_t *len,
                        kiln_err_t *err)
{
    *out = NULL;
    *len = 0;
    text_buf_t b = {.max = max_bytes ? max_bytes : KILN_METRICS_MAX_BYTES};
    family_t up = FAMILY("kiln_machine_up", "gauge", "1 while the machine agent answers.");
    sample(&b, &up, NULL, 0, 1);
    const char *machine_id = json_string_value(json_object_get(status, "machine_id"));
    const char *machine_type = json_string_value(json_object_get(status, "machine_type"));
    if (machine_id || machine_type) {
        family_t info = FAMILY("kiln_machine_info", "gauge", "The machine's identity; always 1.");
        const char *labels[] = {"machine_id", machine_id, "machine_type", machine_type};
        sample(&b, &info, labels, 2, 1);
    }
    render_services(&b, json_object_get(status, "services"));
    render_gpus(&b, json_object_get(status, "gpus"));
    render_host(&b, status);
    if (b.error) {
        free(b.data);
        if (b.error == KILN_ETOOBIG)
            return kiln_err_set(err, KILN_ETOOBIG,
                                "metrics: the exposition passed %zu bytes; raise the limit or "
                                "run fewer services",
                                b.max);
        return kiln_err_set(err, KILN_ENOMEM, "metrics: out of memory");
    }
    *out = b.data;
    *len = b.len;
    return 0;
}
