/*
 * What the supervisor learns from /proc and does with it: which processes
 * belong to a run (its session and group, plus descendants that left both,
 * found through parent links), signalling all of them, summing their RSS
 * and CPU, and reaping: the agent is a child subreaper, so orphans of
 * services are reparented to it and must be waited for.
 *
 * Reaping never uses waitpid(-1): children the agent starts for itself in
 * its own session (uv_spawn, nvidia-smi, probe commands) belong to whoever
 * started them, and taking their exit status would break those callers.
 * Service runs are always in another session (they setsid), and so are
 * their orphans.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/sv_internal.h"

/* Reads /proc/PID/stat. 0, or -1 when the process is gone. */
int sv_proc_read(pid_t pid, sv_procinfo_t *out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* comm may hold spaces and parentheses: the fields start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -1;
    memset(out, 0, sizeof *out);
    out->pid = pid;
    unsigned long long utime = 0, stime = 0;
    int got = sscanf(p + 2,
                     "%c %d %d %d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
                     "%llu %*u %ld",
                     &out->state, &out->ppid, &out->pgid, &out->sid, &utime, &stime,
                     &out->start_ticks, &out->rss_pages);
    if (got != 8)
        return -1;
    out->cpu_ticks = utime + stime;
    return 0;
}

static int by_pid(const void *a, const void *b)
{
    const sv_procinfo_t *x = a, *y = b;
    return (x->pid > y->pid) - (x->pid < y->pid);
}

/* Every process on the machine, sorted by pid; caller frees *out. */
int sv_proc_scan(sv_procinfo_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return KILN_EIO;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 256;
            sv_procinfo_t *grown = realloc(*out, ncap * sizeof *grown);
            if (!grown) {
                closedir(d);
                free(*out);
                *out = NULL;
                *n = 0;
                return KILN_ENOMEM;
            }
            *out = grown;
            cap = ncap;
        }
        if (sv_proc_read((pid_t)atoi(e->d_name), &(*out)[*n]) == 0)
            (*n)++;
    }
    closedir(d);
    if (*n)
        qsort(*out, *n, sizeof **out, by_pid);
    return 0;
}

static const sv_procinfo_t *find_pid(const sv_procinfo_t *procs, size_t n, pid_t pid)
{
    sv_procinfo_t key = {.pid = pid};
    return bsearch(&key, procs, n, sizeof *procs, by_pid);
}

/* The processes attributed to a run beyond its group and session. */
typedef struct run_marks {
    pid_t run; /* main pid: also its group and session id */
    sv_pid_mark_t *desc;
    size_t *n_desc;
} run_marks_t;

static bool tracked(const run_marks_t *r, const sv_procinfo_t *p)
{
    for (size_t i = 0; i < *r->n_desc; i++) {
        if (r->desc[i].pid == p->pid && r->desc[i].start_ticks == p->start_ticks)
            return true;
    }
    return false;
}

static void track(const run_marks_t *r, const sv_procinfo_t *p)
{
    if (tracked(r, p) || *r->n_desc >= SV_DESC_MAX)
        return;
    r->desc[(*r->n_desc)++] = (sv_pid_mark_t){p->pid, p->start_ticks};
}

/* Marks member[i] for every process of a run: its session and group,
 * processes it was seen to own before, and their descendants. Remembers
 * those outside session and group, which signals to the group would miss. */
static void members_of(const run_marks_t *r, const sv_procinfo_t *procs, size_t n, bool *member)
{
    pid_t run = r->run;
    for (size_t i = 0; i < n; i++)
        member[i] = run > 0 && (procs[i].sid == run || procs[i].pgid == run ||
                                procs[i].pid == run || tracked(r, &procs[i]));
    for (bool grew = run > 0; grew;) {
        grew = false;
        for (size_t i = 0; i < n; i++) {
            if (member[i] || procs[i].ppid <= 1)
                continue;
            const sv_procinfo_t *parent = find_pid(procs, n, procs[i].ppid);
            if (parent && member[parent - procs]) {
                member[i] = grew = true;
                track(r, &procs[i]);
            }
        }
    }
}

