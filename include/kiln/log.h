/*
 * Logging: one JSON object per line on stderr by default
 *   {"time":"2026-11-22T06:00:00.123Z","level":"info","component":"worker",
 *    "msg":"job completed","job_id":"simulation.42","fields":{...}}
 * or a human line with KILN_LOG_TEXT. Thread-safe: each record is written
 * with one write(2).
 */
#ifndef KILN_LOG_H
#define KILN_LOG_H

#include <jansson.h>
#include <stddef.h>

typedef enum { KILN_LOG_DEBUG, KILN_LOG_INFO, KILN_LOG_WARN, KILN_LOG_ERROR } kiln_log_level_t;
typedef enum { KILN_LOG_JSON, KILN_LOG_TEXT } kiln_log_format_t;

/* Sets the output format and the minimum level (process-wide). */
void kiln_log_configure(kiln_log_format_t format, kiln_log_level_t min_level);

/* Parses "json"/"text" and "debug"/"info"/"warn"/"error"; returns 0 or KILN_EINVAL. */
int kiln_log_format_parse(const char *text, kiln_log_format_t *out);
int kiln_log_level_parse(const char *text, kiln_log_level_t *out);

/* Writes the current UTC time as ISO 8601 with milliseconds
 * ("2026-11-22T06:00:00.123Z") into buf (size >= 32). */
void kiln_log_format_time(char *buf, size_t size);

/* Writes one record. job_id (the correlation id) may be NULL; fields may be
 * NULL and is borrowed, not stolen. Secrets must never be passed in fields. */
void kiln_log(kiln_log_level_t level, const char *component, const char *job_id, json_t *fields,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define KILN_LOG_DEBUG_(comp, ...) kiln_log(KILN_LOG_DEBUG, comp, NULL, NULL, __VA_ARGS__)
#define KILN_LOG_INFO_(comp, ...)  kiln_log(KILN_LOG_INFO, comp, NULL, NULL, __VA_ARGS__)
#define KILN_LOG_WARN_(comp, ...)  kiln_log(KILN_LOG_WARN, comp, NULL, NULL, __VA_ARGS__)
#define KILN_LOG_ERROR_(comp, ...) kiln_log(KILN_LOG_ERROR, comp, NULL, NULL, __VA_ARGS__)

#endif
