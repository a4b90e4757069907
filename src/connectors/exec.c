/*
 * The exec connector: runs any program (argv, never a shell) per job. The
 * job goes to its stdin as one JSON line; it answers on stdout with NDJSON
 * progress, result and error lines (docs/connectors.md). One poll(2) loop
 * per job watches stdin, stdout, stderr, the cancel fd, the child's pidfd
 * and the deadlines, so nothing ever busy-waits.
 */
#include "kiln/connector.h"
#include "kiln/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXEC_MAX_TIMEOUT_MS  (7LL * 24 * 3600 * 1000)
#define EXEC_READ_CHUNK      32768
#define EXEC_LOG_LINE_MAX    1024
#define EXEC_FAIL_TAIL_BYTES 2048
#define EXEC_ERROR_MAX_BYTES 4096
#define EXEC_DRAIN_MAX_READS 512
#define EXEC_NO_PIDFD_TICKMS 50

typedef struct exec_state {
    char *name;
    char *path;  /* command[0] resolved to an absolute path */
    char **argv; /* command, NULL-terminated */
    char **envp; /* the environment at init plus the env option */
    char *cwd;
    int64_t timeout_ms;
    int64_t max_output_bytes;
    int64_t max_line_bytes;
    int64_t stderr_tail_bytes;
    int64_t kill_grace_ms;
} exec_state_t;

typedef enum {
    STOP_NONE,
    STOP_CANCEL,
    STOP_TIMEOUT,
    STOP_OUTPUT_LIMIT,
    STOP_LINE_LIMIT,
    STOP_INTERNAL
} exec_stop_t;

/* Everything one job's run owns: the child, its pipes and what it said. */
typedef struct exec_run {
    const exec_state_t *st;
    const kiln_job_context_t *job;
    pid_t pid;
    int pidfd, in_fd, out_fd, err_fd, cancel_fd;
    char *input;
    size_t input_len, input_off;
    char *line; /* the stdout line being assembled */
    size_t line_len, line_cap;
    int64_t stdout_bytes;
    kiln_connector_tail_t tail; /* the last stderr_tail_bytes of stderr */
    char log_line[EXEC_LOG_LINE_MAX + 1];
    size_t log_len;
    char *result_json;
    bool has_result, has_error, error_retryable;
    char *error_message;
    exec_stop_t stop;
    int internal_error;
    int64_t timeout_ms, deadline_ms, kill_at_ms;
    bool killed_hard, exited;
    int wait_status;
} exec_run_t;

/* What the child writes to the close-on-exec pipe when it cannot exec. */
typedef struct spawn_report {
    int stage;
    int error;
} spawn_report_t;

enum { SPAWN_SETUP, SPAWN_CHDIR, SPAWN_EXEC };

static const char *const known_options[] = {"command",
                                            "timeout_ms",
                                            "max_output_bytes",
                                            "max_line_bytes",
                                            "stderr_tail_bytes",
                                            "env",
                                            "cwd",
                                            "kill_grace_ms",
                                            NULL};

/* ---- small utilities ---------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* ---- options ------------------------------------------------------------ */

static int read_cwd(const kiln_connector_config_t *cfg, exec_state_t *st, kiln_err_t *err)
{
    const char *cwd;
    int rc = kiln_connector_option_string(cfg, "cwd", &cwd, err);
    if (rc < 0 || !cwd)
        return rc;
    struct stat sb;
    if (cwd[0] != '/' || stat(cwd, &sb) < 0 || !S_ISDIR(sb.st_mode))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.cwd: \"%s\" is not an existing directory given as an "
                            "absolute path",
                            cfg->name, cwd);
    st->cwd = strdup(cwd);
    return st->cwd ? 0 : kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
}

