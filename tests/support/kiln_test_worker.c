/*
 * End-to-end worker fixture (contract in kiln_test_worker.h).
 */
#include "kiln_test_worker.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Makes the fixture's folder (contract in kiln_test_worker.h). */
void kiln_test_worker_init(kiln_test_worker_t *w)
{
    memset(w, 0, sizeof *w);
    kiln_test_tmpdir(w->dir, sizeof w->dir);
    snprintf(w->config, sizeof w->config, "%s/kiln.yaml", w->dir);
    snprintf(w->log_path, sizeof w->log_path, "%s/worker.log", w->dir);
}

/* Starts the fake (contract in kiln_test_worker.h). */
void kiln_test_worker_start_fake(kiln_test_worker_t *w, const char *program, char *const args[])
{
    char log[320];
    snprintf(log, sizeof log, "%s/%s.log", w->dir, program);
    kiln_test_fake_start(&w->fake, program, args, log);
}

/* Writes yaml into path, each "@FAKE@" in it replaced by fake_url. */
static void write_config(const char *path, const char *yaml, const char *fake_url)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (const char *p = yaml; *p;) {
        const char *at = strstr(p, "@FAKE@");
        size_t n = at ? (size_t)(at - p) : strlen(p);
        fwrite(p, 1, n, fp);
        if (!at)
            break;
        if (!fake_url[0])
            fail_msg("the config names @FAKE@ but no fake was started");
        fputs(fake_url, fp);
        p = at + strlen("@FAKE@");
    }
    fclose(fp);
}

/* Starts redis, the broker and the worker (contract in kiln_test_worker.h). */
void kiln_test_worker_start(kiln_test_worker_t *w, const char *yaml, const char *connector,
                            char *const env_extra[])
{
    write_config(w->config, yaml, w->fake.url);

    kiln_test_redis_start(&w->redis, false);
    w->opts = (kiln_broker_options_t){
        .redis_url = w->redis.url,
        .max_payload_bytes = 1024 * 1024,
        .stream_max_len = 10000,
        .retention_age_s = 3600,
        .retention_count = 10000,
        .default_max_attempts = 3,
        .backoff_base_ms = 50,
        .backoff_max_ms = 200,
        .lease_ms = 30000,
    };
    kiln_err_t err = {0};
    if (kiln_broker_connect(&w->opts, &w->broker, &err) != 0)
        fail_msg("kiln_broker_connect %s: %s", w->redis.url, err.msg);
    char id[64];
    snprintf(id, sizeof id, "%s-1", connector);
    char *argv[] = {KILN_BIN,
                    "worker",
                    "--config",
                    w->config,
                    "--redis",
                    w->redis.url,
                    "--connectors",
                    (char *)connector,
                    "--concurrency",
                    "2",
                    "--log-format",
                    "text",
                    "--log-level",
                    "debug",
                    "--id",
                    id,
                    NULL};
    w->pid = kiln_test_spawn(argv, env_extra, w->log_path);
}

/* Stops everything (contract in kiln_test_worker.h). */
void kiln_test_worker_stop(kiln_test_worker_t *w, const char *extra_log)
{
    if (w->pid > 0)
        kiln_test_kill(w->pid, SIGTERM, 10000);
    kiln_test_fake_stop(&w->fake);
    if (!w->passed) {
        kiln_test_dump_file("worker log", w->log_path);
        if (w->fake.log_path[0])
            kiln_test_dump_file(w->fake.program, w->fake.log_path);
        if (extra_log)
            kiln_test_dump_file(extra_log, extra_log);
    }
    kiln_broker_free(w->broker);
    kiln_test_redis_destroy(&w->redis);
    char *rm[] = {"/bin/rm", "-rf", w->dir, NULL};
    kiln_test_run(rm, NULL, NULL, 0);
}

/* Submits a job (contract in kiln_test_worker.h). */
void kiln_test_worker_submit(kiln_test_worker_t *w, const char *spec_json, char *id)
{
    kiln_job_spec_t spec;
    kiln_err_t err = {0};
    if (kiln_job_spec_parse(spec_json, strlen(spec_json), w->opts.max_payload_bytes, &spec, &err) !=
        0)
        fail_msg("job spec %s refused: %s", spec_json, err.msg);
    int rc = kiln_broker_submit(w->broker, &spec, id, NULL, &err);
    kiln_job_spec_clear(&spec);
    if (rc != 0)
        fail_msg("submit %s: %s", spec_json, err.msg);
}

/* The job's record (contract in kiln_test_worker.h). */
json_t *kiln_test_worker_job(kiln_test_worker_t *w, const char *id)
{
    json_t *job = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_get_job(w->broker, id, &job, &err) != 0)
        fail_msg("get_job %s: %s", id, err.msg);
    return job;
}

typedef struct job_cond {
    kiln_test_worker_t *w;
    const char *id;
} job_cond_t;

static bool job_finished(void *ctx)
{
    job_cond_t *c = ctx;
    json_t *job = kiln_test_worker_job(c->w, c->id);
    const char *st = json_string_value(json_object_get(job, "state"));
    bool done = st && (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "dead") ||
                       !strcmp(st, "cancelled"));
    json_decref(job);
    return done;
}

/* Waits for the final state (contract in kiln_test_worker.h). */
json_t *kiln_test_worker_wait_final(kiln_test_worker_t *w, const char *id, const char *want)
{
    job_cond_t c = {w, id};
    kiln_test_wait_until(job_finished, &c, 60000);
    json_t *job = kiln_test_worker_job(w, id);
    const char *st = json_string_value(json_object_get(job, "state"));
    if (!st || strcmp(st, want) != 0) {
        char *text = json_dumps(job, JSON_INDENT(1));
        fail_msg("job %s is not %s: %s", id, want, text ? text : "(null)");
    }
    return job;
}

typedef struct message_cond {
    kiln_test_worker_t *w;
    const char *id, *message;
} message_cond_t;

static bool job_says(void *ctx)
{
    message_cond_t *c = ctx;
    json_t *job = kiln_test_worker_job(c->w, c->id);
    const char *msg = json_string_value(json_object_get(job, "progress_message"));
    bool says = msg && strcmp(msg, c->message) == 0;
    json_decref(job);
    return says;
}

static bool fake_saw_cancel(void *ctx)
{
    return kiln_test_fake_stat(&((kiln_test_worker_t *)ctx)->fake, "cancels") == 1;
}

/* Cancels a running job and waits for the fake to see it (contract in kiln_test_worker.h). */
void kiln_test_worker_cancel_remote(kiln_test_worker_t *w, const char *spec_json,
                                    const char *running_message, char *id)
{
    kiln_test_worker_submit(w, spec_json, id);
    message_cond_t c = {w, id, running_message};
    assert_true(kiln_test_wait_until(job_says, &c, 30000));
    kiln_err_t err = {0};
    assert_int_equal(kiln_broker_cancel(w->broker, id, &err), 0);
    json_decref(kiln_test_worker_wait_final(w, id, "cancelled"));
    assert_true(kiln_test_wait_until(fake_saw_cancel, w, 30000));
}
