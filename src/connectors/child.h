/*
 * One child process of a connector (exec's program, render's ffmpeg and
 * ffprobe), run from a slot thread: spawned from an argv array (never a
 * shell) in its own process group, exec failures reported through a
 * close-on-exec pipe (as libuv does), stdin fed from a buffer or
 * /dev/null, stdout and stderr pumped to the caller's callbacks with the
 * last bytes of stderr kept in a bounded tail, and a deadline and cancel
 * that stop it with SIGTERM and then SIGKILL after a grace. One poll(2)
 * loop watches the pipes, the cancel fd, the child's pidfd and the timers,
 * so nothing busy-waits.
 *
 * The caller allocates a kiln_child_t: kiln_child_init, kiln_child_spawn,
 * kiln_child_wait, then reads stop / wait_status / tail, and
 * kiln_child_close.
 */
#ifndef KILN_CONNECTORS_CHILD_H
#define KILN_CONNECTORS_CHILD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kiln/connector.h"
#include "kiln/err.h"

/* Why the child was stopped. A caller stopping it for a reason of its own
 * (an output limit) uses KILN_CHILD_STOP_CALLER + n. */
enum {
    KILN_CHILD_STOP_NONE = 0,
    KILN_CHILD_STOP_CANCEL,   /* the job's cancel flag or fd */
    KILN_CHILD_STOP_TIMEOUT,  /* the deadline passed */
    KILN_CHILD_STOP_INTERNAL, /* kiln_child_fail: see internal_error */
    KILN_CHILD_STOP_CALLER = 16
};

typedef struct kiln_child kiln_child_t;

/* Receives a chunk the child wrote (not split into lines). Called from
 * kiln_child_wait, also after a stop (the caller decides whether output
 * that arrives then still counts). */
typedef void (*kiln_child_output_cb)(void *ctx, const char *data, size_t len);

typedef struct kiln_child_options {
    const char *path;         /* the program, an absolute path */
    char *const *argv;        /* NULL-terminated; borrowed until kiln_child_close */
    char *const *envp;        /* NULL-terminated; borrowed likewise */
    const char *cwd;          /* NULL: the worker's own */
    const char *input;        /* written to stdin, which is then closed; NULL: /dev/null */
    size_t input_len;         /* bytes of input */
    int64_t deadline_ms;      /* kiln_child_now_ms() clock; 0: none */
    int64_t kill_grace_ms;    /* SIGTERM to SIGKILL; 0: SIGKILL at once */
    size_t stderr_tail_bytes; /* how much of stderr `tail` keeps */
    const atomic_int *cancel; /* non-zero: stop; may be NULL */
    int cancel_fd;            /* readable once cancelled; -1: none */
    kiln_child_output_cb on_stdout, on_stderr; /* may be NULL: output dropped */
    void *ctx;
} kiln_child_options_t;

struct kiln_child {
    kiln_child_options_t opts;
    pid_t pid;
    int pidfd, in_fd, out_fd, err_fd, cancel_fd;
    size_t input_off;
    kiln_connector_tail_t tail; /* the last opts.stderr_tail_bytes of stderr */
    int stop;                   /* KILN_CHILD_STOP_* */
    int internal_error;         /* with KILN_CHILD_STOP_INTERNAL: a KILN_E* code */
    int64_t kill_at_ms;
    bool killed_hard, exited;
    int wait_status; /* waitpid's, once kiln_child_wait returned */
};

/* For a connector's health(): 0 when path is still an executable file,
 * else KILN_ENOTFOUND with "connectors.<name>.<key>: <path> is no longer
 * executable (<why>); reinstall it" in err. */
int kiln_child_check_program(const char *name, const char *key, const char *path, kiln_err_t *err);

/* CLOCK_MONOTONIC in milliseconds, the clock of deadline_ms. */
int64_t kiln_child_now_ms(void);

/* The tighter of a connector's timeout and a job's (either 0: none). */
int64_t kiln_child_timeout_ms(int64_t connector_timeout_ms, int64_t job_timeout_ms);

/* Prepares c to run opts (copied; what it points to is borrowed). */
void kiln_child_init(kiln_child_t *c, const kiln_child_options_t *opts);

/* Starts the child and waits until it has exec'd. Returns 0 when it runs;
 * KILN_EIO when a pipe or fork failed (the machine is short of something:
 * a retry may help), or KILN_ENOTFOUND when the child could not change
 * directory or exec (it was reaped); the message in err names the program
 * or folder and the reason. */
int kiln_child_spawn(kiln_child_t *c, kiln_err_t *err);

/* kiln_child_init, kiln_child_spawn and kiln_child_wait for a connector's
 * run(). Returns 1 when the child ran to its end (see c->stop and
 * c->wait_status), or 0 with a failure in out when it could not start:
 * retryable when the machine was short of pipes or processes, not when the
 * program could not be run (out->error stays NULL when even the message
 * could not be allocated). Close c with kiln_child_close either way. */
int kiln_child_run(kiln_child_t *c, const kiln_child_options_t *opts, kiln_job_outcome_t *out);

/* Runs the spawned child until it exits, feeding stdin and passing its
 * output on, stopping it on cancel or the deadline; then kills what is left
 * of its process group, passes on the output already written and reaps it
 * into wait_status. Blocks SIGPIPE in this thread meanwhile. */
void kiln_child_wait(kiln_child_t *c);

/* Starts stopping the child for reason (a KILN_CHILD_STOP_* value): closes
 * its stdin, sends SIGTERM to its group now and SIGKILL after the grace.
 * Only the first reason counts. Safe from an output callback. */
void kiln_child_stop(kiln_child_t *c, int reason);

/* Stops the child for an internal error (code: a negative KILN_E*), kept
 * in internal_error. */
void kiln_child_fail(kiln_child_t *c, int code);

/* How the reaped child ended, "exited with code 3" or "killed by signal 9
 * (SIGKILL)", followed by "; stderr: <the last tail_max bytes>" when it
 * wrote any. Caller frees; NULL when out of memory. */
char *kiln_child_describe_exit(const kiln_child_t *c, size_t tail_max);

/* Closes what c holds. The child must have been reaped (kiln_child_wait)
 * or never started. */
void kiln_child_close(kiln_child_t *c);

#endif