static int read_limits(const kiln_connector_config_t *cfg, exec_state_t *st, kiln_err_t *err)
{
    int rc = kiln_connector_option_int(cfg, "timeout_ms", 0, EXEC_MAX_TIMEOUT_MS, 0,
                                       &st->timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_output_bytes", 1, 1LL << 32, 8LL << 20,
                                       &st->max_output_bytes, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "max_line_bytes", 1, 1LL << 30, 1LL << 20,
                                       &st->max_line_bytes, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "stderr_tail_bytes", 0, 64LL << 20, 64LL << 10,
                                       &st->stderr_tail_bytes, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "kill_grace_ms", 0, 600000, 2000, &st->kill_grace_ms,
                                       err);
    return rc;
}

static void exec_free(void *state)
{
    exec_state_t *st = state;
    if (!st)
        return;
    free(st->name);
    free(st->path);
    free(st->cwd);
    kiln_connector_free_strings(st->argv);
    kiln_connector_free_strings(st->envp);
    free(st);
}

static int exec_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    exec_state_t *st = calloc(1, sizeof *st);
    if (!st || !(st->name = strdup(cfg->name))) {
        free(st);
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    }
    int rc = read_limits(cfg, st, err);
    if (rc == 0)
        rc = kiln_connector_option_argv(cfg, "command", &st->argv, err);
    if (rc == 0 && !st->argv)
        rc = kiln_err_set(err, KILN_EINVAL,
                          "connectors.%s.command: required; give the program and its arguments "
                          "as an array, e.g. [\"/usr/bin/python3\", \"job.py\"]",
                          cfg->name);
    if (rc == 0)
        rc = kiln_connector_option_env(cfg, "env", &st->envp, err);
    if (rc == 0)
        rc = kiln_connector_resolve_program(cfg, "command", st->argv[0], st->envp, &st->path, err);
    if (rc == 0)
        rc = read_cwd(cfg, st, err);
    if (rc < 0) {
        exec_free(st);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    *state = st;
    return 0;
}

static int exec_health(void *state, kiln_err_t *err)
{
    exec_state_t *st = state;
    int e = kiln_connector_check_executable(st->path);
    if (e)
        return kiln_err_set(err, KILN_ENOTFOUND,
                            "connectors.%s.command: %s is no longer executable (%s); reinstall it",
                            st->name, st->path, strerror(e));
    return 0;
}

/* ---- spawning --------------------------------------------------------- */

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_report(int report_fd, int stage)
{
    spawn_report_t report = {.stage = stage, .error = errno};
    ssize_t n = write(report_fd, &report, sizeof report);
    (void)n;
    _exit(127);
}

static void child_exec(const exec_state_t *st, int stdio[3], int report_fd)
{
    /* Ignored signals stay ignored across exec, and the worker may ignore
     * SIGPIPE or have blocked signals in this thread: start from defaults. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);
    }
    setpgid(0, 0);
    /* Move the pipe ends above 2 first, so one dup2 cannot clobber another. */
    for (int i = 0; i < 3; i++) {
        if (stdio[i] < 3 && (stdio[i] = fcntl(stdio[i], F_DUPFD_CLOEXEC, 3)) < 0)
            child_report(report_fd, SPAWN_SETUP);
    }
    for (int i = 0; i < 3; i++) {
        if (dup2(stdio[i], i) < 0)
            child_report(report_fd, SPAWN_SETUP);
    }
    /* Descriptors other libraries opened without O_CLOEXEC (a Redis socket)
     * must not leak into the job's program either. */
    syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
    if (st->cwd && chdir(st->cwd) < 0)
        child_report(report_fd, SPAWN_CHDIR);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(st->path, st->argv, st->envp);
    child_report(report_fd, SPAWN_EXEC);
}

static void close_pair(int p[2])
{
    close_fd(&p[0]);
    close_fd(&p[1]);
}

/* Waits for the child to exec or to report why it could not. Returns 0 when
 * it runs, else fills out (non-retryable) and reaps the child. */
