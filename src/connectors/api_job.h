/*
 * What the API connectors that run a job remotely (replicate, runpod) share:
 * polling a remote job to its end with backoff, cancelling it there when the
 * kiln job is cancelled or runs out of time, reading a percentage from log
 * text, and downloading the output files a job produced into the outputs
 * folder (through outputs.h).
 */
#ifndef KILN_CONNECTORS_API_JOB_H
#define KILN_CONNECTORS_API_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "http.h"
#include "kiln/connector.h"

#define KILN_API_POLL_MS_DEFAULT      1000
#define KILN_API_POLL_MAX_MS_DEFAULT  10000
#define KILN_API_CANCEL_TIMEOUT_MS    10000 /* the remote cancel request, after a cancel */
#define KILN_API_OUTPUT_FILES_MAX     100   /* files downloaded for one job */
#define KILN_API_OUTPUT_BYTES_DEFAULT (2ULL * 1024 * 1024 * 1024)
#define KILN_API_PATH_MAX             512
#define KILN_API_ID_MAX               128 /* characters of a remote job id */
#define KILN_API_MESSAGE_MAX          128

#define KILN_API_TIMEOUT_MAX     86400000 /* ms: timeout_ms and connect_timeout_ms */
#define KILN_API_RETRIES_DEFAULT 3

/* The options every remote-job connector reads the same way. */
typedef struct kiln_api_options {
    char *outputs_dir; /* owned; NULL: results hold output URLs only */
    uint64_t max_output_bytes;
    int64_t poll_ms, poll_max_ms;
} kiln_api_options_t;

/* Reads outputs_dir, max_output_bytes, poll_interval_ms and
 * poll_interval_max_ms into opts, and timeout_ms (default timeout_ms_default),
 * connect_timeout_ms, max_retries and max_response_bytes into hopts. On a bad
 * option returns KILN_EINVAL naming connectors.<name>.<option>. Free opts
 * with kiln_api_options_clear (also after a failure). */
int kiln_api_read_options(const kiln_connector_config_t *cfg, int64_t timeout_ms_default,
                          kiln_api_options_t *opts, kiln_http_client_options_t *hopts,
                          kiln_err_t *err);
void kiln_api_options_clear(kiln_api_options_t *opts);

/* Completes out with result (stolen): with opts->outputs_dir the URLs in
 * output are downloaded first and listed in result as "files" (null
 * otherwise). The text is redacted of the client's key, and progress 100
 * is reported with message. Returns 0 (out filled: completed, or failed or
 * cancelled by a download), or KILN_ENOMEM. */
int kiln_api_complete(const kiln_http_client_t *http, const kiln_api_options_t *opts,
                      const kiln_job_context_t *job, const json_t *output, json_t *result,
                      int64_t deadline_ms, const char *message, kiln_job_outcome_t *out);

/* Where a remote job stands, as a connector reads its status document. */
typedef enum {
    KILN_API_RUNNING,
    KILN_API_SUCCEEDED,
    KILN_API_FAILED,
    KILN_API_CANCELED /* cancelled remotely, not by this worker */
} kiln_api_phase_t;

/* Reads a status document: its phase, and the progress to show (percent
 * -1: unknown, keep the last one; message: the status or the service's own
 * words). */
typedef kiln_api_phase_t (*kiln_api_read_fn)(const json_t *doc, double *percent, char *message,
                                             size_t message_size);

typedef struct kiln_api_remote {
    const kiln_http_client_t *http;
    const kiln_job_context_t *job;
    int64_t deadline_ms;        /* CLOCK_MONOTONIC ms; 0: none */
    int64_t poll_ms;            /* first wait between polls */
    int64_t poll_max_ms;        /* the wait grows by half each unchanged poll up to this */
    const char *status_path;    /* GET, e.g. "/predictions/<id>" */
    const char *cancel_path;    /* POST, e.g. "/predictions/<id>/cancel" */
    const char *const *headers; /* extra headers of every request; may be NULL */
    kiln_api_read_fn read;
} kiln_api_remote_t;

