/* Starting and stopping a civetweb server (the hub, the machine API). */
#ifndef KILN_CORE_MG_SERVER_H
#define KILN_CORE_MG_SERVER_H

#include <stddef.h>

struct mg_callbacks;
struct mg_context;

/* mg_start2 with options (NULL-terminated name/value pairs), callbacks and
 * user_data. On success returns the server and sets *port to the first
 * port it listens on; on failure returns NULL with civetweb's reason in
 * why (why_size bytes). */
struct mg_context *kiln_mg_start(const struct mg_callbacks *callbacks, void *user_data,
                                 const char **options, int *port, char *why, size_t why_size);

/* The host a client on this machine reaches a server listening on listen
 * ("host:port" or "port") at, into host (size bytes): its host, or
 * 127.0.0.1 for a port alone or 0.0.0.0. */
void kiln_mg_local_host(const char *listen, char *host, size_t size);

/* mg_stop(mg), sped up: civetweb's listening thread sees the stop flag
 * only between polls of its sockets, which time out after two seconds, so
 * a plain mg_stop takes up to 2 s. While mg_stop waits, a helper thread
 * connects to the listening address (listen: "host:port" or "port", as
 * given to civetweb; port: the port it bound) every 10 ms, which ends the
 * poll. Falls back to the plain wait when that thread cannot start. */
void kiln_mg_stop(struct mg_context *mg, const char *listen, int port);

#endif