static int await_exec(exec_run_t *r, int report_fd, kiln_job_outcome_t *out)
{
    spawn_report_t report;
    ssize_t n;
    do
        n = read(report_fd, &report, sizeof report);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof report)
        return 0;
    while (waitpid(r->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    r->pid = -1;
    if (report.stage == SPAWN_CHDIR)
        return kiln_job_outcome_fail(out, false, "cannot change directory to %s: %s", r->st->cwd,
                                     strerror(report.error));
    return kiln_job_outcome_fail(out, false, "cannot run %s: %s", r->st->path,
                                 strerror(report.error));
}

/* Starts the child with fresh close-on-exec pipes. Returns 0 with r->pid
 * set, 0 with out filled when it could not start, or a negative code. */
static int spawn_child(exec_run_t *r, kiln_job_outcome_t *out)
{
    int in[2] = {-1, -1}, so[2] = {-1, -1}, se[2] = {-1, -1}, report[2] = {-1, -1};
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(so, O_CLOEXEC) < 0 || pipe2(se, O_CLOEXEC) < 0 ||
        pipe2(report, O_CLOEXEC) < 0) {
        int e = errno;
        close_pair(in), close_pair(so), close_pair(se), close_pair(report);
        return kiln_job_outcome_fail(out, true, "cannot start %s: pipe: %s", r->st->path,
                                     strerror(e));
    }
    /* No signal handler may run in the child before it resets them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        int stdio[3] = {in[0], so[1], se[1]};
        child_exec(r->st, stdio, report[1]);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close_fd(&in[0]), close_fd(&so[1]), close_fd(&se[1]), close_fd(&report[1]);
    r->in_fd = in[1], r->out_fd = so[0], r->err_fd = se[0];
    if (pid < 0) {
        close_fd(&report[0]);
        return kiln_job_outcome_fail(out, true, "cannot start %s: fork: %s", r->st->path,
                                     strerror(fork_errno));
    }
    r->pid = pid;
    setpgid(pid, pid); /* also done by the child; whoever runs first wins */
    int rc = await_exec(r, report[0], out);
    close_fd(&report[0]);
    if (r->pid < 0)
        return rc;
    fcntl(r->in_fd, F_SETFL, O_NONBLOCK);
    fcntl(r->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(r->err_fd, F_SETFL, O_NONBLOCK);
    /* A pidfd tells us when the child exits even if a grandchild keeps
     * its stdout open; without one (old kernel, seccomp) we check by tick. */
    r->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    return 0;
}

/* ---- stopping ------------------------------------------------------------ */

static void signal_child(exec_run_t *r, int sig)
{
    kill(-r->pid, sig);
    if (getpgid(r->pid) != r->pid) /* it left its group: signal it too */
        kill(r->pid, sig);
}

/* Starts stopping the child for reason: SIGTERM now, SIGKILL after the
 * grace. Output that arrives afterwards is read and discarded. */
static void begin_stop(exec_run_t *r, exec_stop_t reason)
{
    if (r->stop != STOP_NONE)
        return;
    r->stop = reason;
    close_fd(&r->in_fd);
    signal_child(r, SIGTERM);
    r->kill_at_ms = now_ms() + r->st->kill_grace_ms;
    if (r->st->kill_grace_ms == 0) {
        signal_child(r, SIGKILL);
        r->killed_hard = true;
    }
}

static void internal_failure(exec_run_t *r, int code)
{
    if (!r->internal_error)
        r->internal_error = code;
    begin_stop(r, STOP_INTERNAL);
}

/* ---- stdin --------------------------------------------------------------- */

/* The job as one JSON line: {"id","service","attempt","payload"}. */
static int build_input(exec_run_t *r, kiln_job_outcome_t *out)
{
    const kiln_job_context_t *job = r->job;
    json_t *payload = json_null();
    if (job->payload_json && job->payload_json[0]) {
        json_error_t jerr;
        payload = json_loads(job->payload_json, JSON_DECODE_ANY, &jerr);
        if (!payload)
            return kiln_job_outcome_fail(out, false, "payload: not valid JSON (line %d: %s)",
                                         jerr.line, jerr.text);
    }
    json_t *doc = json_pack("{s:s?, s:s?, s:i, s:o}", "id", job->job_id, "service", job->service,
                            "attempt", job->attempt, "payload", payload);
    if (!doc)
        return kiln_job_outcome_fail(out, false, "job id or service is not valid UTF-8");
    char *text = json_dumps(doc, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(doc);
    size_t len = text ? strlen(text) : 0;
    if (!text || !(r->input = realloc(text, len + 2))) {
        free(text);
        return KILN_ENOMEM;
    }
    r->input[len] = '\n';
    r->input[len + 1] = '\0';
    r->input_len = len + 1;
    return 0;
}

/* A child may exit without reading stdin; the write then fails with EPIPE
 * and raises SIGPIPE at this thread, where run() keeps it blocked. Take the
 * pending signal so it is not delivered when the mask is restored. */
static void consume_sigpipe(void)
{
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_only, NULL, &zero) == SIGPIPE)
        ;
}

