/* Stopping a civetweb server without its two-second wait. */
#ifndef KILN_CORE_MG_STOP_H
#define KILN_CORE_MG_STOP_H

struct mg_context;

/* mg_stop(mg), sped up: civetweb's listening thread sees the stop flag
 * only between polls of its sockets, which time out after two seconds, so
 * a plain mg_stop takes up to 2 s. While mg_stop waits, a helper thread
 * connects to the listening address (listen: "host:port" or "port", as
 * given to civetweb; port: the port it bound) every 10 ms, which ends the
 * poll. Falls back to the plain wait when that thread cannot start. */
void kiln_mg_stop(struct mg_context *mg, const char *listen, int port);

#endif
