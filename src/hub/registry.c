/*
 * The machine registry (kiln/hub_machines.h): what is live comes from the
 * agents' status records (kiln:machine:<id>) and the workers' records
 * (kiln:worker:<id>); what was seen before is kept in the durable hash
 * kiln:machine-registry, so a machine that went away is listed offline
 * with its last status, its workers' capabilities and its wake info.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "hub/registry_internal.h"
#include "kiln/hub_wol.h"

bool kiln_hub_machine_id_ok(const char *id)
{
    size_t len = id ? strlen(id) : 0;
    if (len == 0 || len > KILN_HUB_MACHINE_ID_MAX)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return false;
    return true;
}

redisReply *kiln_hub_command(kiln_broker_t *b, kiln_hub_error_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(b->redis, fmt, ap);
    va_end(ap);
    if (!r) {
        kiln_hub_error_set(e, 503, "unavailable", NULL, "redis: %s", b->redis->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        kiln_hub_error_set(e, 503, "unavailable", NULL, "redis: %s", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* The durable registry as {id: record}; NULL with e set on a Redis error. */
static json_t *registry_records(kiln_broker_t *b, kiln_hub_error_t *e)
{
    redisReply *r = kiln_hub_command(b, e, "HGETALL %s", KILN_HUB_REGISTRY_KEY);
    if (!r)
        return NULL;
    json_t *records = json_object();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        json_t *rec = json_loads(r->element[i + 1]->str, 0, NULL);
        if (json_is_object(rec))
            json_object_set_new(records, r->element[i]->str, rec);
        else
            json_decref(rec);
    }
    freeReplyObject(r);
    return records;
}

/* Machine ids with a recent publish (newest first), bounded. */
static int published_ids(kiln_broker_t *b, json_t *ids, kiln_hub_error_t *e)
{
    redisReply *r =
        kiln_hub_command(b, e, "ZREVRANGE kiln:machines 0 %d", KILN_HUB_MACHINES_MAX - 1);
    if (!r)
        return KILN_EREDIS;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        if (kiln_hub_machine_id_ok(r->element[i]->str))
            json_object_set_new(ids, r->element[i]->str, json_true());
    freeReplyObject(r);
    return 0;
}

/* The agent's live status of id, or NULL when it expired. */
static json_t *live_status(kiln_broker_t *b, const char *id)
{
    redisReply *r = redisCommand(b->redis, "GET kiln:machine:%s", id);
    json_t *status = r && r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;
    if (r)
        freeReplyObject(r);
    return status;
}

/* Running job ids by worker id, from the running jobs (bounded list). */
static json_t *running_by_worker(kiln_broker_t *b)
{
    json_t *jobs = NULL, *by_worker = json_object();
    kiln_job_filter_t filter = {.state = "running", .limit = 1000};
    if (kiln_broker_list_jobs(b, &filter, &jobs, NULL) != 0)
        return by_worker;
    size_t i;
    json_t *job;
    json_array_foreach(jobs, i, job)
    {
        const char *worker = json_string_value(json_object_get(job, "worker"));
        if (!worker)
            continue;
        json_t *list = json_object_get(by_worker, worker);
        if (!list)
            json_object_set_new(by_worker, worker, list = json_array());
        json_array_append(list, json_object_get(job, "id"));
    }
    json_decref(jobs);
    return by_worker;
}

/* A worker as the registry keeps it: what matching and the monitor need. */
static json_t *worker_summary(json_t *w, bool with_caps)
{
    json_t *out = json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}", "id", json_object_get(w, "id"),
                            "services", json_object_get(w, "services"), "concurrency",
                            json_object_get(w, "concurrency"), "busy", json_object_get(w, "busy"),
                            "active_windows", json_object_get(w, "active_windows"), "claiming",
                            json_object_get(w, "claiming"));
    if (out && with_caps)
        json_object_set(out, "capabilities", json_object_get(w, "capabilities"));
    return out;
}