static void write_stdin(exec_run_t *r)
{
    ssize_t n = write(r->in_fd, r->input + r->input_off, r->input_len - r->input_off);
    if (n > 0) {
        r->input_off += (size_t)n;
        if (r->input_off == r->input_len)
            close_fd(&r->in_fd);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0 && errno == EPIPE)
        consume_sigpipe();
    close_fd(&r->in_fd); /* the child closed its stdin: its choice */
}

/* ---- stdout: NDJSON ------------------------------------------------------- */

static void log_ignored_line(exec_run_t *r, const char *text, size_t len, const char *why)
{
    char shown[201];
    size_t n = len < 200 ? len : 200;
    memcpy(shown, text, n);
    shown[n] = '\0';
    kiln_connector_sanitize_text(shown, n);
    kiln_log(KILN_LOG_DEBUG, "connector", r->job->job_id, NULL,
             "%s: ignored a stdout line (%s): %s", r->st->name, why, shown);
}

static void take_error(exec_run_t *r, json_t *error, json_t *retryable)
{
    char *text = json_is_string(error) ? strdup(json_string_value(error))
                                       : json_dumps(error, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        internal_failure(r, KILN_ENOMEM);
        return;
    }
    /* Bounded: an error message is for people, not a payload channel. */
    size_t len = strlen(text);
    if (len > EXEC_ERROR_MAX_BYTES) {
        len = EXEC_ERROR_MAX_BYTES;
        while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80)
            len--;
        text[len] = '\0';
    }
    free(r->error_message);
    r->error_message = text;
    r->has_error = true;
    r->error_retryable = !json_is_false(retryable);
}

static void handle_message(exec_run_t *r, json_t *msg)
{
    json_t *progress = json_object_get(msg, "progress");
    if (json_is_number(progress) && r->job->progress) {
        double pct = json_number_value(progress);
        pct = pct < 0 ? 0 : pct > 100 ? 100 : pct;
        json_t *message = json_object_get(msg, "message");
        r->job->progress(r->job->progress_ctx, pct,
                         json_is_string(message) ? json_string_value(message) : NULL);
    }
    json_t *result = json_object_get(msg, "result");
    if (result) {
        free(r->result_json);
        r->result_json =
            json_is_null(result) ? NULL : json_dumps(result, JSON_COMPACT | JSON_ENCODE_ANY);
        r->has_result = true;
        if (!r->result_json && !json_is_null(result))
            internal_failure(r, KILN_ENOMEM);
    }
    json_t *error = json_object_get(msg, "error");
    if (error && !json_is_null(error))
        take_error(r, error, json_object_get(msg, "retryable"));
}