/* Also persists newly found escapees: a recovery after a killed agent
 * finds them only through the state file once their parent is gone. */
static void run_members(sv_service_t *svc, const sv_procinfo_t *procs, size_t n, bool *member)
{
    run_marks_t r = {svc->pid, svc->desc, &svc->n_desc};
    size_t before = svc->n_desc;
    members_of(&r, procs, n, member);
    if (svc->n_desc != before)
        sv_state_mark_dirty(svc->sv);
}

/* Sends sig to every process of svc's current run (group, session, and
 * descendants that escaped both). */
void sv_proc_signal_run(sv_service_t *svc, int sig)
{
    if (svc->pid <= 0)
        return;
    kill(-svc->pid, sig);
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return;
    bool *member = calloc(n ? n : 1, sizeof *member);
    if (member) {
        run_members(svc, procs, n, member);
        for (size_t i = 0; i < n; i++) {
            if (member[i] && procs[i].state != 'Z')
                kill(procs[i].pid, sig);
        }
    }
    free(member);
    free(procs);
}

static sv_service_t *service_of_main(kiln_supervisor_t *sv, pid_t pid)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (sv->svcs[i]->pid == pid)
            return sv->svcs[i];
    }
    return NULL;
}

/* True when the run's main process has exited (not yet reaped). */
static bool run_exited(const sv_service_t *svc)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    return svc->pid > 0 && waitid(P_PID, (id_t)svc->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           si.si_pid == svc->pid;
}

/* Ends what is left of svc's run, whose main process has exited but is
 * not yet reaped: its group is SIGKILLed now, while the zombie holds the
 * pid (so the group id cannot have been reused). Members outside the group
 * (another group in its session, escaped descendants) are found by one
 * /proc scan SV_CLEANUP_DELAY_MS later (sv_proc_sweep), off the respawn path:
 * the scan matches the session id and the tracked descendants' start
 * times, and never touches a current run's processes. */
void sv_proc_end_run(sv_service_t *svc)
{
    if (svc->pid <= 0)
        return;
    kill(-svc->pid, SIGKILL);
    sv_ended_run_t *e = malloc(sizeof *e);
    if (!e) { /* fall back to the scan now */
        sv_proc_signal_run(svc, SIGKILL);
        return;
    }
    e->pid = svc->pid;
    e->n_desc = svc->n_desc;
    memcpy(e->desc, svc->desc, svc->n_desc * sizeof *svc->desc);
    e->next = svc->sv->ended;
    svc->sv->ended = e;
    sv_schedule_cleanup(svc->sv);
}

/* Reaps exited runs (dispatching their exits) one at a time, since an
 * exit may change the service list. */
static void reap_runs(kiln_supervisor_t *sv)
{
    for (bool found = true; found;) {
        found = false;
        for (size_t i = 0; i < sv->n_svcs && !found; i++) {
            sv_service_t *svc = sv->svcs[i];
            int status;
            if (!run_exited(svc))
                continue;
            found = true;
            sv_proc_launch_drop(svc);
            sv_proc_end_run(svc);
            while (waitpid(svc->pid, &status, 0) < 0 && errno == EINTR)
                ;
            sv_on_exit(svc, status);
        }
    }
}

/* Orphans reparented to the agent: zombies in a session other than ours. */
static void reap_orphans_scan(kiln_supervisor_t *sv)
{
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        const sv_procinfo_t *p = &procs[i];
        if (p->ppid == sv->self_pid && p->state == 'Z' && p->sid != sv->self_sid &&
            !service_of_main(sv, p->pid))
            waitpid(p->pid, NULL, WNOHANG);
    }
    free(procs);
}

