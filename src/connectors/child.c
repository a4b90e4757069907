/*
 * One child process of a connector: spawn, pump, stop, reap (child.h).
 */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHILD_READ_CHUNK      32768
#define CHILD_DRAIN_MAX_READS 512
#define CHILD_NO_PIDFD_TICKMS 50

/* What the child writes to the close-on-exec pipe when it cannot exec. */
typedef struct spawn_report {
    int stage;
    int error;
} spawn_report_t;

enum { SPAWN_SETUP, SPAWN_CHDIR, SPAWN_EXEC };

int kiln_child_check_program(const char *name, const char *key, const char *path, kiln_err_t *err)
{
    int e = kiln_connector_check_executable(path);
    if (e)
        return kiln_err_set(err, KILN_ENOTFOUND,
                            "connectors.%s.%s: %s is no longer executable (%s); reinstall it", name,
                            key, path, strerror(e));
    return 0;
}

int64_t kiln_child_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kiln_child_timeout_ms(int64_t connector_timeout_ms, int64_t job_timeout_ms)
{
    if (connector_timeout_ms > 0 && job_timeout_ms > 0)
        return connector_timeout_ms < job_timeout_ms ? connector_timeout_ms : job_timeout_ms;
    return connector_timeout_ms > 0 ? connector_timeout_ms
           : job_timeout_ms > 0     ? job_timeout_ms
                                    : 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_pair(int p[2])
{
    close_fd(&p[0]);
    close_fd(&p[1]);
}

void kiln_child_init(kiln_child_t *c, const kiln_child_options_t *opts)
{
    memset(c, 0, sizeof *c);
    c->opts = *opts;
    c->pid = -1;
    c->pidfd = c->in_fd = c->out_fd = c->err_fd = -1;
    c->cancel_fd = opts->cancel_fd;
    kiln_connector_tail_init(&c->tail, opts->stderr_tail_bytes);
}

/* ---- spawning ------------------------------------------------------------ */

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_report(int report_fd, int stage)
{
    spawn_report_t report = {.stage = stage, .error = errno};
    ssize_t n = write(report_fd, &report, sizeof report);
    (void)n;
    _exit(127);
}

static void child_exec(const kiln_child_options_t *o, int stdio[3], int report_fd)
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
     * must not leak into the program either. */
    syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
    if (o->cwd && chdir(o->cwd) < 0)
        child_report(report_fd, SPAWN_CHDIR);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(o->path, o->argv, o->envp);
    child_report(report_fd, SPAWN_EXEC);
}

/* Waits for the child to exec or to report why it could not. Returns 0 when
 * it runs, else reaps it and returns KILN_ENOTFOUND with the reason. */