static void handle_line(exec_run_t *r, const char *text, size_t len)
{
    while (len > 0 && (text[len - 1] == '\r' || text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    if (len == 0)
        return;
    json_error_t jerr;
    json_t *msg = json_loadb(text, len, 0, &jerr);
    if (!json_is_object(msg)) {
        log_ignored_line(r, text, len, msg ? "not a JSON object" : "not JSON");
    } else if (!json_object_get(msg, "progress") && !json_object_get(msg, "result") &&
               !json_object_get(msg, "error")) {
        log_ignored_line(r, text, len, "no progress, result or error");
    } else {
        handle_message(r, msg);
    }
    json_decref(msg);
}

static bool line_append(exec_run_t *r, const char *data, size_t len)
{
    if (r->line_len + len > (size_t)r->st->max_line_bytes) {
        begin_stop(r, STOP_LINE_LIMIT);
        return false;
    }
    if (r->line_len + len + 1 > r->line_cap) {
        size_t cap = r->line_cap ? r->line_cap : 4096;
        while (cap < r->line_len + len + 1)
            cap *= 2;
        char *grown = realloc(r->line, cap);
        if (!grown) {
            internal_failure(r, KILN_ENOMEM);
            return false;
        }
        r->line = grown;
        r->line_cap = cap;
    }
    memcpy(r->line + r->line_len, data, len);
    r->line_len += len;
    return true;
}

static void feed_stdout(exec_run_t *r, const char *data, size_t len)
{
    while (len > 0 && r->stop == STOP_NONE) {
        const char *nl = memchr(data, '\n', len);
        size_t seg = nl ? (size_t)(nl - data) : len;
        if (nl && r->line_len == 0 && seg <= (size_t)r->st->max_line_bytes) {
            handle_line(r, data, seg); /* whole line in the chunk: no copy */
        } else {
            if (!line_append(r, data, seg))
                return;
            if (nl) {
                handle_line(r, r->line, r->line_len);
                r->line_len = 0;
            }
        }
        data += seg + (nl ? 1 : 0);
        len -= seg + (nl ? 1 : 0);
    }
}

/* Reads one chunk of stdout. Returns false at EOF or on error. */
static bool read_stdout(exec_run_t *r)
{
    char buf[EXEC_READ_CHUNK];
    ssize_t n = read(r->out_fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n <= 0) {
        close_fd(&r->out_fd);
        if (r->line_len > 0 && r->stop == STOP_NONE) /* a last line without '\n' */
            handle_line(r, r->line, r->line_len);
        r->line_len = 0;
        return false;
    }
    if (r->stop != STOP_NONE)
        return true;
    r->stdout_bytes += n;
    if (r->stdout_bytes > r->st->max_output_bytes) {
        begin_stop(r, STOP_OUTPUT_LIMIT);
        return true;
    }
    feed_stdout(r, buf, (size_t)n);
    return true;
}

/* ---- stderr: a bounded tail, and the log ---------------------------------- */

static void log_stderr_line(exec_run_t *r)
{
    if (r->log_len == 0)
        return;
    r->log_line[r->log_len] = '\0';
    kiln_connector_sanitize_text(r->log_line, r->log_len);
    kiln_log(KILN_LOG_INFO, "connector", r->job->job_id, NULL, "%s stderr: %s", r->st->name,
             r->log_line);
    r->log_len = 0;
}

static void log_stderr(exec_run_t *r, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n') {
            log_stderr_line(r);
            continue;
        }
        r->log_line[r->log_len++] = data[i];
        if (r->log_len == EXEC_LOG_LINE_MAX)
            log_stderr_line(r);
    }
}

static bool read_stderr(exec_run_t *r)
{
    char buf[EXEC_READ_CHUNK];
    ssize_t n = read(r->err_fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n <= 0) {
        close_fd(&r->err_fd);
        log_stderr_line(r);
        return false;
    }
    if (kiln_connector_tail_append(&r->tail, buf, (size_t)n) < 0)
        internal_failure(r, KILN_ENOMEM);
    log_stderr(r, buf, (size_t)n);
    return true;
}

/* ---- the loop -------------------------------------------------------------- */

static int next_timeout_ms(const exec_run_t *r)
{
    int64_t due = -1;
    if (r->stop == STOP_NONE && r->deadline_ms > 0)
        due = r->deadline_ms;
    else if (r->stop != STOP_NONE && !r->killed_hard)
        due = r->kill_at_ms;
    int timeout = -1;
    if (due >= 0) {
        int64_t left = due - now_ms();
        timeout = left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
    }
    if (r->pidfd < 0 && (timeout < 0 || timeout > EXEC_NO_PIDFD_TICKMS))
        timeout = EXEC_NO_PIDFD_TICKMS;
    return timeout;
}