/* busy: every worker has all its slots running (and there is one). */
static bool all_workers_busy(json_t *workers)
{
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w)
    {
        if (json_integer_value(json_object_get(w, "busy")) <
            json_integer_value(json_object_get(w, "concurrency")))
            return false;
    }
    return json_array_size(workers) > 0;
}

static json_t *specs_of(json_t *status)
{
    return json_pack("{s:O?, s:O?, s:O?, s:O?}", "cpus", json_object_get(status, "cpus"), "memory",
                     json_object_get(status, "memory"), "disk", json_object_get(status, "disk"),
                     "load", json_object_get(status, "load"));
}

/* The listed view of one machine. live_workers (borrowed) are its live
 * worker records; record (borrowed, may be NULL) its registry entry. */
static json_t *machine_view(const char *id, json_t *status, json_t *record, json_t *live_workers,
                            json_t *jobs_by_worker)
{
    bool live = status || json_array_size(live_workers) > 0;
    json_t *shown = status ? status : json_object_get(record, "last_status");
    json_t *workers = json_array(), *jobs = json_array();
    size_t i;
    json_t *w;
    json_array_foreach(live_workers, i, w)
    {
        json_array_append_new(workers, worker_summary(w, false));
        const char *worker_id = json_string_value(json_object_get(w, "id"));
        json_array_extend(jobs, json_object_get(jobs_by_worker, worker_id ? worker_id : ""));
    }
    const char *state = !live ? "offline" : all_workers_busy(live_workers) ? "busy" : "online";
    json_t *view = json_pack("{s:s, s:s, s:O?, s:O?, s:O?, s:o, s:O?, s:O?, s:o, s:o, s:O?}", "id",
                             id, "state", state, "last_seen", json_object_get(record, "last_seen"),
                             "machine_type", json_object_get(shown, "machine_type"), "agent_state",
                             live ? json_object_get(shown, "state") : NULL, "specs",
                             specs_of(shown), "gpus", json_object_get(shown, "gpus"), "services",
                             json_object_get(shown, "services"), "workers", workers, "current_jobs",
                             jobs, "wake", json_object_get(record, "wake"));
    if (view && live)
        json_object_set_new(view, "last_seen", json_integer(kiln_ops_wall_ms()));
    static const char *const lists[] = {"gpus", "services"};
    for (int k = 0; view && k < 2; k++)
        if (!json_is_array(json_object_get(view, lists[k])))
            json_object_set_new(view, lists[k], json_array());
    return view;
}

/* A read rewrites an unchanged registry record at most this often (an
 * offline machine's last_seen is then up to this old). */
#define REMEMBER_EVERY_MS 10000

/* Whether the stored record already says what rec says, and was written
 * less than REMEMBER_EVERY_MS ago: a read then writes nothing. */
static bool still_current(json_t *record, json_t *rec)
{
    json_int_t seen = json_integer_value(json_object_get(record, "last_seen"));
    if (!record || kiln_ops_wall_ms() - seen >= REMEMBER_EVERY_MS)
        return false;
    static const char *const keys[] = {"last_status", "workers", "wake"};
    for (int k = 0; k < 3; k++) {
        json_t *was = json_object_get(record, keys[k]), *now = json_object_get(rec, keys[k]);
        if ((was || now) && !json_equal(was, now))
            return false;
    }
    return true;
}

/* Writes what is live of machine id into its registry record (keeping its
 * wake info), unless the record says it already (still_current); returns
 * the record as it now stands (caller owns). */
static json_t *remember(kiln_broker_t *b, const char *id, json_t *status, json_t *record,
                        json_t *live_workers)
{
    json_t *workers = json_array();
    size_t i;
    json_t *w;
    json_array_foreach(live_workers, i, w)
    {
        json_array_append_new(workers, worker_summary(w, true));
    }
    json_t *rec = json_pack("{s:O?, s:I, s:o, s:O?}", "last_status",
                            status ? status : json_object_get(record, "last_status"), "last_seen",
                            (json_int_t)kiln_ops_wall_ms(), "workers", workers, "wake",
                            json_object_get(record, "wake"));
    if (rec && still_current(record, rec)) {
        json_decref(rec);
        return json_incref(record);
    }
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    if (text)
        freeReplyObject(redisCommand(b->redis, "HSET %s %s %s", KILN_HUB_REGISTRY_KEY, id, text));
    free(text);
    return rec;
}

