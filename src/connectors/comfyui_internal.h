/*
 * Internal to the comfyui connector (comfyui.c: options, payload, the run;
 * comfyui_track.c: what the progress socket and /history say about a
 * prompt; comfyui_outputs.c: fetching and saving the outputs).
 */
#ifndef KILN_CONNECTORS_COMFYUI_INTERNAL_H
#define KILN_CONNECTORS_COMFYUI_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "http.h"
#include "kiln/connector.h"

#define COMFYUI_LOG         "comfyui"
#define COMFYUI_OUTPUTS_MAX 256 /* files listed for one prompt */
#define COMFYUI_ID_MAX      128 /* characters of a prompt id or node id */

typedef struct comfyui {
    char name[128];
    kiln_http_client_t *api;   /* JSON requests */
    kiln_http_client_t *files; /* /view downloads, bounded by max_output_bytes */
    char *base_url;            /* for the progress socket */
    char *outputs_dir;         /* NULL: outputs are listed, not downloaded */
    int64_t timeout_ms;        /* the longest one job may run here */
    int64_t poll_max_ms;       /* the longest wait between two /history polls */
    size_t max_output_bytes;
} comfyui_t;

/* What one job has learnt about its prompt so far. */
typedef struct comfyui_track {
    const json_t *workflow; /* borrowed: node id -> {"class_type", "inputs"} */
    const char *prompt_id;  /* borrowed */
    const kiln_job_context_t *job;
    size_t total;                  /* nodes in the workflow */
    size_t cached;                 /* nodes ComfyUI reused from an earlier run */
    size_t done;                   /* nodes that finished executing */
    char node[COMFYUI_ID_MAX + 1]; /* the node executing now; "" none */
    long value, max;               /* its steps, from "progress" */
    double percent;                /* the last percent reported */
    bool started, finished, failed, retryable;
    char error[768];
} comfyui_track_t;

/* Starts tracking prompt_id of workflow for job. */
void kiln_comfyui_track_init(comfyui_track_t *t, const json_t *workflow, const char *prompt_id,
                             const kiln_job_context_t *job);

/* Applies one message of the progress socket (JSON text): moves the
 * counters, reports progress to the job, and sets finished or failed (with
 * error and retryable). Messages about other prompts, unknown types and
 * text that is not JSON are ignored. */
void kiln_comfyui_track_message(comfyui_track_t *t, const char *text);

/* Reads GET /history/<prompt_id>'s answer (doc). Returns 0 while the prompt
 * is not in the history yet; 1 once it is final, with *entry borrowed from
 * doc on success or t->failed set when it ended in an error; KILN_EINVAL
 * with t->error set when the answer has an unexpected shape. */
int kiln_comfyui_track_history(comfyui_track_t *t, const json_t *doc, const json_t **entry);

/* Reports progress with a message (percent < 0: keep the last percent). */
void kiln_comfyui_track_report(comfyui_track_t *t, double percent, const char *message);

/* Fetches the files listed in a finished history entry through
 * GET /view and, with outputs_dir set, saves those of type "output" under
 * outputs_dir/<job id>/. On success *outputs is a new array of
 * {"node","kind","filename","subfolder","type","url"[,"path","bytes"]};
 * otherwise out holds the failure (0 returned) or a negative code comes
 * back (out of memory). base is the job's call (cancel, deadline). */
int kiln_comfyui_outputs_collect(const comfyui_t *cf, const kiln_job_context_t *job,
                                 const json_t *entry, const kiln_http_call_t *base,
                                 json_t **outputs, kiln_job_outcome_t *out);

#endif
