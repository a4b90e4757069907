/*
 * Connectors: one C module per kind of work. The worker owns one connector
 * instance per configured service and calls run() from its slot threads,
 * so run() must be safe to call concurrently on one instance.
 */
#ifndef KILN_CONNECTOR_H
#define KILN_CONNECTOR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kiln/config.h"
#include "kiln/err.h"

/* What a connector is given for one job. Everything is borrowed for the
 * duration of run(). */
typedef struct kiln_job_context {
    const char *job_id;
    const char *service;
    const char *payload_json; /* the job's payload, serialized JSON */
    int attempt;              /* 1 on the first run */
    int64_t timeout_ms;       /* 0 = none; the connector enforces it */

    /* Reports progress (percent 0-100, message may be NULL). Cheap to call
     * often: the worker coalesces updates. */
    void (*progress)(void *progress_ctx, double percent, const char *message);
    void *progress_ctx;

    /* Set to non-zero when the job must stop (cancelled, lease lost, worker
     * forced down). cancel_fd becomes readable at the same moment, so a
     * connector blocked in poll(2) can include it instead of polling the flag. */
    const atomic_int *cancel;
    int cancel_fd;
} kiln_job_context_t;

typedef enum {
    KILN_OUTCOME_COMPLETED, /* result_json holds the result */
    KILN_OUTCOME_FAILED,    /* error holds the message; retryable says if a retry may help */
    KILN_OUTCOME_CANCELLED  /* stopped because cancel was set */
} kiln_outcome_status_t;

typedef struct kiln_job_outcome {
    kiln_outcome_status_t status;
    char *result_json; /* owned (malloc); serialized JSON; NULL means null */
    char *error;       /* owned (malloc) */
    bool retryable;
} kiln_job_outcome_t;

void kiln_job_outcome_clear(kiln_job_outcome_t *out);

