/*
 * The state file: what runs (name, pid, pgid, process start time), written
 * on every change, so an agent that was killed -9 and starts again can stop
 * what the previous one left running before it starts anything: no service
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

/* Upper bound on waiting for a leftover to obey its stop signal. */
#define SV_RECOVER_TERM_MAX_MS 30000
/* And for the SIGKILL that follows. */
#define SV_RECOVER_KILL_MS 5000

/* Bytes one service's entry takes at most: its name is at most 64
 * characters of [a-z0-9_-] (sv_spec.c), so it needs no escaping. */
#define SV_STATE_ENTRY_MAX 256

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
                              "\"stop_signal\":%d,\"stop_timeout_ms\":%ld}",
                              sep, svc->spec.name, (int)svc->pid, (int)svc->pid, svc->start_ticks,
                              svc->spec.stop_signal, svc->spec.stop_timeout_ms);
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

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* True when no live process remains in group/session pgid and pid is
 * gone; reaps those that are the agent's own children. */
/* pid 0: the run's main process is gone; only its group is waited for. */
static bool leftover_gone(pid_t pid, pid_t pgid)
{
    while (waitpid(-pgid, NULL, WNOHANG) > 0)
        ;
    if (pid > 0)
        waitpid(pid, NULL, WNOHANG);
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return false;
    bool gone = true;
    for (size_t i = 0; i < n && gone; i++) {
        if (procs[i].state != 'Z' &&
            (procs[i].pid == pid || procs[i].pgid == pgid || procs[i].sid == pgid))
            gone = false;
    }
    free(procs);
    return gone;
}

static bool wait_gone(pid_t pid, pid_t pgid, long bound_ms)
{
    uint64_t deadline = sv_now_ms() + (uint64_t)bound_ms;
    while (!leftover_gone(pid, pgid)) {
        if (sv_now_ms() > deadline)
            return false;
        pause_ms(10);
    }
    return true;
}

/* Stops one leftover run: its stop signal to the group, SIGKILL after its
 * stop timeout (bounded), and waits until it is gone. */
static int stop_leftover(const char *name, pid_t pid, pid_t pgid, int sig, long timeout_ms,
                         kiln_err_t *err)
{
    KILN_LOG_WARN_("supervisor",
                   "service %s: pid %d (group %d) was left running by a previous agent; "
                   "stopping it before starting anything",
                   name, (int)pid, (int)pgid);
    if (timeout_ms < 0 || timeout_ms > SV_RECOVER_TERM_MAX_MS)
        timeout_ms = SV_RECOVER_TERM_MAX_MS;
    kill(-pgid, sig);
    if (pid > 0)
        kill(pid, sig);
    if (wait_gone(pid, pgid, timeout_ms))
        return 0;
    kill(-pgid, SIGKILL);
    if (pid > 0)
        kill(pid, SIGKILL);
    if (wait_gone(pid, pgid, SV_RECOVER_KILL_MS))
        return 0;
    return kiln_err_set(err, KILN_ETIMEOUT,
                        "service %s: pid %d left by a previous agent survives SIGKILL; stop it "
                        "by hand before starting the agent",
                        name, (int)pid);
}

/* Whether a recorded run whose main process is gone left members behind:
 * live processes of its group or session started no earlier than the run.
 * While one of them lives, the group id cannot have been reused. */
static bool group_has_leftovers(pid_t pgid, unsigned long long start)
{
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return false;
    bool found = false;
    for (size_t i = 0; i < n && !found; i++)
        found = procs[i].state != 'Z' && (procs[i].pgid == pgid || procs[i].sid == pgid) &&
                procs[i].start_ticks >= start;
    free(procs);
    return found;
}

static int recover_entry(json_t *e, const char *file, kiln_err_t *err)
{
    const char *name = json_string_value(json_object_get(e, "name"));
    json_int_t pid = json_integer_value(json_object_get(e, "pid"));
    json_int_t pgid = json_integer_value(json_object_get(e, "pgid"));
    json_int_t start = json_integer_value(json_object_get(e, "start_time"));
    json_t *sig = json_object_get(e, "stop_signal");
    json_t *timeout = json_object_get(e, "stop_timeout_ms");
    if (!name || pid <= 1 || pgid <= 1)
        return kiln_err_set(err, KILN_EINVAL,
                            "state file %s: an entry lacks name, pid or pgid; fix the file, or "
                            "delete it once none of its processes runs",
                            file);
    sv_procinfo_t info;
    if (sv_proc_read((pid_t)pid, &info) != 0 || info.state == 'Z' ||
        info.start_ticks != (unsigned long long)start) {
        /* The main process is gone (or its pid now belongs to another):
         * never signal that pid, but stop what is left of its group. */
        if (!group_has_leftovers((pid_t)pgid, (unsigned long long)start))
            return 0;
        pid = 0;
    }
    return stop_leftover(name, (pid_t)pid, (pid_t)pgid,
                         sig ? (int)json_integer_value(sig) : SIGTERM,
                         timeout ? (long)json_integer_value(timeout) : 10000, err);
}

static int recover_file(const char *file, kiln_err_t *err)
{
    if (access(file, F_OK) != 0)
        return 0;
    json_error_t jerr;
    json_t *root = json_load_file(file, 0, &jerr);
    json_t *list = json_object_get(root, "services");
    if (!root || !json_is_array(list)) {
        json_decref(root);
        return kiln_err_set(err, KILN_EINVAL,
                            "state file %s: not a supervisor state (%s); fix it, or delete it "
                            "once none of its processes runs",
                            file, root ? "no \"services\" array" : jerr.text);
    }
    int rc = 0;
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        if ((rc = recover_entry(e, file, err)) != 0)
            break;
    }
    json_decref(root);
    return rc;
}

/* Stops every run the state file (either copy) names that is still the
 * same process. 0, or a KILN_E* code when a leftover survives or neither
 * copy is readable (one torn by a killed agent is passed over when the
 * other reads). */
int sv_state_recover(kiln_supervisor_t *sv, kiln_err_t *err)
{
    if (!sv->state_file)
        return 0;
    char copy[4096];
    if (copy_path(sv, copy, sizeof copy) != 0)
        return kiln_err_set(err, KILN_EINVAL, "state file %s: path too long", sv->state_file);
    kiln_err_t main_err = {0}, copy_err = {0};
    int rc_main = recover_file(sv->state_file, &main_err);
    int rc_copy = recover_file(copy, &copy_err);
    int rc = 0;
    const kiln_err_t *why = NULL;
    if (rc_main == KILN_ETIMEOUT || rc_copy == KILN_ETIMEOUT)
        why = rc_main == KILN_ETIMEOUT ? &main_err : &copy_err;
    else if (rc_main && (rc_copy || access(copy, F_OK) != 0))
        why = &main_err;
    else if (rc_copy && access(sv->state_file, F_OK) != 0)
        why = &copy_err;
    if (why) {
        rc = why->code;
        if (err)
            *err = *why;
    }
    if (rc == 0)
        sv_state_write(sv);
    return rc;
}
