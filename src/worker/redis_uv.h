/*
 * Internal: runs a hiredis async context on a libuv loop.
 *
 * Our own adapter rather than hiredis' adapters/libuv.h: that one (0.14)
 * drops poll errors, so a connect refused while Redis restarts is never
 * reported and the context hangs forever. Here an error is handed to
 * hiredis as a read/write event, which makes it find the socket error and
 * call the connect or disconnect callback.
 */
#ifndef KILN_WORKER_REDIS_UV_H
#define KILN_WORKER_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/* Attaches ac to loop. Returns 0, or -1 when out of memory or ac is
 * already attached. The adapter is freed with the context. */
int kiln_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
