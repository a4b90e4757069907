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

static bool tracked(const sv_service_t *svc, const sv_procinfo_t *p)
{
    for (size_t i = 0; i < svc->n_desc; i++) {
        if (svc->desc[i].pid == p->pid && svc->desc[i].start_ticks == p->start_ticks)
            return true;
    }
    return false;
}

static void track(sv_service_t *svc, const sv_procinfo_t *p)
{
    if (tracked(svc, p) || svc->n_desc >= SV_DESC_MAX)
        return;
    svc->desc[svc->n_desc++] = (sv_pid_mark_t){p->pid, p->start_ticks};
}

/* Marks member[i] for every process of svc's run: its session and group,
 * processes it was seen to own before, and their descendants. Remembers
 * those outside session and group, which signals to the group would miss. */
static void run_members(sv_service_t *svc, const sv_procinfo_t *procs, size_t n, bool *member)
{
    pid_t run = svc->pid;
    for (size_t i = 0; i < n; i++)
        member[i] = run > 0 && (procs[i].sid == run || procs[i].pgid == run ||
                                procs[i].pid == run || tracked(svc, &procs[i]));
    for (bool grew = run > 0; grew;) {
        grew = false;
        for (size_t i = 0; i < n; i++) {
            if (member[i] || procs[i].ppid <= 1)
                continue;
            const sv_procinfo_t *parent = find_pid(procs, n, procs[i].ppid);
            if (parent && member[parent - procs]) {
                member[i] = grew = true;
                track(svc, &procs[i]);
            }
        }
    }
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

/* Reaps exited runs (dispatching their exits) one at a time, since an
 * exit may change the service list. What is left of a run is SIGKILLed
 * while its main process is still a zombie: the zombie holds the pid, so
 * the group and session ids cannot have been reused by then. */
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
            sv_proc_signal_run(svc, SIGKILL);
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
 * kill_orphans, also SIGKILLs orphans of ended runs: processes reparented
 * to the agent that belong to no current run. */
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