/* Polls r->status_path from *doc (the document the create request returned,
 * owned; replaced by each poll's) until the job ends. Returns 0 with *doc
 * the final document and *phase its phase, or 0 with out filled when the
 * job stopped here: cancelled (the remote job is cancelled with a POST to
 * cancel_path first), past its deadline (likewise; retryable), or polls
 * failing past the HTTP layer's retries. Negative only on out of memory. */
int kiln_api_remote_wait(const kiln_api_remote_t *r, json_t **doc, kiln_api_phase_t *phase,
                         kiln_job_outcome_t *out);

/* POSTs path with a short deadline of its own (the job's cancel flag is set
 * by now, so it cannot be used) and logs how it went and how long it took;
 * the caller's outcome does not depend on it. */
void kiln_api_remote_cancel(const kiln_http_client_t *http, const kiln_job_context_t *job,
                            const char *path, const char *const *headers);

/* A health check: GETs path with KILN_API_CANCEL_TIMEOUT_MS for all its
 * tries. 0 on a 2xx answer, else kiln_http_call's code and message. */
int kiln_api_health_get(const kiln_http_client_t *http, const char *path, kiln_err_t *err);

/* Parses a 2xx body as a JSON object; NULL (out filled, not retryable)
 * when it is not one. what names the request in the message. */
json_t *kiln_api_parse_object(const kiln_http_result_t *res, const char *what,
                              kiln_job_outcome_t *out);

/* POSTs body (JSON text) to path for job, with headers (NULL-terminated;
 * may be NULL) and deadline_ms, and reads the answer as a new remote job:
 * a JSON object whose "id" passes kiln_api_id_ok. Returns 0 with *doc the
 * object (owned), or 0 with *doc NULL and out filled (the call failed, as
 * kiln_api_http_failure says; not an object; "<path>: the response has no
 * valid <what> id"), or KILN_ENOMEM. */
int kiln_api_remote_create(const kiln_http_client_t *http, const kiln_job_context_t *job,
                           const char *path, const char *body, const char *const *headers,
                           int64_t deadline_ms, const char *what, json_t **doc,
                           kiln_job_outcome_t *out);

/* Turns a failed kiln_http_call into the outcome (cancelled, or failed with
 * the layer's retryable verdict). Returns 0, or KILN_ENOMEM. */
int kiln_api_http_failure(const kiln_job_context_t *job, int rc, const kiln_http_result_t *res,
                          const kiln_err_t *err, kiln_job_outcome_t *out);

/* Whether id is 1-KILN_API_ID_MAX characters of [A-Za-z0-9_-], so it can
 * go into a URL path as it is. */
bool kiln_api_id_ok(const char *id);

/* The last percentage in text ("50%|####" of a tqdm bar, "step 3/10 30%"),
 * 0-100, into *percent; false when there is none. */
bool kiln_api_percent_in_text(const char *text, double *percent);

/* Downloads every http(s) URL in output (a URL string, or one found in
 * arrays and objects up to three levels down; other values are left alone) into
 * outputs_dir/<job id>/, each through a ".part" file renamed when whole, at
 * most max_bytes each and KILN_API_OUTPUT_FILES_MAX in all. *files is set
 * to a new array of {"url","path","bytes"} (owned by the caller). Returns 0
 * with *files set, or 0 with out filled (a download failed: retryable as
 * the download's error says; cancelled), or KILN_ENOMEM. */
int kiln_api_download_outputs(const json_t *output, const char *outputs_dir, uint64_t max_bytes,
                              const kiln_job_context_t *job, int64_t deadline_ms, json_t **files,
                              kiln_job_outcome_t *out);

/* Sleeps ms in poll(2) on cancel_fd (the flag checked too). Returns false
 * when cancelled meanwhile. */
bool kiln_api_sleep(const atomic_int *cancel, int cancel_fd, int64_t ms);

/* CLOCK_MONOTONIC milliseconds. */
int64_t kiln_api_now_ms(void);

#endif
