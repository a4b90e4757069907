/*
 * End-to-end test support: a real redis-server, a broker connection, and a
 * real `kiln worker` serving one service from a kiln.yaml the test writes,
 * plus submitting jobs and waiting for their final state. The logs are
 * printed when a test ends without marking itself passed.
 */
#ifndef KILN_TEST_WORKER_H
#define KILN_TEST_WORKER_H

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "kiln/broker.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

typedef struct kiln_test_worker {
    kiln_test_redis_t redis;
    char dir[256]; /* a fresh folder for the config, logs and anything else */
    char config[320], log_path[320];
    kiln_broker_options_t opts;
    kiln_broker_t *broker;
    pid_t pid;
    kiln_test_fake_t fake; /* the outside service's fake, when started */
    bool passed;           /* set by the test's last line; otherwise the logs are dumped */
} kiln_test_worker_t;

/* Makes w->dir (call first, so the test can put files there). */
void kiln_test_worker_init(kiln_test_worker_t *w);

/* Starts KILN_TEST_FAKES_DIR/program (args NULL-terminated, may be NULL)
 * as w->fake, its log in w->dir. Call between init and start: each
 * "@FAKE@" in the yaml then stands for the fake's URL, and stop stops it
 * (dumping its log unless w->passed). */
void kiln_test_worker_start_fake(kiln_test_worker_t *w, const char *program, char *const args[]);

/* Writes yaml (with "@FAKE@" replaced, see kiln_test_worker_start_fake) as w->config, starts redis
 * and connects the broker, and spawns `kiln worker` serving connector (its name in the config) with
 * env_extra ("NAME=value", NULL-terminated, may be NULL). */
void kiln_test_worker_start(kiln_test_worker_t *w, const char *yaml, const char *connector,
                            char *const env_extra[]);

/* Stops the worker, the fake and redis, dumps the worker's log (the fake's,
 * and extra_log, may be NULL) unless w->passed, and removes w->dir. */
void kiln_test_worker_stop(kiln_test_worker_t *w, const char *extra_log);

/* Submits a job (spec JSON); id receives its id (KILN_JOB_ID_MAX bytes). */
void kiln_test_worker_submit(kiln_test_worker_t *w, const char *spec_json, char *id);

/* The job's record (caller owns). */
json_t *kiln_test_worker_job(kiln_test_worker_t *w, const char *id);

/* Waits up to 60 s for the job's final state, which must be want; returns
 * the job (caller owns). */
json_t *kiln_test_worker_wait_final(kiln_test_worker_t *w, const char *id, const char *want);

/* Submits spec_json (id receives its id), waits up to 30 s until the job's
 * progress_message is running_message, cancels it through the broker,
 * waits for its final state "cancelled", then up to 30 s until w->fake's
 * "cancels" counter is 1: the cancel reached the remote service. */
void kiln_test_worker_cancel_remote(kiln_test_worker_t *w, const char *spec_json,
                                    const char *running_message, char *id);

#endif
