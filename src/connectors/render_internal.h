/*
 * The render connector's parts (render.c: options, processes, the job;
 * render_job.c: the argv template and the payload checks).
 */
#ifndef KILN_CONNECTORS_RENDER_INTERNAL_H
#define KILN_CONNECTORS_RENDER_INTERNAL_H

#include "kiln/connector.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#define RENDER_ARG_MAX  4096 /* bytes of one template argument */
#define RENDER_NAME_MAX 128  /* characters of payload.output_name */

/* The container formats a job may ask for, and the codec arguments that
 * {codec_args} stands for with each. */
typedef struct render_format {
    const char *name;
    const char *const *codec_args;
} render_format_t;

typedef struct render_state {
    char *name;
    char **argv;   /* the template */
    char *ffmpeg;  /* argv[0] resolved */
    char *ffprobe; /* NULL: the duration comes from ffmpeg's stderr */
    char **envp;
    char *outputs_dir, *temp_dir, *inputs_dir; /* absolute, resolved */
    int64_t timeout_ms, kill_grace_ms, width, height, fps;
    const render_format_t *format;
} render_state_t;

/* One job's values, checked. */
typedef struct render_job {
    char input[PATH_MAX];
    char output_name[RENDER_NAME_MAX + 8];
    int64_t width, height, fps;
    const render_format_t *format;
} render_job_t;

/* The format called name ("mp4", "webm"), or NULL. */
const render_format_t *kiln_render_find_format(const char *name);

/* Checks every placeholder of a command template, and that it has {input}
 * and {output}; the program (argv[0]) takes none. Returns 0 or KILN_EINVAL
 * naming connectors.<name>.command[i] and the fix. */
int kiln_render_check_template(const kiln_connector_config_t *cfg, char **argv, kiln_err_t *err);

/* Builds a job's argv from st's template, with temp_path as {output}.
 * Caller frees with kiln_connector_free_strings; NULL when out of memory. */
char **kiln_render_expand_template(const render_state_t *st, const render_job_t *rj,
                                   const char *temp_path);

/* Records a non-retryable failure (a bad payload repeats on every attempt)
 * and returns 0, so checks read `return kiln_render_refuse(o, ...)`. When
 * the message cannot be allocated o->error stays NULL and run() reports
 * KILN_ENOMEM. */
int kiln_render_refuse(kiln_job_outcome_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses and checks the job's payload against st. Returns 1 when rj is
 * filled, 0 when o holds a (non-retryable) failure. */
int kiln_render_parse_payload(const render_state_t *st, const kiln_job_context_t *job,
                              render_job_t *rj, kiln_job_outcome_t *o);

#endif