static void check_timers(exec_run_t *r)
{
    const kiln_job_context_t *job = r->job;
    if (r->stop == STOP_NONE && job->cancel && atomic_load(job->cancel))
        begin_stop(r, STOP_CANCEL);
    int64_t now = now_ms();
    if (r->stop == STOP_NONE && r->deadline_ms > 0 && now >= r->deadline_ms)
        begin_stop(r, STOP_TIMEOUT);
    if (r->stop != STOP_NONE && !r->killed_hard && now >= r->kill_at_ms) {
        signal_child(r, SIGKILL);
        r->killed_hard = true;
    }
    if (r->pidfd < 0) {
        siginfo_t info = {0};
        if (waitid(P_PID, (id_t)r->pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == r->pid)
            r->exited = true;
    }
}

static void handle_events(exec_run_t *r, struct pollfd *fds, int nfds)
{
    for (int i = 0; i < nfds; i++) {
        if (!fds[i].revents)
            continue;
        if (fds[i].fd == r->in_fd)
            write_stdin(r);
        else if (fds[i].fd == r->out_fd)
            read_stdout(r);
        else if (fds[i].fd == r->err_fd)
            read_stderr(r);
        else if (fds[i].fd == r->pidfd)
            r->exited = true;
        else if (fds[i].fd == r->cancel_fd && (fds[i].revents & POLLNVAL))
            r->cancel_fd = -1; /* not a descriptor: rely on the flag alone */
        else if (fds[i].fd == r->cancel_fd)
            begin_stop(r, STOP_CANCEL);
    }
}

static void add_fd(struct pollfd *fds, int *n, int fd, short events)
{
    if (fd >= 0)
        fds[(*n)++] = (struct pollfd){.fd = fd, .events = events};
}

/* Runs until the child exits, stopping it on cancel, timeout or a limit. */
static void io_loop(exec_run_t *r)
{
    while (!r->exited) {
        struct pollfd fds[5];
        int nfds = 0;
        if (r->input_off < r->input_len)
            add_fd(fds, &nfds, r->in_fd, POLLOUT);
        add_fd(fds, &nfds, r->out_fd, POLLIN);
        add_fd(fds, &nfds, r->err_fd, POLLIN);
        add_fd(fds, &nfds, r->pidfd, POLLIN);
        if (r->stop == STOP_NONE) /* it stays readable once cancelled */
            add_fd(fds, &nfds, r->cancel_fd, POLLIN);
        int n = poll(fds, (nfds_t)nfds, next_timeout_ms(r));
        if (n < 0 && errno != EINTR) {
            internal_failure(r, KILN_EIO);
            signal_child(r, SIGKILL);
            r->killed_hard = r->exited = true; /* reap() waits for it */
        }
        if (n > 0)
            handle_events(r, fds, nfds);
        check_timers(r);
    }
}

/* The child has exited (or was killed): end what is left of its process
 * group while the zombie still holds the group id, take the output already
 * written, then reap it. */
static void reap(exec_run_t *r)
{
    kill(-r->pid, SIGKILL);
    close_fd(&r->in_fd);
    for (int i = 0; i < EXEC_DRAIN_MAX_READS && r->out_fd >= 0 && read_stdout(r); i++)
        ;
    for (int i = 0; i < EXEC_DRAIN_MAX_READS && r->err_fd >= 0 && read_stderr(r); i++)
        ;
    if (r->out_fd >= 0 && r->line_len > 0 && r->stop == STOP_NONE)
        handle_line(r, r->line, r->line_len); /* a last line without '\n' */
    log_stderr_line(r);
    int status = 0;
    while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR)
        ;
    r->wait_status = status;
    r->pid = -1;
}

/* ---- the outcome ---------------------------------------------------------- */

