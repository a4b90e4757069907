/* "Why is my job waiting?" (kiln_hub_explain_waiting, kiln/hub_machines.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/registry_internal.h"
#include "kiln/hub_match.h"

#define REASON_MAX 256

static bool serves(json_t *worker, const char *service)
{
    json_t *services = json_object_get(worker, "services");
    size_t i;
    json_t *s;
    json_array_foreach(services, i, s)
    {
        if (json_is_string(s) && strcmp(json_string_value(s), service) == 0)
            return true;
    }
    return false;
}

/* Judges one live worker: the first requirement it fails, else whether it
 * may claim now. Returns {"id","machine_id","can_run","reason"}. */
static json_t *judge_worker(json_t *w, json_t *req, const char *customer, bool *could_now)
{
    char reason[REASON_MAX] = "";
    bool match =
        kiln_hub_match(req, customer, json_object_get(w, "capabilities"), reason, sizeof reason);
    *could_now = false;
    if (match) {
        json_int_t busy = json_integer_value(json_object_get(w, "busy"));
        json_int_t slots = json_integer_value(json_object_get(w, "concurrency"));
        const char *windows = json_string_value(json_object_get(w, "active_windows"));
        if (json_is_false(json_object_get(w, "claiming")))
            snprintf(reason, sizeof reason, "outside active window %.200s", windows ? windows : "");
        else if (slots > 0 && busy >= slots)
            snprintf(reason, sizeof reason, "busy: all %lld slots running", (long long)slots);
        else
            *could_now = true;
    }
    return json_pack("{s:O?, s:O?, s:b, s:s}", "id", json_object_get(w, "id"), "machine_id",
                     json_object_get(w, "machine_id"), "can_run", match, "reason", reason);
}

/* Judges a machine by the capabilities its workers last reported. */
static json_t *judge_machine(json_t *machine, json_t *record, const char *service, json_t *req,
                             const char *customer, bool *matches)
{
    char reason[REASON_MAX];
    snprintf(reason, sizeof reason, "no worker for service %s seen on it", service);
    *matches = false;
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(record, "workers"), i, w)
    {
        if (!serves(w, service))
            continue;
        char why[REASON_MAX] = "";
        if (kiln_hub_match(req, customer, json_object_get(w, "capabilities"), why, sizeof why)) {
            *matches = true;
            reason[0] = '\0';
            break;
        }
        snprintf(reason, sizeof reason, "%s", why);
    }
    return json_pack("{s:O, s:O, s:b, s:s}", "id", json_object_get(machine, "id"), "state",
                     json_object_get(machine, "state"), "can_run", *matches, "reason", reason);
}

/* The one-line answer. */
static json_t *summary(const char *state, const char *service, json_t *workers, int n_match,
                       int n_now, json_t *offline)
{
    char text[1024];
    if (strcmp(state, "pending") && strcmp(state, "delayed"))
        snprintf(text, sizeof text, "the job is %s, not waiting", state);
    else if (!strcmp(state, "delayed"))
        snprintf(text, sizeof text,
                 "the job is delayed (run_at or a retry backoff); it pends "
                 "once due");
    else if (n_now > 0)
        snprintf(text, sizeof text,
                 "%d live worker(s) can run it now; it starts when its turn "
                 "comes (higher priority and older jobs first)",
                 n_now);
    else if (n_match > 0)
        snprintf(text, sizeof text,
                 "every live worker that can run it is busy or outside its "
                 "active window");
    else if (json_array_size(workers) == 0)
        snprintf(text, sizeof text, "no live worker serves %s", service);
    else
        snprintf(text, sizeof text, "no live worker meets its requirements (first: %s)",
                 json_string_value(json_object_get(json_array_get(workers, 0), "reason")));
    if (json_array_size(offline) > 0 && n_now == 0) {
        char *names = json_dumps(offline, JSON_COMPACT);
        size_t used = strlen(text);
        snprintf(text + used, sizeof text - used, "; offline machine(s) %s would run it",
                 names ? names : "");
        free(names);
    }
    return json_string(text);
}

int kiln_hub_explain_waiting(kiln_broker_t *b, const char *job_id, json_t **out,
                             kiln_hub_error_t *e)
{
    *out = NULL;
    json_t *job = NULL, *workers = NULL, *machines = NULL, *records = NULL;
    kiln_err_t err = {0};
    int rc = kiln_broker_get_job(b, job_id, &job, &err);
    if (rc)
        return kiln_hub_error_from(e, &err, "job");
    if ((rc = kiln_broker_list_workers(b, &workers, &err)) != 0) {
        json_decref(job);
        return kiln_hub_error_from(e, &err, NULL);
    }
    if ((rc = kiln_hub_machines_snapshot(b, NULL, &machines, &records, e)) != 0) {
        json_decref(job);
        json_decref(workers);
        return rc;
    }
    const char *service = json_string_value(json_object_get(job, "service"));
    const char *state = json_string_value(json_object_get(job, "state"));
    const char *customer = json_string_value(json_object_get(job, "customer_id"));
    json_t *req = json_object_get(job, "requirements");
    json_t *judged = json_array(), *judged_machines = json_array(), *offline = json_array();
    int n_match = 0, n_now = 0;
    size_t i;
    json_t *item;
    json_array_foreach(workers, i, item)
    {
        if (!serves(item, service))
            continue;
        bool now;
        json_t *verdict = judge_worker(item, req, customer, &now);
        n_match += json_is_true(json_object_get(verdict, "can_run"));
        n_now += now;
        json_array_append_new(judged, verdict);
    }
    json_array_foreach(machines, i, item)
    {
        const char *id = json_string_value(json_object_get(item, "id"));
        bool matches;
        json_array_append_new(judged_machines, judge_machine(item, json_object_get(records, id),
                                                             service, req, customer, &matches));
        if (matches && !strcmp(json_string_value(json_object_get(item, "state")), "offline"))
            json_array_append_new(offline, json_string(id));
    }
    bool waiting = !strcmp(state, "pending") || !strcmp(state, "delayed");
    *out = json_pack("{s:s, s:s, s:s, s:b, s:o, s:o, s:o, s:o}", "job", job_id, "state", state,
                     "service", service, "waiting", waiting, "summary",
                     summary(state, service, judged, n_match, n_now, offline), "workers", judged,
                     "machines", judged_machines, "offline_matches", offline);
    json_decref(job);
    json_decref(workers);
    json_decref(machines);
    json_decref(records);
    return *out ? 0 : kiln_hub_error_set(e, 500, "internal", NULL, "out of memory");
}
