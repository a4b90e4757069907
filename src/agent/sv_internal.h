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

/* One of a run's pipes (stdout, stderr, readiness fd). Holds a reference
 * on its service until closed, so output written after the exit is kept. */
typedef struct sv_pipe {
    uv_pipe_t handle;
    sv_service_t *svc;
    const char *stream; /* "stdout", "stderr", or NULL for the readiness fd */
    uint64_t run_gen;   /* the run it belongs to */
    struct sv_pipe *next;
    char buf[SV_PIPE_BUF];
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
    uv_timer_t stats_timer;
    uv_timer_t done_timer; /* calls shutdown_done from a clean stack */
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
void sv_proc_close_pipes(sv_service_t *svc);

/* sv_state.c */
void sv_state_write(kiln_supervisor_t *sv);
int sv_state_recover(kiln_supervisor_t *sv, kiln_err_t *err);

#endif