static int exit_failure(exec_run_t *r, kiln_job_outcome_t *out)
{
    char *tail = kiln_connector_tail_text(&r->tail, EXEC_FAIL_TAIL_BYTES);
    const char *sep = tail ? "; stderr: " : "";
    int rc;
    if (WIFSIGNALED(r->wait_status)) {
        int sig = WTERMSIG(r->wait_status);
        const char *abbrev = sigabbrev_np(sig);
        rc = kiln_job_outcome_fail(out, true, "killed by signal %d (SIG%s)%s%s", sig,
                                   abbrev ? abbrev : "?", sep, tail ? tail : "");
    } else {
        rc = kiln_job_outcome_fail(out, true, "exited with code %d%s%s",
                                   WEXITSTATUS(r->wait_status), sep, tail ? tail : "");
    }
    free(tail);
    return rc;
}

static int make_outcome(exec_run_t *r, kiln_job_outcome_t *out)
{
    const char *name = r->st->name;
    switch (r->stop) {
    case STOP_INTERNAL:
        return r->internal_error;
    case STOP_CANCEL:
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    case STOP_TIMEOUT:
        return kiln_job_outcome_fail(out, true, "timed out after %" PRId64 " ms", r->timeout_ms);
    case STOP_OUTPUT_LIMIT:
        return kiln_job_outcome_fail(out, false,
                                     "stdout exceeded connectors.%s.max_output_bytes (%" PRId64
                                     " bytes); the process was killed",
                                     name, r->st->max_output_bytes);
    case STOP_LINE_LIMIT:
        return kiln_job_outcome_fail(out, false,
                                     "a stdout line exceeded connectors.%s.max_line_bytes (%" PRId64
                                     " bytes); the process was killed",
                                     name, r->st->max_line_bytes);
    case STOP_NONE:
        break;
    }
    if (r->has_error)
        return kiln_job_outcome_fail(out, r->error_retryable, "%s", r->error_message);
    if (WIFEXITED(r->wait_status) && WEXITSTATUS(r->wait_status) == 0) {
        out->status = KILN_OUTCOME_COMPLETED;
        out->result_json = r->result_json; /* NULL: the program gave no result */
        r->result_json = NULL;
        return 0;
    }
    return exit_failure(r, out);
}

static void run_close(exec_run_t *r)
{
    close_fd(&r->in_fd);
    close_fd(&r->out_fd);
    close_fd(&r->err_fd);
    close_fd(&r->pidfd);
    free(r->input);
    free(r->line);
    kiln_connector_tail_close(&r->tail);
    free(r->result_json);
    free(r->error_message);
}

static int64_t effective_timeout(const exec_state_t *st, const kiln_job_context_t *job)
{
    if (st->timeout_ms > 0 && job->timeout_ms > 0)
        return st->timeout_ms < job->timeout_ms ? st->timeout_ms : job->timeout_ms;
    return st->timeout_ms > 0 ? st->timeout_ms : job->timeout_ms > 0 ? job->timeout_ms : 0;
}

static int exec_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    exec_run_t r = {.st = state, .job = job, .pid = -1, .cancel_fd = job->cancel_fd};
    r.pidfd = r.in_fd = r.out_fd = r.err_fd = -1;
    kiln_connector_tail_init(&r.tail, (size_t)r.st->stderr_tail_bytes);
    if (job->cancel && atomic_load(job->cancel)) {
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    r.timeout_ms = effective_timeout(r.st, job);
    int rc = build_input(&r, out);
    if (rc < 0 || !r.input) { /* !r.input: out holds a bad-payload failure */
        run_close(&r);
        return rc;
    }
    sigset_t pipe_only, old_mask;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old_mask);
    if (r.timeout_ms > 0)
        r.deadline_ms = now_ms() + r.timeout_ms;
    rc = spawn_child(&r, out);
    if (rc == 0 && r.pid > 0) {
        io_loop(&r);
        reap(&r);
        rc = make_outcome(&r, out);
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    run_close(&r);
    return rc;
}

const kiln_connector_ops_t kiln_connector_exec = {
    .type = "exec",
    .init = exec_init,
    .run = exec_run,
    .health = exec_health,
    .free = exec_free,
};