/* Reaps every exited run and orphan of the agent's services. */
void sv_proc_reap(kiln_supervisor_t *sv)
{
    reap_runs(sv);
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
            return;
        if (service_of_main(sv, si.si_pid)) {
            reap_runs(sv);
            continue;
        }
        sv_procinfo_t info;
        if (sv_proc_read(si.si_pid, &info) == 0 && info.sid != sv->self_sid) {
            waitpid(si.si_pid, NULL, WNOHANG);
            continue;
        }
        /* A child someone else in this process waits for sits first in
         * line: look past it through /proc. */
        reap_orphans_scan(sv);
        return;
    }
}

/* Updates rss_kb and cpu_ticks of every run from one /proc scan. With
 * kill_orphans, also SIGKILLs what is left of ended runs (sv->ended, then
 * emptied) and orphans: processes reparented to the agent that belong to
 * no current run. */
void sv_proc_sweep(kiln_supervisor_t *sv, bool kill_orphans)
{
    sv_procinfo_t *procs;
    size_t n;
    if (sv_proc_scan(&procs, &n) != 0)
        return;
    bool *member = calloc(n ? n : 1, sizeof *member);
    bool *owned = calloc(n ? n : 1, sizeof *owned);
    long page_kb = sysconf(_SC_PAGESIZE) / 1024;
    for (size_t s = 0; member && owned && s < sv->n_svcs; s++) {
        sv_service_t *svc = sv->svcs[s];
        svc->rss_kb = 0;
        svc->cpu_ticks = 0;
        if (svc->pid <= 0)
            continue;
        run_members(svc, procs, n, member);
        for (size_t i = 0; i < n; i++) {
            if (!member[i] || procs[i].state == 'Z')
                continue;
            owned[i] = true;
            svc->rss_kb += procs[i].rss_pages * page_kb;
            svc->cpu_ticks += procs[i].cpu_ticks;
        }
    }
    while (kill_orphans && member && owned && sv->ended) {
        sv_ended_run_t *e = sv->ended;
        run_marks_t r = {e->pid, e->desc, &e->n_desc};
        members_of(&r, procs, n, member);
        for (size_t i = 0; i < n; i++) {
            if (member[i] && !owned[i] && procs[i].state != 'Z' && procs[i].pid != sv->self_pid &&
                !service_of_main(sv, procs[i].pid))
                kill(procs[i].pid, SIGKILL);
        }
        sv->ended = e->next;
        free(e);
    }
    for (size_t i = 0; kill_orphans && owned && i < n; i++) {
        const sv_procinfo_t *p = &procs[i];
        if (!owned[i] && p->ppid == sv->self_pid && p->sid != sv->self_sid && p->state != 'Z' &&
            !service_of_main(sv, p->pid))
            kill(p->pid, SIGKILL);
    }
    free(member);
    free(owned);
    free(procs);
}

/* Processes measured per run at most; past it the figures are low. */
#define SV_MEASURE_MAX 512

/* Appends the children of every thread of pid (/proc/PID/task/TID/children)
 * to list, up to SV_MEASURE_MAX. -1 when the kernel lacks these files. */
static int append_children(pid_t pid, pid_t *list, size_t *n)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0; /* gone */
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) && *n < SV_MEASURE_MAX) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%.20s/children", (int)pid, e->d_name);
        FILE *f = fopen(path, "re");
        if (!f) {
            if (errno == ENOENT && kill(pid, 0) == 0)
                rc = -1;
            continue;
        }
        int child;
        while (*n < SV_MEASURE_MAX && fscanf(f, "%d", &child) == 1)
            list[(*n)++] = (pid_t)child;
        fclose(f);
    }
    closedir(d);
    return rc;
}

static bool in_list(const pid_t *list, size_t n, pid_t pid)
{
    for (size_t i = 0; i < n; i++) {
        if (list[i] == pid)
            return true;
    }
    return false;
}