/* Records a failure in out (message formatted) and returns 0. */
int kiln_job_outcome_fail(kiln_job_outcome_t *out, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct kiln_connector_ops {
    const char *type;
    /* Validates cfg->options and builds the instance state. On a bad option
     * returns KILN_EINVAL naming "connectors.<name>.<option>" and the fix. */
    int (*init)(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err);
    /* Runs one job to an outcome. Returns 0 when out is filled (whatever
     * the outcome), negative only on an internal error (then out is unset). */
    int (*run)(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out);
    /* 0 when the connector can take work; otherwise an error in err. */
    int (*health)(void *state, kiln_err_t *err);
    void (*free)(void *state);
} kiln_connector_ops_t;

typedef struct kiln_connector kiln_connector_t;

/* The ops of a built-in connector type, or NULL when unknown. */
const kiln_connector_ops_t *kiln_connector_find_type(const char *type);

/* Creates the instance cfg describes. *out owned by the caller. */
int kiln_connector_new(const kiln_connector_config_t *cfg, kiln_connector_t **out, kiln_err_t *err);
int kiln_connector_run(kiln_connector_t *c, const kiln_job_context_t *job, kiln_job_outcome_t *out);
int kiln_connector_health(kiln_connector_t *c, kiln_err_t *err);
const char *kiln_connector_name(const kiln_connector_t *c);
void kiln_connector_free(kiln_connector_t *c);

/* Helpers for a connector's init(). Each reads cfg->options[key] (options
 * may be NULL), leaves *out at its default when the key is absent or null,
 * and otherwise checks type and range, returning KILN_EINVAL with
 * "connectors.<name>.<key>: expected ..., got ..." in err. */
int kiln_connector_option_int(const kiln_connector_config_t *cfg, const char *key, int64_t min,
                              int64_t max, int64_t def, int64_t *out, kiln_err_t *err);
int kiln_connector_option_number(const kiln_connector_config_t *cfg, const char *key, double min,
                                 double max, double def, double *out, kiln_err_t *err);
/* *out is borrowed from cfg->options, or NULL when the key is absent. */
int kiln_connector_option_string(const kiln_connector_config_t *cfg, const char *key,
                                 const char **out, kiln_err_t *err);

/* Logs a warning naming each option key of cfg that is not in known (a
 * NULL-terminated list; "type" is always accepted), so a typo such as
 * "timout_ms" does not pass silently. */
void kiln_connector_warn_unknown_options(const kiln_connector_config_t *cfg,
                                         const char *const known[]);

/* Writes a short rendering of value (truncated JSON, or "nothing" for NULL)
 * into buf, for the "got ..." part of an error message. */
void kiln_connector_describe_value(const json_t *value, char *buf, size_t size);

/* Fails out, not retryable, with "payload.<field>: expected <expected>,
 * got <value described>", the message a connector gives for a bad payload
 * field. Returns kiln_job_outcome_fail's code. */
int kiln_job_outcome_bad_field(kiln_job_outcome_t *out, const char *field, const char *expected,
                               const json_t *value);

/* For connectors that run programs. kiln_connector_option_argv reads
 * options[key] as a command: a non-empty array of strings whose first is
 * non-empty, copied into *out (NULL-terminated, NULL when absent; free with
 * kiln_connector_free_strings). Commands are argv arrays, never shell text. */
int kiln_connector_option_argv(const kiln_connector_config_t *cfg, const char *key, char ***out,
                               kiln_err_t *err);

/* Builds a child environment into *out: the process environment now (so a
 * later setenv elsewhere never races a spawn), overridden and extended by
 * options[key], an object of NAME: "value" strings. Free with
 * kiln_connector_free_strings. */
int kiln_connector_option_env(const kiln_connector_config_t *cfg, const char *key, char ***out,
                              kiln_err_t *err);

/* Resolves program (an absolute path, or a name searched in the absolute
 * entries of the PATH in envp, else /usr/local/bin:/usr/bin:/bin) to an
 * executable regular file; *out is malloc'd. Errors name
 * connectors.<name>.<key>. */
int kiln_connector_resolve_program(const kiln_connector_config_t *cfg, const char *key,
                                   const char *program, char *const envp[], char **out,
                                   kiln_err_t *err);

/* 0 when path is an executable regular file, else an errno value. */
int kiln_connector_check_executable(const char *path);

void kiln_connector_free_strings(char **list);

/* Replaces invalid UTF-8, DEL and control characters other than newline and
 * tab in s[0..len) by '?', so text from a child or a service can go into a
 * JSON string (an error message, a log record). */
void kiln_connector_sanitize_text(char *s, size_t len);

/* The last bytes of a stream (a child's stderr) in a ring of fixed
 * capacity, allocated on the first append. */
typedef struct kiln_connector_tail {
    char *buf;
    size_t cap, pos, used;
} kiln_connector_tail_t;

void kiln_connector_tail_init(kiln_connector_tail_t *t, size_t cap);
/* Returns 0, or KILN_ENOMEM. */
int kiln_connector_tail_append(kiln_connector_tail_t *t, const char *data, size_t len);
/* The last max bytes at most, starting at a line when it had to cut,
 * trimmed and sanitized for JSON. Caller frees; NULL when there is none. */
char *kiln_connector_tail_text(const kiln_connector_tail_t *t, size_t max);
void kiln_connector_tail_close(kiln_connector_tail_t *t);

/* Built-in types (src/connectors/). */
extern const kiln_connector_ops_t kiln_connector_simulation;
extern const kiln_connector_ops_t kiln_connector_exec;
extern const kiln_connector_ops_t kiln_connector_openai;
extern const kiln_connector_ops_t kiln_connector_render;
extern const kiln_connector_ops_t kiln_connector_playwright;
extern const kiln_connector_ops_t kiln_connector_comfyui;
extern const kiln_connector_ops_t kiln_connector_ollama;
extern const kiln_connector_ops_t kiln_connector_a1111;
extern const kiln_connector_ops_t kiln_connector_replicate;
extern const kiln_connector_ops_t kiln_connector_runpod;

#endif
