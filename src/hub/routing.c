/* Routing of jobs pinned to a machine (kiln_hub_route_job, kiln/hub_machines.h). */
#include <stdio.h>
#include <string.h>

#include "hub/registry_internal.h"

/* on_offline: NULL (refuse), "wait", "wake" or "any". */
static int read_on_offline(json_t *job, const char **policy, kiln_hub_error_t *e)
{
    json_t *v = json_object_get(job, "on_offline");
    *policy = NULL;
    if (!v || json_is_null(v))
        return 0;
    const char *s = json_string_value(v);
    if (!s || (strcmp(s, "wait") && strcmp(s, "wake") && strcmp(s, "any")))
        return kiln_hub_error_set(e, 400, "invalid_request", "on_offline",
                                  "on_offline: expected \"wait\", \"wake\" or \"any\" (what to do "
                                  "when the pinned machine is offline)");
    *policy = s;
    return 0;
}

int kiln_hub_route_job(kiln_broker_t *b, json_t *job, kiln_hub_route_t *decision,
                       kiln_hub_error_t *e)
{
    memset(decision, 0, sizeof *decision);
    if (!json_is_object(job))
        return kiln_hub_error_set(e, 400, "invalid_request", NULL, "job: expected a JSON object");
    const char *policy;
    int rc = read_on_offline(job, &policy, e);
    if (rc)
        return rc;
    json_t *req = json_object_get(job, "requirements");
    json_t *pin = json_is_object(req) ? json_object_get(req, "machine") : NULL;
    if (!pin) {
        json_object_del(job, "on_offline");
        return 0;
    }
    const char *machine = json_string_value(pin);
    if (!kiln_hub_machine_id_ok(machine))
        return kiln_hub_error_set(e, 400, "invalid_request", "requirements.machine",
                                  "requirements.machine: expected a machine id (letters, digits, "
                                  "'.', '_' or '-', 1-128)");
    rc = kiln_hub_machine_state(b, machine, decision->state, e);
    if (rc) {
        if (e && e->status == 404)
            snprintf(e->field, sizeof e->field, "requirements.machine");
        return rc;
    }
    snprintf(decision->machine, sizeof decision->machine, "%s", machine);
    if (strcmp(decision->state, "offline") != 0 || (policy && !strcmp(policy, "wait"))) {
        decision->waits = strcmp(decision->state, "offline") == 0;
    } else if (!policy) {
        return kiln_hub_error_set(e, 409, "machine_offline", "requirements.machine",
                                  "machine '%s' is offline; send on_offline \"wait\" to queue "
                                  "for it, \"wake\" to wake it, or \"any\" to run anywhere",
                                  machine);
    } else if (!strcmp(policy, "wake")) {
        rc = kiln_hub_wake(b, machine, NULL, e);
        if (rc)
            return rc;
        decision->woke = decision->waits = true;
    } else {
        json_object_del(req, "machine");
        decision->pin_dropped = true;
    }
    json_object_del(job, "on_offline");
    return 0;
}