/* Sums RSS and CPU of svc's run: the main process and its descendants
 * (through the children files), tracked processes that escaped, and
 * orphans of the run now parented by the agent (agent_children). Reads
 * only these processes, never all of /proc. -1: no children files. */
static int measure_run(sv_service_t *svc, const sv_procinfo_t *orphans, size_t n_orphans,
                       pid_t *list)
{
    size_t n = 0;
    list[n++] = svc->pid;
    for (size_t i = 0; i < svc->n_desc && n < SV_MEASURE_MAX; i++)
        list[n++] = svc->desc[i].pid;
    for (size_t i = 0; i < n_orphans && n < SV_MEASURE_MAX; i++) {
        if (orphans[i].sid == svc->pid || orphans[i].pgid == svc->pid)
            list[n++] = orphans[i].pid;
    }
    long page_kb = sysconf(_SC_PAGESIZE) / 1024;
    svc->rss_kb = 0;
    svc->cpu_ticks = 0;
    for (size_t i = 0; i < n; i++) {
        sv_procinfo_t info;
        if (sv_proc_read(list[i], &info) != 0 || info.state == 'Z')
            continue;
        bool is_desc = false;
        for (size_t k = 0; k < svc->n_desc && !is_desc; k++)
            is_desc = svc->desc[k].pid == list[i];
        run_marks_t marks = {svc->pid, svc->desc, &svc->n_desc};
        if (is_desc && !tracked(&marks, &info))
            continue; /* a reused pid */
        if (!is_desc && info.sid != svc->pid && info.pgid != svc->pid) {
            /* A descendant that left the run's group and session. */
            size_t before = svc->n_desc;
            track(&marks, &info);
            if (svc->n_desc != before)
                sv_state_mark_dirty(svc->sv);
        }
        svc->rss_kb += info.rss_pages * page_kb;
        svc->cpu_ticks += info.cpu_ticks;
        size_t before = n;
        if (append_children(list[i], list, &n) != 0)
            return -1;
        /* Drop duplicates (a tracked process is also someone's child). */
        size_t kept = before;
        for (size_t k = before; k < n; k++) {
            if (!in_list(list, kept, list[k]))
                list[kept++] = list[k];
        }
        n = kept;
    }
    return 0;
}

/* Updates rss_kb and cpu_ticks of every run (with limited_only, only of
 * runs with a memory limit) from their own processes' /proc entries. */
void sv_proc_measure(kiln_supervisor_t *sv, bool limited_only)
{
    static bool no_children_files;
    pid_t *list = malloc(2 * SV_MEASURE_MAX * sizeof *list);
    sv_procinfo_t *orphans = malloc(SV_MEASURE_MAX * sizeof *orphans);
    if (!list || !orphans || no_children_files) {
        free(list);
        free(orphans);
        sv_proc_sweep(sv, false);
        return;
    }
    /* The agent's children other than the runs' main processes: orphans
     * of services, reparented to the agent (a child subreaper). */
    pid_t *agent_children = list + SV_MEASURE_MAX;
    size_t n_agent = 0, n_orphans = 0;
    append_children(sv->self_pid, agent_children, &n_agent);
    for (size_t i = 0; i < n_agent; i++) {
        if (!service_of_main(sv, agent_children[i]) &&
            sv_proc_read(agent_children[i], &orphans[n_orphans]) == 0 &&
            orphans[n_orphans].sid != sv->self_sid)
            n_orphans++;
    }
    for (size_t s = 0; s < sv->n_svcs; s++) {
        sv_service_t *svc = sv->svcs[s];
        if (limited_only && svc->spec.memory_limit_mb <= 0)
            continue;
        if (svc->pid <= 0) {
            svc->rss_kb = 0;
            svc->cpu_ticks = 0;
            continue;
        }
        if (measure_run(svc, orphans, n_orphans, list) != 0) {
            no_children_files = true;
            break;
        }
    }
    free(list);
    free(orphans);
    if (no_children_files)
        sv_proc_sweep(sv, false);
}