static int await_exec(kiln_child_t *c, int report_fd, kiln_err_t *err)
{
    spawn_report_t report;
    ssize_t n;
    do
        n = read(report_fd, &report, sizeof report);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof report)
        return 0;
    while (waitpid(c->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    c->pid = -1;
    if (report.stage == SPAWN_CHDIR)
        return kiln_err_set(err, KILN_ENOTFOUND, "cannot change directory to %s: %s", c->opts.cwd,
                            strerror(report.error));
    return kiln_err_set(err, KILN_ENOTFOUND, "cannot run %s: %s", c->opts.path,
                        strerror(report.error));
}

/* The pipes: stdin (or /dev/null), stdout, stderr, and the exec report. */
static int open_pipes(kiln_child_t *c, int in[2], int so[2], int se[2], int report[2],
                      kiln_err_t *err)
{
    const char *what = "pipe";
    int ok = c->opts.input ? pipe2(in, O_CLOEXEC) == 0
                           : (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;
    if (!ok && !c->opts.input)
        what = "/dev/null";
    if (ok &&
        (pipe2(so, O_CLOEXEC) < 0 || pipe2(se, O_CLOEXEC) < 0 || pipe2(report, O_CLOEXEC) < 0))
        ok = 0;
    if (ok)
        return 0;
    int e = errno;
    close_pair(in), close_pair(so), close_pair(se), close_pair(report);
    return kiln_err_set(err, KILN_EIO, "cannot start %s: %s: %s", c->opts.path, what, strerror(e));
}

int kiln_child_spawn(kiln_child_t *c, kiln_err_t *err)
{
    int in[2] = {-1, -1}, so[2] = {-1, -1}, se[2] = {-1, -1}, report[2] = {-1, -1};
    int rc = open_pipes(c, in, so, se, report, err);
    if (rc < 0)
        return rc;
    /* No signal handler may run in the child before it resets them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        int stdio[3] = {in[0], so[1], se[1]};
        child_exec(&c->opts, stdio, report[1]);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close_fd(&in[0]), close_fd(&so[1]), close_fd(&se[1]), close_fd(&report[1]);
    c->in_fd = in[1], c->out_fd = so[0], c->err_fd = se[0];
    if (pid < 0) {
        close_fd(&report[0]);
        return kiln_err_set(err, KILN_EIO, "cannot start %s: fork: %s", c->opts.path,
                            strerror(fork_errno));
    }
    c->pid = pid;
    setpgid(pid, pid); /* also done by the child; whoever runs first wins */
    rc = await_exec(c, report[0], err);
    close_fd(&report[0]);
    if (rc < 0)
        return rc;
    if (c->in_fd >= 0)
        fcntl(c->in_fd, F_SETFL, O_NONBLOCK);
    fcntl(c->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(c->err_fd, F_SETFL, O_NONBLOCK);
    /* A pidfd tells us when the child exits even if a grandchild keeps
     * its stdout open; without one (old kernel, seccomp) we check by tick. */
    c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    return 0;
}

/* ---- stopping ------------------------------------------------------------ */

static void signal_group(kiln_child_t *c, int sig)
{
    kill(-c->pid, sig);
    if (getpgid(c->pid) != c->pid) /* it left its group: signal it too */
        kill(c->pid, sig);
}

void kiln_child_stop(kiln_child_t *c, int reason)
{
    if (c->stop != KILN_CHILD_STOP_NONE)
        return;
    c->stop = reason;
    close_fd(&c->in_fd);
    signal_group(c, SIGTERM);
    c->kill_at_ms = kiln_child_now_ms() + c->opts.kill_grace_ms;
    if (c->opts.kill_grace_ms == 0) {
        signal_group(c, SIGKILL);
        c->killed_hard = true;
    }
}

void kiln_child_fail(kiln_child_t *c, int code)
{
    if (!c->internal_error)
        c->internal_error = code;
    kiln_child_stop(c, KILN_CHILD_STOP_INTERNAL);
}

/* ---- pumping ------------------------------------------------------------- */

/* A child may exit without reading stdin; the write then fails with EPIPE
 * and raises SIGPIPE at this thread, where kiln_child_wait keeps it blocked.
 * Take the pending signal so it is not delivered when the mask is restored. */
static void consume_sigpipe(void)
{
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_only, NULL, &zero) == SIGPIPE)
        ;
}

static void write_stdin(kiln_child_t *c)
{
    ssize_t n = write(c->in_fd, c->opts.input + c->input_off, c->opts.input_len - c->input_off);
    if (n > 0) {
        c->input_off += (size_t)n;
        if (c->input_off == c->opts.input_len)
            close_fd(&c->in_fd);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0 && errno == EPIPE)
        consume_sigpipe();
    close_fd(&c->in_fd); /* the child closed its stdin: its choice */
}

/* Reads one chunk of *fd and passes it on. Returns false at EOF (closing
 * *fd), on error, or when nothing is ready. */
static bool pump(kiln_child_t *c, int *fd)
{
    char buf[CHILD_READ_CHUNK];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n <= 0) {
        close_fd(fd);
        return false;
    }
    bool is_err = fd == &c->err_fd;
    if (is_err && kiln_connector_tail_append(&c->tail, buf, (size_t)n) < 0)
        kiln_child_fail(c, KILN_ENOMEM);
    kiln_child_output_cb cb = is_err ? c->opts.on_stderr : c->opts.on_stdout;
    if (cb)
        cb(c->opts.ctx, buf, (size_t)n);
    return true;
}

/* ---- the loop ------------------------------------------------------------ */

static int next_timeout_ms(const kiln_child_t *c)
{
    int64_t due = -1;
    if (c->stop == KILN_CHILD_STOP_NONE && c->opts.deadline_ms > 0)
        due = c->opts.deadline_ms;
    else if (c->stop != KILN_CHILD_STOP_NONE && !c->killed_hard)
        due = c->kill_at_ms;
    int timeout = -1;
    if (due >= 0) {
        int64_t left = due - kiln_child_now_ms();
        timeout = left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
    }
    if (c->pidfd < 0 && (timeout < 0 || timeout > CHILD_NO_PIDFD_TICKMS))
        timeout = CHILD_NO_PIDFD_TICKMS;
    return timeout;
}

static void check_timers(kiln_child_t *c)
{
    if (c->stop == KILN_CHILD_STOP_NONE && c->opts.cancel && atomic_load(c->opts.cancel))
        kiln_child_stop(c, KILN_CHILD_STOP_CANCEL);
    int64_t now = kiln_child_now_ms();
    if (c->stop == KILN_CHILD_STOP_NONE && c->opts.deadline_ms > 0 && now >= c->opts.deadline_ms)
        kiln_child_stop(c, KILN_CHILD_STOP_TIMEOUT);
    if (c->stop != KILN_CHILD_STOP_NONE && !c->killed_hard && now >= c->kill_at_ms) {
        signal_group(c, SIGKILL);
        c->killed_hard = true;
    }
    if (c->pidfd < 0) {
        siginfo_t info = {0};
        if (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == c->pid)
            c->exited = true;
    }
}

