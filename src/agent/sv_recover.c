/*
 * Recovery after a killed agent: before a new supervisor starts anything,
 * it stops whatever the state file (either copy, see sv_state.c) says the
 * previous agent left running, so no service ever runs twice.
 *
 * A leftover is more than a process group: a service may have children
 * that called setsid() (another group and session) and, once their parent
 * is gone, were reparented away from the dead agent. The state file names
 * those the agent had found ("escaped": [[pid, start_time], ...]); the
 * first /proc scan here adds every descendant of a leftover through parent
 * links, and each is remembered by (pid, start time), so a process that
 * is reparented to init while it is being stopped is still known, and a
 * reused pid never is.
 *
 * All leftovers are stopped together: every one gets its stop signal at
 * once, then one wait loop rescans /proc every 10 ms, SIGKILLs each
 * leftover whose own stop timeout (capped at 30 s) has passed, and ends
 * when none is left; a leftover alive 5 s after its SIGKILL is an error.
 */
#include <errno.h>
#include <signal.h>
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
/* Processes remembered per leftover (its main process, escapees and
 * descendants outside its group); past it, the group still gets signals. */
#define SV_RECOVER_TARGETS_MAX 128
/* Leftovers read from the two copies of the state file. */
#define SV_RECOVER_MAX 1024

typedef struct leftover {
    char name[65];
    pid_t pgid;               /* the run's group and session id */
    unsigned long long start; /* its main process's start time */
    int sig;
    long timeout_ms;
    sv_pid_mark_t targets[SV_RECOVER_TARGETS_MAX];
    size_t n_targets;
    uint64_t kill_at_ms; /* 0 once SIGKILL went out */
    uint64_t give_up_ms;
    bool done;
} leftover_t;

typedef struct recovery {
    leftover_t *items;
    size_t n, cap;
} recovery_t;

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static bool is_target(const leftover_t *l, const sv_procinfo_t *p)
{
    for (size_t i = 0; i < l->n_targets; i++) {
        if (l->targets[i].pid == p->pid && l->targets[i].start_ticks == p->start_ticks)
            return true;
    }
    return false;
}

static void add_target(leftover_t *l, pid_t pid, unsigned long long start)
{
    sv_procinfo_t p = {.pid = pid, .start_ticks = start};
    if (pid > 1 && l->n_targets < SV_RECOVER_TARGETS_MAX && !is_target(l, &p))
        l->targets[l->n_targets++] = (sv_pid_mark_t){pid, start};
}

/* Marks member[i] for the live processes of l in procs: its targets,
 * its group and session (processes started no earlier than the run, so a
 * reused group id is not taken for it), and their descendants, which
 * become targets. Reaps its zombies that are the agent's own children. */
