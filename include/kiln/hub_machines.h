/*
 * The hub's machine registry, routing of pinned jobs, waking machines and
 * explaining why a job waits. Library calls for the hub server (and the
 * CLI): each takes the caller's broker connection (one per thread), returns
 * 0 or a negative KILN_E* code, and on error fills a kiln_hub_error_t the
 * server can send as {"error": {code, message, field}} with its status.
 *
 * Redis keys (besides what the agent and workers write):
 *   kiln:machine-registry   hash: machine id -> JSON of what was last seen
 *                           ({"last_status", "last_seen", "workers"}) and
 *                           how to wake it ({"wake": {mac, address, port}}).
 *                           Durable (no TTL): an offline machine stays known.
 */
#ifndef KILN_HUB_MACHINES_H
#define KILN_HUB_MACHINES_H

#include <jansson.h>
#include <stdbool.h>

#include "kiln/broker.h"
#include "kiln/hub_error.h"

#define KILN_HUB_REGISTRY_KEY   "kiln:machine-registry"
#define KILN_HUB_MACHINES_MAX   1000  /* machines listed; the newest seen first */
#define KILN_HUB_WORKERS_MAX    10000 /* live workers read per call */
#define KILN_HUB_MACHINE_ID_MAX 128

/* Every known machine as a JSON array sorted by id; each
 *   {"id", "state": "online"|"busy"|"offline", "last_seen" (ms),
 *    "machine_type", "agent_state", "specs": {"cpus","memory","disk","load"},
 *    "gpus": [...], "services": [...], "workers": [{"id","services",
 *    "concurrency","busy","active_windows","claiming"}], "current_jobs":
 *    [job ids], "wake": {"mac","address","port"} | null}
 * online: its agent's status record is fresh, or a live worker names it;
 * busy: online and every one of its workers has all slots running;
 * offline: known from the registry, nothing live. Refreshes the durable
 * registry with what is live. Caller owns *out. */
int kiln_hub_machines_list(kiln_broker_t *b, json_t **out, kiln_hub_error_t *e);

/* One machine as above; 404 not_found (field "machine") when unknown. */
int kiln_hub_machines_get(kiln_broker_t *b, const char *id, json_t **out, kiln_hub_error_t *e);

/* Stores how to wake machine id: mac (required), address (NULL = broadcast
 * 255.255.255.255) and port (0 = 9). 400 naming wake.mac / wake.address /
 * wake.port on bad input. The machine need not have been seen yet. */
int kiln_hub_machine_set_wake(kiln_broker_t *b, const char *id, const char *mac,
                              const char *address, int port, kiln_hub_error_t *e);

/* Sends the Wake-on-LAN packet to machine id with its stored wake info.
 * *out (may be NULL) receives {"machine","mac","address","port","state"}.
 * 404 unknown machine; 409 no_wake_info when no MAC is stored. */
int kiln_hub_wake(kiln_broker_t *b, const char *id, json_t **out, kiln_hub_error_t *e);

/* ---- Routing a pinned job ------------------------------------------------ */

typedef struct kiln_hub_route {
    char machine[KILN_HUB_MACHINE_ID_MAX + 1]; /* the pinned machine, "" if none */
    char state[16];                            /* its state: online, busy, offline ("" if none) */
    bool woke;                                 /* a Wake-on-LAN packet was sent */
    bool pin_dropped; /* on_offline "any": requirements.machine was removed */
    bool waits;       /* accepted for an offline machine: it pends until it is back */
} kiln_hub_route_t;

/* Called by the server before submitting job (a job spec object, modified
 * in place): reads requirements.machine and the hub-only field on_offline
 * ("wait" | "wake" | "any"; removed from job so the broker never sees it).
 * No pin, or a pin to an online/busy machine: accepted. Pinned to an
 * offline machine: 409 conflict "machine 'desktop' is offline" unless
 * on_offline says wait (accept, it pends), wake (send Wake-on-LAN, then
 * accept; 409 no_wake_info if it cannot), or any (drop the pin). Unknown
 * machine: 404. Bad on_offline or machine: 400 naming the field. */
int kiln_hub_route_job(kiln_broker_t *b, json_t *job, kiln_hub_route_t *decision,
                       kiln_hub_error_t *e);

/* ---- Why is my job waiting? ---------------------------------------------- */

/* For job_id: {"job","state","service","waiting": bool,"summary",
 *   "workers": [{"id","machine_id","can_run": bool,"reason"}],
 *   "machines": [{"id","state","can_run": bool,"reason"}],
 *   "offline_matches": [machine ids that would run it were they online]}.
 * A worker's reason is the first requirement it fails, in the order the
 * broker's matcher checks them ("gpu_memory_gb: needs 24, has 12",
 * "models: missing sdxl", "machine: pinned to desktop"), else
 * "outside active window 22:00-06:00" or "busy: all 2 slots running".
 * Machines are judged by the capabilities their workers last had. 404
 * for an unknown job. Caller owns *out. */
int kiln_hub_explain_waiting(kiln_broker_t *b, const char *job_id, json_t **out,
                             kiln_hub_error_t *e);

#endif
