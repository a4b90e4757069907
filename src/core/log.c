/*
 * Structured logging. Each record is formatted into one buffer and written
 * with a single write(2) so lines from threads and processes never interleave.
 */
#include "kiln/log.h"
#include "kiln/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static kiln_log_format_t log_format = KILN_LOG_JSON;
static kiln_log_level_t log_min_level = KILN_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void kiln_log_configure(kiln_log_format_t format, kiln_log_level_t min_level)
{
    log_format = format;
    log_min_level = min_level;
}

int kiln_log_format_parse(const char *text, kiln_log_format_t *out)
{
    if (text && strcasecmp(text, "json") == 0)
        *out = KILN_LOG_JSON;
    else if (text && strcasecmp(text, "text") == 0)
        *out = KILN_LOG_TEXT;
    else
        return KILN_EINVAL;
    return 0;
}

int kiln_log_level_parse(const char *text, kiln_log_level_t *out)
{
    for (int i = 0; text && i < 4; i++) {
        if (strcasecmp(text, level_names[i]) == 0) {
            *out = (kiln_log_level_t)i;
            return 0;
        }
    }
    return KILN_EINVAL;
}

void kiln_log_format_time(char *buf, size_t size)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
}

static void write_all(const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, data, len);
        if (w <= 0)
            return;
        data += w;
        len -= (size_t)w;
    }
}

void kiln_log(kiln_log_level_t level, const char *component, const char *job_id, json_t *fields,
              const char *fmt, ...)
{
    if (level < log_min_level)
        return;
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    char when[40];
    kiln_log_format_time(when, sizeof when);

    char *line = NULL;
    if (log_format == KILN_LOG_JSON) {
        json_t *rec = json_pack("{s:s, s:s, s:s, s:s}", "time", when, "level", level_names[level],
                                "component", component ? component : "kiln", "msg", message);
        if (!rec)
            return;
        if (job_id)
            json_object_set_new(rec, "job_id", json_string(job_id));
        if (fields)
            json_object_set(rec, "fields", fields);
        line = json_dumps(rec, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(rec);
    } else {
        char *extra = fields ? json_dumps(fields, JSON_COMPACT) : NULL;
        if (asprintf(&line, "%s %-5s %s%s%s%s %s%s%s", when, level_names[level],
                     component ? component : "kiln", job_id ? " [" : "", job_id ? job_id : "",
                     job_id ? "]" : "", message, extra ? " " : "", extra ? extra : "") < 0)
            line = NULL;
        free(extra);
    }
    if (!line)
        return;
    size_t len = strlen(line);
    line[len] = '\0';
    char *out = realloc(line, len + 2);
    if (!out) {
        free(line);
        return;
    }
    out[len] = '\n';
    write_all(out, len + 1);
    free(out);
}
