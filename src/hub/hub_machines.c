/*
 * Which machine an event is about. Stream events name the worker only when
 * a job starts; the event reader remembers each started job's machine (from
 * the worker's registry record) and adds "machine" to that job's later
 * events, so clients can follow one machine (/v1/events?machine=). A later
 * event of a job whose start it did not see (it read nothing while nobody
 * listened, or a replay starts after it) takes the worker from the job's
 * record. One table per thread that annotates (the reader; each replay);
 * both tables are bounded and overwrite their oldest entries.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "hub/hub_internal.h"

#define WORKERS_MAX 256
#define JOBS_MAX    4096

typedef struct worker_entry {
    char worker[128];
    char machine[129];
} worker_entry_t;

typedef struct job_entry {
    char job[KILN_JOB_ID_MAX];
    char machine[129];
} job_entry_t;

struct hub_machines {
    worker_entry_t workers[WORKERS_MAX];
    size_t next_worker;
    job_entry_t jobs[JOBS_MAX];
};

hub_machines_t *hub_machines_new(void)
{
    return calloc(1, sizeof(hub_machines_t));
}

void hub_machines_free(hub_machines_t *m)
{
    free(m);
}

static size_t job_slot(const char *job)
{
    size_t h = 5381;
    for (const unsigned char *c = (const unsigned char *)job; *c; c++)
        h = h * 33 + *c;
    return h % JOBS_MAX;
}

/* The machine of worker (from its registry record); "" when unknown. */
static const char *worker_machine(hub_machines_t *m, kiln_broker_t *b, const char *worker)
{
    for (size_t i = 0; i < WORKERS_MAX; i++) {
        if (m->workers[i].worker[0] && strcmp(m->workers[i].worker, worker) == 0)
            return m->workers[i].machine;
    }
    if (!b || strlen(worker) >= sizeof m->workers[0].worker)
        return "";
    redisReply *r = redisCommand(b->redis, "GET kiln:worker:%s", worker);
    json_t *info = r && r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;
    if (r)
        freeReplyObject(r);
    const char *machine = json_string_value(json_object_get(info, "machine_id"));
    if (!machine) {
        json_decref(info);
        return "";
    }
    worker_entry_t *e = &m->workers[m->next_worker++ % WORKERS_MAX];
    snprintf(e->worker, sizeof e->worker, "%s", worker);
    snprintf(e->machine, sizeof e->machine, "%s", machine);
    json_decref(info);
    return e->machine;
}

/* Whether an event of this type comes after its job started: its job has
 * (or had) a worker. */
static bool after_start(const char *type)
{
    static const char *const types[] = {"progress",        "completed", "failed", "dead",
                                        "retry_scheduled", "cancelled", NULL};
    for (size_t i = 0; type && types[i]; i++) {
        if (strcmp(type, types[i]) == 0)
            return true;
    }
    return false;
}

/* The worker of job from its record into out ("" when none or unread). */
static void job_worker(kiln_broker_t *b, const char *job, char *out, size_t size)
{
    char *worker = NULL;
    kiln_broker_job_field(b, job, "worker", &worker, NULL);
    snprintf(out, size, "%s", worker ? worker : "");
    free(worker);
}

void hub_machines_annotate(hub_machines_t *m, kiln_broker_t *b, json_t *event)
{
    const char *job = json_string_value(json_object_get(event, "job"));
    const char *worker = json_string_value(json_object_get(event, "worker"));
    if (!job || strlen(job) >= KILN_JOB_ID_MAX)
        return;
    job_entry_t *slot = &m->jobs[job_slot(job)];
    char found[sizeof m->workers[0].worker];
    if (!(worker && *worker) && strcmp(slot->job, job) != 0 && b &&
        after_start(json_string_value(json_object_get(event, "type")))) {
        /* Its start was not seen (nobody listened, or a replay begins
         * after it): the job's record names the worker. */
        job_worker(b, job, found, sizeof found);
        worker = found;
        if (!*worker) { /* remembered as machine unknown */
            snprintf(slot->job, sizeof slot->job, "%s", job);
            slot->machine[0] = '\0';
        }
    }
    if (worker && *worker) {
        const char *machine = worker_machine(m, b, worker);
        snprintf(slot->job, sizeof slot->job, "%s", job);
        snprintf(slot->machine, sizeof slot->machine, "%s", machine);
    }
    if (strcmp(slot->job, job) == 0 && slot->machine[0])
        json_object_set_new(event, "machine", json_string(slot->machine));
}