/* Live workers grouped by machine id: {machine: [worker records]}. */
/* The live worker records, read in two round trips (ZRANGE, then one MGET
 * of every record) rather than one GET per worker; an expired record is
 * skipped (kiln_broker_list_workers prunes the set). */
static json_t *live_workers(kiln_broker_t *b, kiln_hub_error_t *e)
{
    redisReply *ids = kiln_hub_command(b, e, "ZRANGE kiln:workers 0 %d", KILN_HUB_WORKERS_MAX - 1);
    if (!ids)
        return NULL;
    json_t *workers = json_array();
    kiln_argv_t a;
    kiln_argv_init(&a);
    kiln_argv_addf(&a, "MGET");
    for (size_t i = 0; ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++)
        kiln_argv_addf(&a, "kiln:worker:%s", ids->element[i]->str);
    size_t n = ids->type == REDIS_REPLY_ARRAY ? ids->elements : 0;
    freeReplyObject(ids);
    if (n == 0) {
        kiln_argv_free(&a);
        return workers;
    }
    kiln_err_t err = {0};
    redisReply *r = kiln_broker_command(b, &a, &err);
    if (!r) {
        json_decref(workers);
        kiln_hub_error_from(e, &err, NULL);
        return NULL;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        json_t *w = r->element[i]->type == REDIS_REPLY_STRING
                        ? json_loads(r->element[i]->str, 0, NULL)
                        : NULL;
        if (json_is_object(w))
            json_array_append(workers, w);
        json_decref(w);
    }
    freeReplyObject(r);
    return workers;
}

static json_t *workers_by_machine(kiln_broker_t *b, kiln_hub_error_t *e)
{
    json_t *workers = live_workers(b, e);
    if (!workers)
        return NULL;
    json_t *by_machine = json_object();
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w)
    {
        const char *machine = json_string_value(json_object_get(w, "machine_id"));
        if (!kiln_hub_machine_id_ok(machine))
            continue;
        json_t *list = json_object_get(by_machine, machine);
        if (!list)
            json_object_set_new(by_machine, machine, list = json_array());
        json_array_append(list, w);
    }
    json_decref(workers);
    return by_machine;
}

/* Only machine id's registry record, as {id: record} (or {}). */
static json_t *registry_record_of(kiln_broker_t *b, const char *id, kiln_hub_error_t *e)
{
    redisReply *r = kiln_hub_command(b, e, "HGET %s %s", KILN_HUB_REGISTRY_KEY, id);
    if (!r)
        return NULL;
    json_t *records = json_object();
    json_t *rec = r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;
    if (json_is_object(rec))
        json_object_set_new(records, id, rec);
    else
        json_decref(rec);
    freeReplyObject(r);
    return records;
}

/* Whether machine id has ever published a status. */
static int published_one(kiln_broker_t *b, const char *id, json_t *ids, kiln_hub_error_t *e)
{
    redisReply *r = kiln_hub_command(b, e, "ZSCORE kiln:machines %s", id);
    if (!r)
        return KILN_EREDIS;
    if (r->type == REDIS_REPLY_STRING)
        json_object_set_new(ids, id, json_true());
    freeReplyObject(r);
    return 0;
}

