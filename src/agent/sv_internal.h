/*
 * Internal: the supervisor's shared types. supervisor.c holds the public
 * API (apply, operator commands, status), sv_machine.c the state machine,
 * sv_proc.c spawning, signalling, reaping and /proc, sv_spec.c the spec
 * helpers and validation, sv_state.c the state file. Loop thread only.
 */
#ifndef KILN_AGENT_SV_INTERNAL_H
#define KILN_AGENT_SV_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "agent/probe.h"
#include "agent/svclog.h"
#include "kiln/supervisor.h"

/* Failures remembered per service for the max_failures window. */
#define SV_FAIL_MAX 64
/* Processes outside a service's group and session that the agent still
 * attributes to it (found through parent links while the service ran). */
#define SV_DESC_MAX 64
/* Bytes read from a service's pipe at a time. */
#define SV_PIPE_BUF 16384
/* Delay of the cleanup of ended runs: long enough that the /proc scan does
 * not compete with a respawned child's start for the CPU. */
#define SV_CLEANUP_DELAY_MS 20
/* Default period of the RSS/CPU/orphan sweep. */
#define SV_STATS_INTERVAL_MS 2000

/* Events of the state machine (columns of the table in supervisor.h, plus
 * FAULT: the agent decided to stop a run and count it as a failure). */
typedef enum {
    SV_EV_START,
    SV_EV_DEPS_READY,
    SV_EV_READY,
    SV_EV_EXIT,
    SV_EV_STOP,
    SV_EV_TIMER,
    SV_EV_FAULT,
    SV_EV_COUNT
} sv_event_t;

/* What happens once a stopping service's process is gone. */
typedef enum { SV_AFTER_DOWN, SV_AFTER_RESTART, SV_AFTER_FAILURE, SV_AFTER_REMOVE } sv_after_t;

typedef struct sv_pid_mark {
    pid_t pid;
    unsigned long long start_ticks; /* /proc/PID/stat field 22 */
} sv_pid_mark_t;

typedef struct sv_service sv_service_t;

typedef struct sv_child sv_child_t;

/* A child waiting for its "go" byte: it may exec only once the state file
 * names it. The fds are the agent's ends (-1 when absent). The child runs
 * in the agent's memory until its execve, on `child` (its stack and what
 * it reads), which is freed only once the exec pipe says it has left. */
typedef struct sv_launch {
    int go_w, exec_r, out_r, err_r, ready_r;
    bool released; /* the go byte was sent */
    sv_child_t *child;
    char path[]; /* the resolved program, for exec failure messages */
} sv_launch_t;

/* A run whose main process is gone: what is left of it (escaped
 * descendants) is killed by the next cleanup, off the respawn path. */
typedef struct sv_ended_run {
    pid_t pid; /* its group and session id */
    sv_pid_mark_t desc[SV_DESC_MAX];
    size_t n_desc;
    struct sv_ended_run *next;
} sv_ended_run_t;

/* One of a run's pipes (stdout, stderr, readiness fd). Holds a reference
 * on its service until closed, so output written after the exit is kept. */
typedef struct sv_pipe {
    uv_pipe_t handle;
    sv_service_t *svc;
    const char *stream; /* "stdout", "stderr", or NULL for the readiness fd */
    uint64_t run_gen;   /* the run it belongs to */
    struct sv_pipe *next;
} sv_pipe_t;

struct sv_service {
    kiln_supervisor_t *sv;
    kiln_svc_spec_t spec;
    kiln_svc_spec_t *next_spec; /* apply: replaces spec at the next start */
    kiln_svc_state_t state;
    int refs; /* the list's reference + open handles */

    /* The current run. */
    pid_t pid; /* 0: no process; also its group and session id */
    unsigned long long start_ticks;
    uint64_t run_gen;
    uint64_t started_ms;
    bool ready;
    sv_pid_mark_t desc[SV_DESC_MAX];
    size_t n_desc;
    sv_launch_t *launch; /* non-NULL while the child waits for release */

    /* Stopping. */
    sv_after_t after_stop;
    char fault[256]; /* why the agent ended the run; "" when it did not */

    /* Exits, failures, restarts. */
    int exit_status; /* wait status of the last exit */
    bool has_exited;
    char last_error[KILN_ERR_MSG_MAX];
    int restarts;
    int backoff_step;
    long last_delay_ms;
    uint64_t fail_ms[SV_FAIL_MAX];
    int fail_head, fail_n;
    /* Runs in a row ended by their readiness deadline: they count toward
     * max_failures whatever the window, which a deadline longer than
     * failure_window_ms would otherwise always outlast. */
    int unready_runs;
    /* Failed only because a dependency failed: started again once every
     * dependency is ready (a fixed step run again, say). */
    bool failed_for_dependency;

