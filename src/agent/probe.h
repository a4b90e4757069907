/*
 * Internal: asynchronous readiness probes on a libuv loop: an HTTP GET
 * (2xx/3xx = ready), a TCP connect, or a command (exit 0 = ready), each with
 * a timeout. One probe = one attempt; the supervisor schedules repeats.
 */
#ifndef KILN_AGENT_PROBE_H
#define KILN_AGENT_PROBE_H

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

#include "kiln/supervisor.h"

typedef struct kiln_probe kiln_probe_t;

/* ok: the check passed; detail: a short human reason ("HTTP 503",
 * "connection refused", "exit 2", "timed out after 2000 ms"). */
typedef void (*kiln_probe_cb)(void *ctx, bool ok, const char *detail);

/* Starts one attempt of check on loop; cb is called exactly once (unless
 * the probe is cancelled first). *out (may be NULL) lets the caller cancel. */
/* Details: cb always runs on the loop, never inside kiln_probe_start. A
 * check that can never pass (a malformed or https URL, a bad host:port, an
 * empty COMMAND argv, an unsupported kind) is refused here with KILN_EINVAL
 * and a message naming the target; then nothing is opened and cb is not
 * called. Failures found while running (refused, timed out, "cannot run X:
 * ...") go to cb. The probe frees itself after cb returns, once its handles
 * are closed (the loop must keep running for that, as with uv_close): the
 * caller must forget it in cb. */
int kiln_probe_start(uv_loop_t *loop, const kiln_ready_check_t *check, kiln_probe_cb cb, void *ctx,
                     kiln_probe_t **out, kiln_err_t *err);

/* Cancels a probe in flight: cb is not called; resources are released. */
/* Details: a running command's process group gets SIGKILL; its exit is
 * reaped and the memory freed on the loop, so keep running it. A no-op when
 * called from inside cb; never call it after cb has returned. */
void kiln_probe_cancel(kiln_probe_t *probe);

/* The pid of a COMMAND probe's process (also its process group id) while
 * the probe is in flight; 0 for other kinds or when it could not start. */
pid_t kiln_probe_pid(const kiln_probe_t *probe);

#endif