int kiln_hub_machines_snapshot(kiln_broker_t *b, const char *only_id, json_t **machines,
                               json_t **records, kiln_hub_error_t *e)
{
    *machines = *records = NULL;
    json_t *ids = json_object(), *by_machine = NULL, *jobs = NULL, *list = NULL;
    json_t *regs = only_id ? registry_record_of(b, only_id, e) : registry_records(b, e);
    int rc = !regs     ? KILN_EREDIS
             : only_id ? published_one(b, only_id, ids, e)
                       : published_ids(b, ids, e);
    if (rc != 0 || !(by_machine = workers_by_machine(b, e)))
        goto error;
    json_object_update(ids, regs);
    if (only_id) {
        if (json_object_get(by_machine, only_id))
            json_object_set_new(ids, only_id, json_true());
    } else {
        json_object_update(ids, by_machine);
    }
    jobs = running_by_worker(b);
    list = json_array();
    const char *id;
    json_t *unused;
    json_object_foreach(ids, id, unused)
    {
        if (json_array_size(list) >= KILN_HUB_MACHINES_MAX)
            break;
        json_t *status = live_status(b, id), *record = json_object_get(regs, id);
        json_t *workers = json_object_get(by_machine, id);
        if (status || workers) {
            json_t *fresh = remember(b, id, status, record, workers);
            if (fresh)
                json_object_set_new(regs, id, fresh);
            record = json_object_get(regs, id);
        }
        json_array_append_new(list, machine_view(id, status, record, workers, jobs));
        json_decref(status);
    }
    json_decref(ids);
    json_decref(by_machine);
    json_decref(jobs);
    *machines = list;
    *records = regs;
    return 0;
error:
    json_decref(ids);
    json_decref(regs);
    json_decref(by_machine);
    return e ? (e->status == 503 ? KILN_EREDIS : KILN_EIO) : KILN_EREDIS;
}

int kiln_hub_machine_state(kiln_broker_t *b, const char *id, char state[16], kiln_hub_error_t *e)
{
    if (!kiln_hub_machine_id_ok(id))
        return kiln_hub_error_set(e, 404, "not_found", "machine", "machine '%.128s' is unknown",
                                  id ? id : "");
    json_t *by_machine = workers_by_machine(b, e);
    if (!by_machine)
        return KILN_EREDIS;
    json_t *workers = json_object_get(by_machine, id);
    redisReply *live = kiln_hub_command(b, e, "EXISTS kiln:machine:%s", id);
    redisReply *known =
        live ? kiln_hub_command(b, e, "HEXISTS %s %s", KILN_HUB_REGISTRY_KEY, id) : NULL;
    redisReply *seen = known ? kiln_hub_command(b, e, "ZSCORE kiln:machines %s", id) : NULL;
    int rc = seen ? 0 : KILN_EREDIS;
    if (rc == 0) {
        bool online = live->integer == 1 || json_array_size(workers) > 0;
        if (!online && known->integer == 0 && seen->type == REDIS_REPLY_NIL)
            rc = kiln_hub_error_set(e, 404, "not_found", "machine",
                                    "machine '%s' is unknown: no agent or worker has reported it; "
                                    "`kiln machines` lists the known ones",
                                    id);
        snprintf(state, 16, "%s",
                 !online                     ? "offline"
                 : all_workers_busy(workers) ? "busy"
                                             : "online");
    }
    if (live)
        freeReplyObject(live);
    if (known)
        freeReplyObject(known);
    if (seen)
        freeReplyObject(seen);
    json_decref(by_machine);
    return rc;
}

static int by_id(const void *a, const void *b)
{
    return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "id")),
                  json_string_value(json_object_get(*(json_t *const *)b, "id")));
}

int kiln_hub_machines_list(kiln_broker_t *b, json_t **out, kiln_hub_error_t *e)
{
    json_t *machines, *records;
    int rc = kiln_hub_machines_snapshot(b, NULL, &machines, &records, e);
    if (rc)
        return rc;
    json_decref(records);
    size_t n = json_array_size(machines);
    json_t **items = calloc(n ? n : 1, sizeof *items);
    for (size_t i = 0; items && i < n; i++)
        items[i] = json_incref(json_array_get(machines, i));
    if (items)
        qsort(items, n, sizeof *items, by_id);
    json_array_clear(machines);
    for (size_t i = 0; items && i < n; i++)
        json_array_append_new(machines, items[i]);
    free(items);
    *out = machines;
    return 0;
}

