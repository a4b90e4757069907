/*
 * The hub: kiln's HTTP and WebSocket API for clients and the monitor
 * (docs/hub.md, served as OpenAPI at /openapi.json). Stateless: every job,
 * queue and event lives in Redis, so several hubs can serve side by side.
 *
 * civetweb serves requests on hub.threads threads; each thread keeps its
 * own synchronous broker connection. One reader thread per hub follows
 * every queue's event stream and fans events out to the live clients
 * (/v1/events as SSE or WebSocket, the compat client socket).
 */
#ifndef KILN_HUB_H
#define KILN_HUB_H

#include "kiln/config.h"
#include "kiln/err.h"

#define KILN_HUB_WAIT_MAX_S       60      /* GET /v1/jobs/{id}?wait= upper bound */
#define KILN_HUB_LIST_LIMIT_MAX   1000    /* GET /v1/jobs?limit= upper bound */
#define KILN_HUB_CLIENT_QUEUE_MAX 4096    /* events buffered per live client */
#define KILN_HUB_CLIENT_BYTES_MAX 4194304 /* bytes buffered per live client */
#define KILN_HUB_CURSOR_MAX       8192    /* length of an event cursor */

typedef struct kiln_hub kiln_hub_t;

/* Starts a hub from cfg (borrowed for the call; what the hub needs is
 * copied): checks Redis, starts the event reader and civetweb on
 * cfg->hub.listen. With no tokens configured the hub listens on loopback
 * only, whatever the address's host, and says so in the log. On success
 * *out owns the hub (kiln_hub_free). */
int kiln_hub_new(const kiln_config_t *cfg, kiln_hub_t **out, kiln_err_t *err);

/* The port the hub listens on (useful with port 0). */
int kiln_hub_port(const kiln_hub_t *hub);

/* "http://HOST:PORT", owned by the hub. */
const char *kiln_hub_url(const kiln_hub_t *hub);

/* Stops the hub gracefully: live streams get a last message and end,
 * in-flight requests finish, then the threads are joined. */
void kiln_hub_free(kiln_hub_t *hub);

#endif