static bool mark_members(leftover_t *l, const sv_procinfo_t *procs, size_t n, bool *member)
{
    bool any = false;
    pid_t self = getpid();
    for (size_t i = 0; i < n; i++) {
        const sv_procinfo_t *p = &procs[i];
        bool ours = is_target(l, p) ||
                    ((p->pgid == l->pgid || p->sid == l->pgid) && p->start_ticks >= l->start);
        if (ours && p->state == 'Z' && p->ppid == self)
            waitpid(p->pid, NULL, WNOHANG);
        member[i] = ours && p->state != 'Z';
    }
    for (bool grew = true; grew;) {
        grew = false;
        for (size_t i = 0; i < n; i++) {
            if (member[i] || procs[i].state == 'Z' || procs[i].ppid <= 1)
                continue;
            for (size_t k = 0; k < n; k++) {
                if (member[k] && procs[k].pid == procs[i].ppid) {
                    member[i] = grew = true;
                    add_target(l, procs[i].pid, procs[i].start_ticks);
                    break;
                }
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        any |= member[i];
    return any;
}

/* Sends sig to every live process of l. false when none is left. */
static bool signal_members(leftover_t *l, const sv_procinfo_t *procs, size_t n, bool *member,
                           int sig)
{
    if (!mark_members(l, procs, n, member))
        return false;
    for (size_t i = 0; sig && i < n; i++) {
        if (member[i])
            kill(procs[i].pid, sig);
    }
    return true;
}

/* One scan, one step of every leftover not done. 1: some remain. */
static int recover_step(recovery_t *r, uint64_t now, kiln_err_t *err)
{
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return kiln_err_set(err, KILN_EIO, "recovery: cannot read /proc");
    bool *member = calloc(n ? n : 1, sizeof *member);
    int rc = member ? 0 : kiln_err_set(err, KILN_ENOMEM, "recovery: out of memory");
    for (size_t i = 0; rc >= 0 && i < r->n; i++) {
        leftover_t *l = &r->items[i];
        if (l->done)
            continue;
        bool kill_now = l->kill_at_ms && now >= l->kill_at_ms;
        l->done = !signal_members(l, procs, n, member, kill_now ? SIGKILL : 0);
        if (l->done)
            continue;
        if (kill_now)
            l->kill_at_ms = 0;
        if (!l->kill_at_ms && now >= l->give_up_ms)
            rc = kiln_err_set(err, KILN_ETIMEOUT,
                              "service %s: a process left by a previous agent survives SIGKILL; "
                              "stop it by hand before starting the agent",
                              l->name);
        else
            rc = 1;
    }
    free(member);
    free(procs);
    return rc;
}

/* Adds the runs one state file names; a torn or foreign file is an error
 * naming it. */
static int load_file(recovery_t *r, const char *file, kiln_err_t *err)
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
        const char *name = json_string_value(json_object_get(e, "name"));
        json_int_t pid = json_integer_value(json_object_get(e, "pid"));
        json_int_t pgid = json_integer_value(json_object_get(e, "pgid"));
        json_t *sig = json_object_get(e, "stop_signal"),
               *timeout = json_object_get(e, "stop_timeout_ms");
        if (!name || pid <= 1 || pgid <= 1) {
            rc = kiln_err_set(err, KILN_EINVAL,
                              "state file %s: an entry lacks name, pid or pgid; fix the file, or "
                              "delete it once none of its processes runs",
                              file);
            break;
        }
        if (r->n == r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 16;
            leftover_t *grown =
                cap <= SV_RECOVER_MAX ? realloc(r->items, cap * sizeof *grown) : NULL;
            if (!grown) {
                rc = kiln_err_set(err, KILN_ENOMEM, "state file %s: too many entries", file);
                break;
            }
            r->items = grown;
            r->cap = cap;
        }
        leftover_t *l = &r->items[r->n++];
        memset(l, 0, sizeof *l);
        snprintf(l->name, sizeof l->name, "%s", name);
        l->pgid = (pid_t)pgid;
        l->sig = sig ? (int)json_integer_value(sig) : SIGTERM;
        l->timeout_ms = timeout ? (long)json_integer_value(timeout) : 10000;
        if (l->sig <= 0 || l->sig >= NSIG)
            l->sig = SIGTERM;
        if (l->timeout_ms < 0 || l->timeout_ms > SV_RECOVER_TERM_MAX_MS)
            l->timeout_ms = SV_RECOVER_TERM_MAX_MS;
        l->start = (unsigned long long)json_integer_value(json_object_get(e, "start_time"));
        add_target(l, (pid_t)pid, l->start);
        size_t k;
        json_t *mark;
        json_array_foreach(json_object_get(e, "escaped"), k, mark)
        {
            add_target(l, (pid_t)json_integer_value(json_array_get(mark, 0)),
                       (unsigned long long)json_integer_value(json_array_get(mark, 1)));
        }
    }
    json_decref(root);
    return rc;
}

/* Signals every leftover that still has a live process, then waits for
 * all of them at once. */
static int stop_all(recovery_t *r, kiln_err_t *err)
{
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return kiln_err_set(err, KILN_EIO, "recovery: cannot read /proc");
    bool *member = calloc(n ? n : 1, sizeof *member);
    uint64_t now = sv_now_ms();
    for (size_t i = 0; member && i < r->n; i++) {
        leftover_t *l = &r->items[i];
        l->done = !mark_members(l, procs, n, member);
        if (l->done)
            continue;
        KILN_LOG_WARN_("supervisor",
                       "service %s: group %d was left running by a previous agent; stopping it "
                       "before starting anything",
                       l->name, (int)l->pgid);
        signal_members(l, procs, n, member, l->sig);
        l->kill_at_ms = now + (uint64_t)l->timeout_ms;
        l->give_up_ms = l->kill_at_ms + SV_RECOVER_KILL_MS;
    }
    free(procs);
    if (!member)
        return kiln_err_set(err, KILN_ENOMEM, "recovery: out of memory");
    free(member);
    int rc;
    while ((rc = recover_step(r, sv_now_ms(), err)) == 1)
        pause_ms(10);
    return rc;
}

/* Stops every run the state file (either copy) names that still has a
 * live process: its main process if the same one (by start time), its
 * group and session, the escapees it names, and their descendants. 0, or
 * a KILN_E* code when a leftover survives or neither copy is readable
 * (one torn by a killed agent is passed over when the other reads). */
int sv_state_recover(kiln_supervisor_t *sv, kiln_err_t *err)
{
    if (!sv->state_file)
        return 0;
    char copy[4096];
    if (snprintf(copy, sizeof copy, "%s.1", sv->state_file) >= (int)sizeof copy)
        return kiln_err_set(err, KILN_EINVAL, "state file %s: path too long", sv->state_file);
    recovery_t r = {0};
    kiln_err_t main_err = {0}, copy_err = {0};
    int rc_main = load_file(&r, sv->state_file, &main_err);
    int rc_copy = load_file(&r, copy, &copy_err);
    int rc = 0;
    if (rc_main && (rc_copy || access(copy, F_OK) != 0)) {
        rc = rc_main;
        if (err)
            *err = main_err;
    } else if (rc_copy && access(sv->state_file, F_OK) != 0) {
        rc = rc_copy;
        if (err)
            *err = copy_err;
    }
    if (rc == 0 && r.n > 0)
        rc = stop_all(&r, err);
    free(r.items);
    if (rc == 0)
        sv_state_write(sv);
    return rc;
}