int kiln_hub_machines_get(kiln_broker_t *b, const char *id, json_t **out, kiln_hub_error_t *e)
{
    *out = NULL;
    if (!kiln_hub_machine_id_ok(id))
        return kiln_hub_error_set(e, 404, "not_found", "machine", "machine '%.128s' is unknown",
                                  id ? id : "");
    json_t *machines, *records;
    int rc = kiln_hub_machines_snapshot(b, id, &machines, &records, e);
    if (rc)
        return rc;
    json_decref(records);
    size_t i;
    json_t *m;
    json_array_foreach(machines, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "id")), id) == 0)
            *out = json_incref(m);
    }
    json_decref(machines);
    if (!*out)
        return kiln_hub_error_set(e, 404, "not_found", "machine",
                                  "machine '%s' is unknown: no agent or worker has reported it; "
                                  "`kiln machines` lists the known ones",
                                  id);
    return 0;
}

int kiln_hub_machine_set_wake(kiln_broker_t *b, const char *id, const char *mac,
                              const char *address, int port, kiln_hub_error_t *e)
{
    uint8_t parsed[6];
    if (!kiln_hub_machine_id_ok(id))
        return kiln_hub_error_set(e, 400, "invalid_request", "machine",
                                  "machine: expected a name of letters, digits, '.', '_' or '-' "
                                  "(1-128), got \"%.60s\"",
                                  id ? id : "");
    int rc = kiln_wol_parse_mac(mac, "wake.mac", parsed, e);
    if (rc)
        return rc;
    if (port < 0 || port > 65535)
        return kiln_hub_error_set(e, 400, "invalid_request", "wake.port",
                                  "wake.port: expected 1-65535, got %d", port);
    json_t *records = registry_records(b, e);
    if (!records)
        return KILN_EREDIS;
    json_t *rec = json_object_get(records, id);
    rec = rec ? json_incref(rec) : json_object();
    json_object_set_new(rec, "wake",
                        json_pack("{s:s, s:s, s:i}", "mac", mac, "address",
                                  address && *address ? address : KILN_WOL_DEFAULT_ADDRESS, "port",
                                  port ? port : KILN_WOL_DEFAULT_PORT));
    char *text = json_dumps(rec, JSON_COMPACT);
    redisReply *r = kiln_hub_command(b, e, "HSET %s %s %s", KILN_HUB_REGISTRY_KEY, id, text);
    free(text);
    json_decref(rec);
    json_decref(records);
    if (!r)
        return KILN_EREDIS;
    freeReplyObject(r);
    return 0;
}

int kiln_hub_wake(kiln_broker_t *b, const char *id, json_t **out, kiln_hub_error_t *e)
{
    if (out)
        *out = NULL;
    json_t *machine = NULL;
    int rc = kiln_hub_machines_get(b, id, &machine, e);
    if (rc)
        return rc;
    json_t *wake = json_object_get(machine, "wake");
    const char *mac = json_string_value(json_object_get(wake, "mac"));
    if (!mac) {
        json_decref(machine);
        return kiln_hub_error_set(e, 409, "no_wake_info", "machine",
                                  "machine '%s' has no MAC address to wake it by; set one with "
                                  "`kiln wake %s --mac aa:bb:cc:dd:ee:ff`",
                                  id, id);
    }
    const char *address = json_string_value(json_object_get(wake, "address"));
    int port = (int)json_integer_value(json_object_get(wake, "port"));
    rc = kiln_wol_send(mac, address, port, e);
    if (rc == 0 && out)
        *out = json_pack("{s:s, s:s, s:s, s:i, s:O}", "machine", id, "mac", mac, "address",
                         address ? address : KILN_WOL_DEFAULT_ADDRESS, "port",
                         port ? port : KILN_WOL_DEFAULT_PORT, "state",
                         json_object_get(machine, "state"));
    json_decref(machine);
    return rc;
}
