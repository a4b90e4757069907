/*
 * Test support for connectors that talk to an outside service: a fake of
 * the service (tests/fakes/fake_*) as a child process on a free port, a
 * counter read from its GET /fake/stats, and one job run through a
 * connector with its progress recorded and an optional cancel the way the
 * worker does it (flag, then fd) after some progress.
 */
#ifndef KILN_TEST_CONNECTOR_H
#define KILN_TEST_CONNECTOR_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "kiln/connector.h"

#define KILN_TEST_PROGRESS_MAX 256
#define KILN_TEST_MESSAGE_MAX  192

typedef struct kiln_test_fake {
    pid_t pid;
    int port;
    char url[64];
    char log_path[320];
    char program[64];
} kiln_test_fake_t;

/* Starts KILN_TEST_FAKES_DIR/program with "0" and extra_args (NULL-terminated,
 * may be NULL), its output in log_path, and waits until it prints its port.
 * Fails the test (dumping the log) when it does not. */
void kiln_test_fake_start(kiln_test_fake_t *f, const char *program, char *const extra_args[],
                          const char *log_path);

/* Stops the fake (SIGTERM) and waits for it. */
void kiln_test_fake_stop(kiln_test_fake_t *f);

/* Starts a stopped fake again on the port it had (without extra_args), its
 * output appended to the same log: the service coming back after an outage. */
void kiln_test_fake_restart(kiln_test_fake_t *f);

/* One counter of the fake's GET /fake/stats (the test fails when it has none). */
long kiln_test_fake_stat(const kiln_test_fake_t *f, const char *name);

/* One string of the fake's GET /fake/stats into out ("" when it has none). */
void kiln_test_fake_stat_text(const kiln_test_fake_t *f, const char *name, char *out, size_t size);

/* A free loopback port nothing listens on (bound, read, closed). */
int kiln_test_free_port(void);

/* A connector of type named "name" with options (borrowed); fails the test
 * when init refuses them. */
kiln_connector_t *kiln_test_connector_new(const char *type, const char *name, json_t *options);

/* The same with options (stolen) overridden and extended by the members of
 * extra (a JSON object's text; NULL: none). */
kiln_connector_t *kiln_test_connector_extended(const char *type, const char *name, json_t *options,
                                               const char *extra);

/* The same from options as JSON text, with the Redis URL the connector may
 * use (NULL: none), as the worker gives it. */
kiln_connector_t *kiln_test_connector_parse(const char *type, const char *name, const char *options,
                                            const char *redis_url);

/* Builds one expecting init to refuse options (JSON text); returns the code
 * and puts the message in msg. */
int kiln_test_connector_refused(const char *type, const char *name, const char *options, char *msg,
                                size_t size);

/* Fails the test unless kiln_test_connector_refused gives KILN_EINVAL with a
 * message holding needle; the message goes into msg for further checks. */
void kiln_test_expect_refused(const char *type, const char *name, const char *options,
                              const char *needle, char *msg, size_t size);

typedef struct kiln_test_job {
    kiln_job_outcome_t out;
    json_t *result; /* parsed result_json, or NULL */
    pthread_mutex_t lock;
    atomic_int progress_count;
    double percents[KILN_TEST_PROGRESS_MAX];
    char messages[KILN_TEST_PROGRESS_MAX][KILN_TEST_MESSAGE_MAX];
    int64_t elapsed_ms;
    int64_t cancelled_at_ms, finished_at_ms; /* cancelled_at_ms: 0 when not cancelled */
} kiln_test_job_t;

/* Runs one job (id, payload JSON, timeout_ms: 0 none) through c as a job of
 * the service named like the connector into j,
 * which must be cleared with kiln_test_job_clear. With cancel_after >= 1
 * the job is cancelled once it has reported that many progress updates;
 * with 0 it is not. */
void kiln_test_job_run(kiln_connector_t *c, const char *id, const char *payload, int64_t timeout_ms,
                       int cancel_after, kiln_test_job_t *j);

/* When kiln_test_job_run_cancelling cancels: called with the job's
 * progress so far (from another thread) until it returns true, 30 s at most. */
typedef bool (*kiln_test_cancel_when_fn)(const kiln_test_job_t *j, void *ctx);

/* Runs one job like kiln_test_job_run, cancelled (flag, then fd, as the
 * worker does) once when(j, ctx) holds; j->cancelled_at_ms says when. */
void kiln_test_job_run_cancelling(kiln_connector_t *c, const char *id, const char *payload,
                                  int64_t timeout_ms, kiln_test_cancel_when_fn when, void *ctx,
                                  kiln_test_job_t *j);

void kiln_test_job_clear(kiln_test_job_t *j);

/* Whether any progress message of j holds needle. */
bool kiln_test_job_progress_mentions(const kiln_test_job_t *j, const char *needle);

/* The last progress message j recorded ("" when none). */
const char *kiln_test_job_last_message(const kiln_test_job_t *j);

/* Fail the test unless j completed with a JSON result / failed with an
 * error holding needle and the given retryable flag. */
void kiln_test_expect_completed(const kiln_test_job_t *j);
void kiln_test_expect_failed(const kiln_test_job_t *j, bool retryable, const char *needle);

/* Points fd 2 (where kiln_log writes) at path until kiln_test_capture_end;
 * returns the saved fd to pass there. */
int kiln_test_capture_begin(const char *path);
void kiln_test_capture_end(int saved);

/* The file's first max bytes, NUL-terminated (empty when unreadable); caller frees. */
char *kiln_test_slurp(const char *path, size_t max);

/* The string member key of obj, or "" when it is missing or not a string. */
const char *kiln_test_json_str(const json_t *obj, const char *key);

/* How many entries not starting with '.' dir holds (0 when it cannot be read). */
size_t kiln_test_dir_entries(const char *dir);

#endif
