/*
 * Control requests from the hub to a machine agent, through Redis, so the
 * hub reaches agents whose machine API listens on loopback or behind NAT.
 *
 *   request  LPUSH kiln:machine-control:<machine id>
 *            {"id": "<32 hex>", "action": "restart", "service": "<name>",
 *             "deadline": <wall ms>}        (the list expires after a minute)
 *   reply    LPUSH kiln:machine-control-reply:<request id>
 *            {"status": <HTTP status>, "body": <the machine API's JSON reply>}
 *            (expires after a minute)
 *
 * The agent runs a request only before its deadline, so a request nobody
 * answered in time never runs later. Whoever may write these keys may
 * restart services: Redis access is the trust boundary here, as it is for
 * jobs; the hub lets only admin tokens send them.
 */
#ifndef KILN_MACHINE_CONTROL_H
#define KILN_MACHINE_CONTROL_H

#define KILN_MACHINE_CONTROL_PREFIX       "kiln:machine-control:"
#define KILN_MACHINE_CONTROL_REPLY_PREFIX "kiln:machine-control-reply:"
#define KILN_MACHINE_CONTROL_TTL_S        60
#define KILN_MACHINE_CONTROL_WAIT_MS      10000 /* how long the hub waits for a reply */
#define KILN_MACHINE_CONTROL_MAX_BYTES    4096  /* a request or reply is at most this */

#endif