static void handle_events(kiln_child_t *c, struct pollfd *fds, int nfds)
{
    for (int i = 0; i < nfds; i++) {
        if (!fds[i].revents)
            continue;
        if (fds[i].fd == c->in_fd)
            write_stdin(c);
        else if (fds[i].fd == c->out_fd)
            pump(c, &c->out_fd);
        else if (fds[i].fd == c->err_fd)
            pump(c, &c->err_fd);
        else if (fds[i].fd == c->pidfd)
            c->exited = true;
        else if (fds[i].fd == c->cancel_fd && (fds[i].revents & POLLNVAL))
            c->cancel_fd = -1; /* not a descriptor: rely on the flag alone */
        else if (fds[i].fd == c->cancel_fd)
            kiln_child_stop(c, KILN_CHILD_STOP_CANCEL);
    }
}

static void add_fd(struct pollfd *fds, int *n, int fd, short events)
{
    if (fd >= 0)
        fds[(*n)++] = (struct pollfd){.fd = fd, .events = events};
}

/* Runs until the child exits, stopping it on cancel or the deadline. */
static void io_loop(kiln_child_t *c)
{
    while (!c->exited) {
        struct pollfd fds[5];
        int nfds = 0;
        if (c->input_off < c->opts.input_len)
            add_fd(fds, &nfds, c->in_fd, POLLOUT);
        add_fd(fds, &nfds, c->out_fd, POLLIN);
        add_fd(fds, &nfds, c->err_fd, POLLIN);
        add_fd(fds, &nfds, c->pidfd, POLLIN);
        if (c->stop == KILN_CHILD_STOP_NONE) /* it stays readable once cancelled */
            add_fd(fds, &nfds, c->cancel_fd, POLLIN);
        int n = poll(fds, (nfds_t)nfds, next_timeout_ms(c));
        if (n < 0 && errno != EINTR) {
            kiln_child_fail(c, KILN_EIO);
            signal_group(c, SIGKILL);
            c->killed_hard = c->exited = true; /* the reap waits for it */
        }
        if (n > 0)
            handle_events(c, fds, nfds);
        check_timers(c);
    }
}

void kiln_child_wait(kiln_child_t *c)
{
    if (c->pid < 0)
        return;
    sigset_t pipe_only, old_mask;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old_mask);
    io_loop(c);
    /* End what is left of the group while the zombie still holds the group
     * id, take the output already written, then reap. */
    kill(-c->pid, SIGKILL);
    close_fd(&c->in_fd);
    for (int i = 0; i < CHILD_DRAIN_MAX_READS && c->out_fd >= 0 && pump(c, &c->out_fd); i++)
        ;
    for (int i = 0; i < CHILD_DRAIN_MAX_READS && c->err_fd >= 0 && pump(c, &c->err_fd); i++)
        ;
    int status = 0;
    while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
        ;
    c->wait_status = status;
    c->pid = -1;
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

int kiln_child_run(kiln_child_t *c, const kiln_child_options_t *opts, kiln_job_outcome_t *out)
{
    kiln_child_init(c, opts);
    kiln_err_t err = {0};
    int rc = kiln_child_spawn(c, &err);
    if (rc < 0) { /* KILN_EIO: short of pipes or processes, which may pass */
        kiln_job_outcome_fail(out, rc == KILN_EIO, "%s", err.msg);
        return 0;
    }
    kiln_child_wait(c);
    return 1;
}

char *kiln_child_describe_exit(const kiln_child_t *c, size_t tail_max)
{
    char *tail = kiln_connector_tail_text(&c->tail, tail_max);
    const char *sep = tail ? "; stderr: " : "";
    char *text = NULL;
    int n;
    if (WIFSIGNALED(c->wait_status)) {
        int sig = WTERMSIG(c->wait_status);
        const char *abbrev = sigabbrev_np(sig);
        n = asprintf(&text, "killed by signal %d (SIG%s)%s%s", sig, abbrev ? abbrev : "?", sep,
                     tail ? tail : "");
    } else {
        n = asprintf(&text, "exited with code %d%s%s", WEXITSTATUS(c->wait_status), sep,
                     tail ? tail : "");
    }
    free(tail);
    return n < 0 ? NULL : text;
}

void kiln_child_close(kiln_child_t *c)
{
    close_fd(&c->in_fd);
    close_fd(&c->out_fd);
    close_fd(&c->err_fd);
    close_fd(&c->pidfd);
    kiln_connector_tail_close(&c->tail);
}