    /* Handles and helpers. */
    uv_timer_t timer;       /* backoff, stop timeout, start deadline */
    uv_timer_t probe_timer; /* between readiness probe attempts */
    kiln_probe_t *probe;
    sv_pipe_t *pipes;
    kiln_svclog_t *log;

    /* Stats. */
    long rss_kb;                       /* of the run's processes at the last sweep */
    unsigned long long cpu_ticks;      /* their utime + stime at the last sweep */
    unsigned long long cpu_ticks_seen; /* at the last status call */
    uint64_t cpu_seen_ms;
};

struct kiln_supervisor {
    uv_loop_t *loop;
    char *state_file;
    kiln_svclog_options_t log_opts;
    char *log_dir;
    kiln_supervisor_event_cb on_event;
    void *event_ctx;
    long stats_interval_ms;

    sv_service_t **svcs;
    size_t n_svcs, cap_svcs;

    uv_signal_t sigchld;
    uv_timer_t stats_timer; /* runs only while a service has a memory limit */
    uv_timer_t done_timer;  /* calls shutdown_done from a clean stack */
    /* Runs once before the loop next blocks, when there is work deferred
     * from this turn: one state-file write for every spawn and exit, then
     * the release of every waiting child, then the cleanup of ended runs. */
    uv_prepare_t flush;
    uv_timer_t cleanup_timer; /* kills what is left of ended runs */
    bool state_dirty;
    sv_ended_run_t *ended;
    /* Every pipe reads into this one buffer: a read is consumed (copied
     * into the log) before the next one starts, so 50 services do not
     * keep 100 idle 16 KiB buffers. Allocated with the first read. */
    char *pipe_buf;
    unsigned long state_writes; /* for tests: how often the file was written */
    int open_handles;
    bool freeing;

    bool shutting_down;
    int shutdown_depth;
    void (*shutdown_done)(void *ctx);
    void *shutdown_ctx;

    pid_t self_pid, self_sid;
    uint64_t rand_state;
};

/* sv_spec.c */
int sv_spec_copy(kiln_svc_spec_t *dst, const kiln_svc_spec_t *src);
int sv_specs_validate(const kiln_svc_spec_t *specs, size_t n, kiln_err_t *err);

/* sv_machine.c */
void sv_dispatch(sv_service_t *svc, sv_event_t ev);
void sv_on_exit(sv_service_t *svc, int wait_status);
void sv_fault(sv_service_t *svc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool sv_deps_ready(const sv_service_t *svc);
void sv_shutdown_step(kiln_supervisor_t *sv);
void sv_emit(sv_service_t *svc, const char *event, json_t *fields);
uint64_t sv_now_ms(void);

/* supervisor.c */
sv_service_t *sv_find(kiln_supervisor_t *sv, const char *name);
void sv_service_unref(sv_service_t *svc);
void sv_service_remove(sv_service_t *svc);
sv_service_t *sv_service_new(kiln_supervisor_t *sv, kiln_svc_spec_t *spec, kiln_err_t *err);
void sv_service_discard(sv_service_t *svc);

/* sv_proc.c */
typedef struct sv_procinfo {
    pid_t pid, ppid, pgid, sid;
    char state;
    unsigned long long cpu_ticks; /* utime + stime */
    unsigned long long start_ticks;
    long rss_pages;
} sv_procinfo_t;

int sv_proc_read(pid_t pid, sv_procinfo_t *out);
int sv_proc_scan(sv_procinfo_t **out, size_t *n);
int sv_proc_spawn(sv_service_t *svc, char *errbuf, size_t errlen);
void sv_proc_signal_run(sv_service_t *svc, int sig);
void sv_proc_reap(kiln_supervisor_t *sv);
void sv_proc_sweep(kiln_supervisor_t *sv, bool kill_orphans);
void sv_proc_measure(kiln_supervisor_t *sv, bool limited_only);
void sv_proc_end_run(sv_service_t *svc);
void sv_proc_close_pipes(sv_service_t *svc);
void sv_proc_release_all(kiln_supervisor_t *sv);
void sv_proc_launch_drop(sv_service_t *svc);

/* supervisor.c */
void sv_schedule_flush(kiln_supervisor_t *sv);
void sv_flush(kiln_supervisor_t *sv);
void sv_schedule_cleanup(kiln_supervisor_t *sv);
void sv_stats_timer_update(kiln_supervisor_t *sv);

/* sv_machine.c */
void sv_on_launch_failed(sv_service_t *svc, const char *reason);
void sv_on_launched(sv_service_t *svc);

/* sv_state.c */
void sv_state_write(kiln_supervisor_t *sv);
void sv_state_mark_dirty(kiln_supervisor_t *sv);
int sv_state_recover(kiln_supervisor_t *sv, kiln_err_t *err);

#endif
