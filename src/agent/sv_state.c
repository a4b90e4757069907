/*
 * The state file: what runs (name, pid, pgid, process start time, escaped
 * descendants), written on every change, so an agent that was killed -9 and
 * starts again can stop what the previous one left running before it
 * starts anything (sv_recover.c): no service
 * ever runs twice. The start time (/proc/PID/stat field 22) tells a
 * leftover from a reused pid.
 *
 * Two copies are overwritten in place, <file>.1 then <file>: an agent
 * killed in the middle of one write leaves the other whole (the first
 * holds the new state, the second the one before, which still names every
 * released child), and recovery stops what either names. Not temporary
 * file + rename: on ext4, replacing a file by rename (or truncating it to
 * zero) makes the kernel write the new data out at once (auto_da_alloc),
 * about 1.3 ms a write on the respawn path; an in-place write costs µs.
 *
 * There is no fsync: the file has to outlive the agent, not the machine. A
 * killed agent leaves the page cache intact, and a power loss ends every
 * service with it, so nothing is left to stop. Changes made in one loop
 * turn (a burst of spawns, exits) are written once, before the loop next
 * blocks (see sv_schedule_flush); a child is released only after that.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/sv_internal.h"
#include "kiln/log.h"

/* Bytes one service's entry takes at most: its name is at most 64
 * characters of [a-z0-9_-] (sv_spec.c), so it needs no escaping; each
 * escaped process adds at most 36 ("[pid,start],"). */
#define SV_STATE_ENTRY_MAX (256 + SV_DESC_MAX * 40)

/* The state as compact JSON, formatted directly: jansson's build and dump
 * cost more than the rest of a respawn (about 0.3 ms for 50 services).
 * Caller frees; NULL when out of memory. */
static char *state_text(const kiln_supervisor_t *sv, size_t *len)
{
    size_t cap = 64 + sv->n_svcs * SV_STATE_ENTRY_MAX, n = 0;
    char *text = malloc(cap);
    if (!text)
        return NULL;
    n += (size_t)snprintf(text, cap, "{\"version\":1,\"agent_pid\":%d,\"services\":[",
                          (int)sv->self_pid);
    const char *sep = "";
    for (size_t i = 0; i < sv->n_svcs; i++) {
        const sv_service_t *svc = sv->svcs[i];
        if (svc->pid <= 0)
            continue;
        n += (size_t)snprintf(text + n, cap - n,
                              "%s{\"name\":\"%s\",\"pid\":%d,\"pgid\":%d,\"start_time\":%llu,"
                              "\"stop_signal\":%d,\"stop_timeout_ms\":%ld,\"escaped\":[",
                              sep, svc->spec.name, (int)svc->pid, (int)svc->pid, svc->start_ticks,
                              svc->spec.stop_signal, svc->spec.stop_timeout_ms);
        for (size_t k = 0; k < svc->n_desc; k++)
            n += (size_t)snprintf(text + n, cap - n, "%s[%d,%llu]", k ? "," : "",
                                  (int)svc->desc[k].pid, svc->desc[k].start_ticks);
        n += (size_t)snprintf(text + n, cap - n, "]}");
        sep = ",";
    }
    n += (size_t)snprintf(text + n, cap - n, "]}");
    *len = n;
    return text;
}

/* Overwrites path with text (never truncating it to zero first). */
static int write_in_place(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, text + done, len - done, (off_t)done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    int rc = done == len && ftruncate(fd, (off_t)len) == 0 ? 0 : -1;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int copy_path(const kiln_supervisor_t *sv, char *out, size_t len)
{
    return snprintf(out, len, "%s.1", sv->state_file) < (int)len ? 0 : -1;
}

/* Rewrites the state file (both copies) from the services' current runs.
 * Failures are logged, not returned: supervision goes on without it. */
void sv_state_write(kiln_supervisor_t *sv)
{
    if (!sv->state_file)
        return;
    sv->state_dirty = false;
    sv->state_writes++;
    char copy[4096];
    size_t len = 0;
    char *text = state_text(sv, &len);
    errno = ENOMEM;
    int rc = text && copy_path(sv, copy, sizeof copy) == 0 ? 0 : -1;
    if (rc == 0)
        rc = write_in_place(copy, text, len);
    if (rc == 0)
        rc = write_in_place(sv->state_file, text, len);
    free(text);
    if (rc == 0)
        return;
    KILN_LOG_WARN_("supervisor",
                   "cannot write state file %s: %s; check that its folder exists and is writable",
                   sv->state_file, strerror(errno));
}

/* Asks for a state-file write before the loop next blocks. */
void sv_state_mark_dirty(kiln_supervisor_t *sv)
{
    if (!sv->state_file)
        return;
    sv->state_dirty = true;
    sv_schedule_flush(sv);
}
