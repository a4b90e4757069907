/*
 * Test support for connectors that talk to a fake outside service
 * (tests/fakes/fake_*.c): starting a fake on a free port, reading its
 * /fake/stats, running one job through a connector with its progress
 * recorded and an optional cancel mid-job, capturing the log, and checking
 * outcomes.
 */
#ifndef KILN_TEST_REMOTE_H
#define KILN_TEST_REMOTE_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "kiln/connector.h"

#define KILN_TEST_PERCENTS_MAX 64

typedef struct kiln_test_fake {
    pid_t pid;
    int port;
    char url[64]; /* http://127.0.0.1:PORT */
    char log_path[320];
} kiln_test_remote_fake_t;

/* Spawns KILN_TEST_FAKES_DIR/name with "0" and args (NULL-terminated, may
 * be NULL), its output in dir/<name>-<n>.log, and waits until it prints
 * "listening on 127.0.0.1:PORT". Fails the test (dumping the log) when it
 * does not. */
void kiln_test_remote_fake_start(kiln_test_remote_fake_t *f, const char *name, const char *const args[],
                          const char *dir);
void kiln_test_remote_fake_stop(kiln_test_remote_fake_t *f);

/* One counter (or, with kiln_test_remote_fake_stat_text, a string) from GET /fake/stats. */
long kiln_test_remote_fake_stat(const kiln_test_remote_fake_t *f, const char *name);
void kiln_test_remote_fake_stat_text(const kiln_test_remote_fake_t *f, const char *name, char *out, size_t size);

typedef struct kiln_test_progress {
    pthread_mutex_t lock;
    atomic_int count;
    double percents[KILN_TEST_PERCENTS_MAX];
    char last_message[64];
    char messages[KILN_TEST_PERCENTS_MAX][32];
} kiln_test_remote_progress_t;

/* A job's run: its outcome, the progress it reported, its parsed result. */
typedef struct kiln_test_run {
    kiln_job_outcome_t out;
    kiln_test_remote_progress_t progress;
    json_t *result;
    int64_t elapsed_ms;
} kiln_test_remote_run_t;

/* Runs payload through c as job id. timeout_ms as the job's; with
 * cancel_after > 0 the job is cancelled (flag, then eventfd, as the worker
 * does) once it has reported that many progress updates. */
void kiln_test_remote_run_job(kiln_connector_t *c, const char *id, const char *payload, int64_t timeout_ms,
                       int cancel_after, kiln_test_remote_run_t *r);
void kiln_test_remote_run_clear(kiln_test_remote_run_t *r);

/* Fail the test with the outcome shown unless it matches. */
void kiln_test_remote_expect_completed(const kiln_test_remote_run_t *r);
void kiln_test_remote_expect_failed(const kiln_test_remote_run_t *r, bool retryable, const char *needle);

/* Builds a connector of type from options (JSON text); fails the test on error. */
kiln_connector_t *kiln_test_remote_connector(const char *name, const char *type, const char *options,
                                      const char *redis_url);

/* Builds it expecting failure; returns the code, the message in msg. */
int kiln_test_remote_connector_refused(const char *name, const char *type, const char *options, char *msg,
                                size_t size);

/* Points fd 2 (where kiln_log writes) at path until kiln_test_remote_capture_end. */
int kiln_test_remote_capture_begin(const char *path);
void kiln_test_remote_capture_end(int saved);

/* The file's first max bytes, NUL-terminated (caller frees). */
char *kiln_test_remote_slurp(const char *path, size_t max);

/* ---- end to end: a real `kiln worker` on a real Redis, an API fake ------------ */

#include "kiln/broker.h"
#include "kiln_test.h"

typedef struct kiln_test_api_e2e {
    kiln_test_redis_t redis;
    kiln_test_remote_fake_t fake;
    char dir[256], config[320], log_path[320];
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    pid_t worker;
    bool passed; /* set by the test's end; otherwise stop dumps the logs */
} kiln_test_api_e2e_t;

/* Starts the fake (name, args), writes kiln.yaml from yaml (each "@FAKE@"
 * in it becomes the fake's URL) into a fresh folder, starts Redis and `kiln worker
 * --connectors connector` with env (NULL-terminated "NAME=value"), and
 * connects a broker. The test fails when any of it does not start. */
void kiln_test_api_e2e_start(kiln_test_api_e2e_t *e, const char *fake_name,
                             const char *const fake_args[], const char *yaml, const char *connector,
                             char *const env[]);
/* Stops the worker, the fake and Redis, dumping the logs unless passed. */
void kiln_test_api_e2e_stop(kiln_test_api_e2e_t *e);

/* Submits a job spec (JSON text); its id goes into id (KILN_JOB_ID_MAX). */
void kiln_test_api_e2e_submit(kiln_test_api_e2e_t *e, const char *spec_json, char *id);
/* The job as the broker shows it (caller owns). */
json_t *kiln_test_api_e2e_job(kiln_test_api_e2e_t *e, const char *id);
/* Waits (60 s at most) until the job is in a final state, which must be want. */
json_t *kiln_test_api_e2e_wait(kiln_test_api_e2e_t *e, const char *id, const char *want);

#endif
