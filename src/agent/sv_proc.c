/*
 * Spawning a service run: clone(CLONE_VM) + execve (never a shell, never
 * uv_spawn, whose SIGCHLD handling would fight the supervisor's own
 * reaper), the child in a new session (so its own process group), stdout/stderr and the
 * optional readiness fd 3 as pipes read on the loop. Exec failure comes
 * back through a close-on-exec pipe, as in libuv's process.c: EOF means
 * execve succeeded; an errno on it means the child failed before or at
 * execve. Before execve the child also waits for a "go" byte, which the
 * agent sends only once the new pid is in the state file: a process that
 * runs is always recorded, so an agent killed -9 at any moment leaves
 * nothing its successor cannot find (without the byte, the child exits).
 * Release is deferred to the end of the loop turn, so a burst of spawns
 * costs one state-file write (sv_proc_release_all).
 *
 * Why not fork: fork copies the agent's page tables and marks its memory
 * copy-on-write, so the agent then takes a page fault on each page it
 * writes and the child's execve tears the copy down again: about 2 ms of
 * a respawn on a small VM (measured, docs/supervisor.md). posix_spawn and
 * vfork avoid the copy but hold the agent until the child has exec'd,
 * which the go byte cannot wait for. So the child shares the agent's
 * memory (CLONE_VM, as posix_spawn does) but not its file table or signal
 * handlers, runs on a stack of its own (sv_child_t), and touches nothing
 * the agent writes: it reads its plan, makes system calls, and execs. Its
 * stack and plan are freed only once the exec pipe reports EOF (it exec'd
 * or died), never while it may still run on them.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/sv_internal.h"

extern char **environ;

/* What the child reports on the exec pipe when it cannot run the program. */
typedef struct exec_failure {
    int stage; /* EXEC_STAGE_* */
    int err;   /* errno */
} exec_failure_t;

enum { EXEC_STAGE_SETSID = 1, EXEC_STAGE_FDS, EXEC_STAGE_CWD, EXEC_STAGE_EXEC };

/* The child's stack: the few calls between clone and execve need little;
 * a guard page below it turns an overflow into a crash of the child. */
#define SV_CHILD_STACK (64 * 1024)

/* Everything the child needs, prepared before clone, and its stack. In
 * the child only async-signal-safe calls are allowed (it shares memory
 * with an agent that has other threads). errno is the one thing it writes
 * that the agent also uses (the child runs with the cloning thread's
 * thread pointer): it does so only on a failure, which it reports at once
 * and exits. */
struct sv_child {
    char path[PATH_MAX];
    char **envp;
    const kiln_svc_spec_t *spec;             /* the service's; it outlives the launch */
    int out_w, err_w, ready_w, exec_w, go_r; /* -1 when absent */
    int go_w;    /* the agent's end: closed in the child, so EOF reaches it */
    char *stack; /* SV_CHILD_STACK bytes above a guard page (mmap) */
};

static void child_fail(int exec_w, int stage)
{
    exec_failure_t f = {stage, errno};
    ssize_t r;
    do
        r = write(exec_w, &f, sizeof f);
    while (r < 0 && errno == EINTR);
    _exit(127);
}

/* Moves fd above 3 so dup2 onto 0..3 cannot clobber another one we need. */
static int child_lift_fd(int fd)
{
    if (fd < 0 || fd > 3)
        return fd;
    return fcntl(fd, F_DUPFD_CLOEXEC, 4);
}

static int child_main(void *arg)
{
    const sv_child_t *plan = arg;
    const kiln_svc_spec_t *spec = plan->spec;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, &dfl, NULL);
    }
    close(plan->go_w);
    int exec_w = child_lift_fd(plan->exec_w), go_r = child_lift_fd(plan->go_r);
    if (exec_w < 0 || go_r < 0)
        _exit(127);
    /* Everything but execve is done before the go byte, while the agent
     * writes the state file: none of it is visible outside this process. */
    if (setsid() < 0)
        child_fail(exec_w, EXEC_STAGE_SETSID);
    int out_w = child_lift_fd(plan->out_w), err_w = child_lift_fd(plan->err_w);
    int ready_w = child_lift_fd(plan->ready_w);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (out_w < 0 || err_w < 0 || null_fd < 0 || (plan->ready_w >= 0 && ready_w < 0))
        child_fail(exec_w, EXEC_STAGE_FDS);
    if (dup2(null_fd, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0 ||
        (ready_w >= 0 && dup2(ready_w, 3) < 0))
        child_fail(exec_w, EXEC_STAGE_FDS);
    /* Nothing but 0..2 (and the readiness fd 3) crosses execve. */
    unsigned int first = ready_w >= 0 ? 4 : 3;
    if (close_range(first, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = (int)first; fd < 65536; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    if (spec->cwd && chdir(spec->cwd) < 0)
        child_fail(exec_w, EXEC_STAGE_CWD);
    char go;
    ssize_t r;
    do
        r = read(go_r, &go, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1)
        _exit(127); /* the agent died before recording this process */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(plan->path, spec->argv, plan->envp);
    child_fail(exec_w, EXEC_STAGE_EXEC);
    return 127;
}

static const char *env_lookup(char *const *env, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; env && env[i]; i++) {
        if (strncmp(env[i], name, len) == 0 && env[i][len] == '=')
            return env[i] + len + 1;
    }
    return NULL;
}

/* Finds argv[0] on PATH (the service's own PATH first) when it has no '/'. */
static int resolve_path(const kiln_svc_spec_t *spec, char *out, char *errbuf, size_t errlen)
{
    const char *prog = spec->argv[0];
    if (strchr(prog, '/')) {
        if (snprintf(out, PATH_MAX, "%s", prog) >= PATH_MAX)
            return snprintf(errbuf, errlen, "service %s: argv[0] is longer than PATH_MAX",
                            spec->name),
                   KILN_EINVAL;
        return 0;
    }
    const char *path = env_lookup(spec->env, "PATH");
    if (!path)
        path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path; *p;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > 0 && snprintf(out, PATH_MAX, "%.*s/%s", (int)len, p, prog) < PATH_MAX &&
            access(out, X_OK) == 0)
            return 0;
        p += len + (end ? 1 : 0);
    }
    snprintf(errbuf, errlen,
             "service %s: cannot run \"%s\": not found on PATH (%s); give argv[0] as an absolute "
             "path or install the program",
             spec->name, prog, path);
    return KILN_ENOTFOUND;
}

/* The agent's environment with the service's NAME=value entries on top. */
static char **build_envp(const kiln_svc_spec_t *spec)
{
    size_t n_base = 0, n_extra = 0;
    while (environ && environ[n_base])
        n_base++;
    while (spec->env && spec->env[n_extra])
        n_extra++;
    char **envp = calloc(n_base + n_extra + 1, sizeof *envp);
    if (!envp)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n_base; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t name_len = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        bool overridden = false;
        for (size_t j = 0; j < n_extra && !overridden; j++)
            overridden =
                strncmp(spec->env[j], environ[i], name_len) == 0 && spec->env[j][name_len] == '=';
        if (!overridden)
            envp[k++] = environ[i];
    }
    for (size_t j = 0; j < n_extra; j++)
        envp[k++] = spec->env[j];
    return envp;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void describe_failure(const sv_service_t *svc, const char *path, const exec_failure_t *f,
                             char *errbuf, size_t errlen)
{
    const char *name = svc->spec.name;
    switch (f->stage) {
    case EXEC_STAGE_CWD:
        snprintf(errbuf, errlen, "service %s: cannot enter cwd \"%s\": %s; fix the service's cwd",
                 name, svc->spec.cwd, strerror(f->err));
        break;
    case EXEC_STAGE_EXEC:
        snprintf(errbuf, errlen,
                 "service %s: cannot execute \"%.512s\": %s; argv[0] must be an executable file",
                 name, path, strerror(f->err));
        break;
    default:
        snprintf(errbuf, errlen, "service %s: cannot set up the child process: %s", name,
                 strerror(f->err));
    }
}

/* Waits (briefly: the child is between clone and execve) for the exec
 * pipe's verdict. 0 when execve succeeded. */
static int await_exec(sv_service_t *svc, pid_t pid, int exec_r, const char *path, char *errbuf,
                      size_t errlen)
{
    exec_failure_t f;
    ssize_t r;
    do
        r = read(exec_r, &f, sizeof f);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return 0;
    if (r != (ssize_t)sizeof f)
        f = (exec_failure_t){EXEC_STAGE_FDS, r < 0 ? errno : EPROTO};
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    describe_failure(svc, path, &f, errbuf, errlen);
    return KILN_EIO;
}

static int make_pipe(int fds[2])
{
    return pipe2(fds, O_CLOEXEC) < 0 ? -errno : 0;
}

static void on_pipe_closed(uv_handle_t *h)
{
    sv_pipe_t *p = h->data;
    sv_service_t *svc = p->svc;
    for (sv_pipe_t **pp = &svc->pipes; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    free(p);
    sv_service_unref(svc);
}

static void pipe_close(sv_pipe_t *p)
{
    if (!uv_is_closing((uv_handle_t *)&p->handle))
        uv_close((uv_handle_t *)&p->handle, on_pipe_closed);
}

static void on_pipe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sv_pipe_t *p = h->data;
    kiln_supervisor_t *sv = p->svc->sv;
    if (!sv->pipe_buf)
        sv->pipe_buf = malloc(SV_PIPE_BUF);
    /* A NULL buffer makes libuv report UV_ENOBUFS: the pipe closes. */
    *buf = uv_buf_init(sv->pipe_buf, sv->pipe_buf ? SV_PIPE_BUF : 0);
}

static void on_pipe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sv_pipe_t *p = s->data;
    sv_service_t *svc = p->svc;
    if (nread < 0) {
        pipe_close(p);
        return;
    }
    if (p->stream) {
        if (svc->log && nread > 0)
            kiln_svclog_write(svc->log, p->stream, buf->base, (size_t)nread);
        return;
    }
    /* The readiness fd: the first newline means ready; nothing after matters. */
    if (nread > 0 && memchr(buf->base, '\n', (size_t)nread)) {
        pipe_close(p);
        if (p->run_gen == svc->run_gen)
            sv_dispatch(svc, SV_EV_READY);
    }
}

static int pipe_watch(sv_service_t *svc, int *fd, const char *stream)
{
    sv_pipe_t *p = calloc(1, sizeof *p);
    if (!p)
        return KILN_ENOMEM;
    p->svc = svc;
    p->stream = stream;
    p->run_gen = svc->run_gen;
    uv_pipe_init(svc->sv->loop, &p->handle, 0);
    p->handle.data = p;
    p->next = svc->pipes;
    svc->pipes = p;
    svc->refs++;
    int rc = uv_pipe_open(&p->handle, *fd);
    if (rc == 0) {
        *fd = -1; /* the handle owns it now */
        rc = uv_read_start((uv_stream_t *)&p->handle, on_pipe_alloc, on_pipe_read);
    }
    if (rc < 0) {
        pipe_close(p);
        return KILN_EIO;
    }
    return 0;
}

/* Closes every pipe of every run of svc (their close callbacks drop the
 * references they hold). */
void sv_proc_close_pipes(sv_service_t *svc)
{
    for (sv_pipe_t *p = svc->pipes; p; p = p->next)
        pipe_close(p);
}

/* Starts the child on its own stack with every signal blocked (so no
 * handler of the agent ever runs in it; child_main resets them all). */
static pid_t clone_child(sv_child_t *plan)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = clone(child_main, plan->stack + SV_CHILD_STACK, CLONE_VM | SIGCHLD, plan);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return pid;
}

static sv_launch_t *launch_new(const char *path)
{
    size_t len = strlen(path);
    sv_launch_t *l = malloc(sizeof *l + len + 1);
    if (!l)
        return NULL;
    *l = (sv_launch_t){.go_w = -1, .exec_r = -1, .out_r = -1, .err_r = -1, .ready_r = -1};
    memcpy(l->path, path, len + 1);
    return l;
}

static sv_child_t *child_new(void)
{
    sv_child_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    void *mem = mmap(NULL, SV_CHILD_STACK + (size_t)page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) {
        free(c);
        return NULL;
    }
    mprotect(mem, (size_t)page, PROT_NONE);
    c->stack = (char *)mem + page;
    c->out_w = c->err_w = c->ready_w = c->exec_w = c->go_r = c->go_w = -1;
    return c;
}

static void child_free(sv_child_t *c)
{
    if (!c)
        return;
    long page = sysconf(_SC_PAGESIZE);
    munmap(c->stack - page, SV_CHILD_STACK + (size_t)page);
    free(c->envp);
    free(c);
}

/* Waits until the child no longer runs in the agent's memory: EOF on the
 * exec pipe comes once it has exec'd or exited (the kernel drops its
 * memory before its files). A child still waiting for its go byte exits
 * as soon as go_w is closed, so this does not block for long. */
static void child_await_gone(sv_launch_t *l)
{
    close_fd(&l->go_w);
    char buf[sizeof(exec_failure_t)];
    ssize_t r;
    do
        r = read(l->exec_r, buf, sizeof buf);
    while (r > 0 || (r < 0 && errno == EINTR));
}

static void launch_free(sv_launch_t *l)
{
    if (l->child) {
        child_await_gone(l);
        child_free(l->child);
    }
    close_fd(&l->go_w), close_fd(&l->exec_r), close_fd(&l->out_r), close_fd(&l->err_r);
    close_fd(&l->ready_r);
    free(l);
}

/* Forgets svc's waiting child's release (its run ended, or the agent is
 * going away): closing the go socket makes a child still waiting exit. */
void sv_proc_launch_drop(sv_service_t *svc)
{
    if (!svc->launch)
        return;
    launch_free(svc->launch);
    svc->launch = NULL;
}

static void send_go(sv_launch_t *l)
{
    ssize_t r;
    do /* a socket, so a child already gone means EPIPE, never SIGPIPE */
        r = send(l->go_w, "g", 1, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    l->released = r == 1;
    close_fd(&l->go_w);
}

/* Finishes one released launch: the exec verdict, then the pipes. On
 * failure the child is reaped, svc->pid is 0, and errbuf says why. */
static int finish_launch(sv_service_t *svc, sv_launch_t *l, char *errbuf, size_t errlen)
{
    if (!l->released) {
        /* The child does its set-up (cwd, fds) before the go byte, so one
         * already gone most likely failed there and said why on the exec
         * pipe: that is the reason to give. The kill first means the read
         * cannot wait on a child that is somehow still there. */
        kill(svc->pid, SIGKILL);
        if (await_exec(svc, svc->pid, l->exec_r, l->path, errbuf, errlen))
            return KILN_EIO; /* reaped by await_exec */
        snprintf(errbuf, errlen, "service %s: cannot release the child process: %s", svc->spec.name,
                 strerror(EPIPE));
        while (waitpid(svc->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return KILN_EIO;
    }
    int rc = await_exec(svc, svc->pid, l->exec_r, l->path, errbuf, errlen);
    if (rc)
        return rc;
    /* A pipe that cannot be watched loses output, not the run. */
    pipe_watch(svc, &l->out_r, "stdout");
    pipe_watch(svc, &l->err_r, "stderr");
    if (l->ready_r >= 0)
        pipe_watch(svc, &l->ready_r, NULL);
    return 0;
}

static sv_service_t *next_released(kiln_supervisor_t *sv)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (sv->svcs[i]->launch && sv->svcs[i]->launch->go_w < 0)
            return sv->svcs[i];
    }
    return NULL;
}

/* Releases every child waiting for its go byte. The state file must
 * already name them (the caller wrote it). All bytes go out first, so the
 * children exec in parallel; then each exec verdict is collected, and a
 * launch that failed is reported to the state machine. */
void sv_proc_release_all(kiln_supervisor_t *sv)
{
    for (size_t i = 0; i < sv->n_svcs; i++) {
        if (sv->svcs[i]->launch)
            send_go(sv->svcs[i]->launch);
    }
    /* One at a time, from the list each time: a failure's events may
     * change the service list. */
    for (sv_service_t *svc; (svc = next_released(sv));) {
        sv_launch_t *l = svc->launch;
        svc->launch = NULL;
        char errbuf[sizeof svc->last_error];
        int rc = finish_launch(svc, l, errbuf, sizeof errbuf);
        launch_free(l);
        if (rc) {
            svc->pid = 0;
            sv->state_dirty = sv->state_file != NULL;
            sv_on_launch_failed(svc, errbuf);
        } else {
            sv_on_launched(svc);
        }
    }
}

/* Starts a run of svc: the child is cloned and recorded (svc->pid, also
 * its group and session id once it runs, and start_ticks), and waits for
 * its release, which sv_proc_release_all sends before the loop next
 * blocks; an exec failure is reported then (sv_on_launch_failed). On
 * failure here errbuf says why (naming the service and the fix) and no
 * process is left. */
int sv_proc_spawn(sv_service_t *svc, char *errbuf, size_t errlen)
{
    const kiln_svc_spec_t *spec = &svc->spec;
    int out[2] = {-1, -1}, err[2] = {-1, -1}, rdy[2] = {-1, -1}, ex[2] = {-1, -1};
    int go[2] = {-1, -1};
    sv_launch_t *launch = NULL;
    sv_child_t *plan = child_new();
    if (!plan) {
        snprintf(errbuf, errlen, "service %s: out of memory", spec->name);
        return KILN_ENOMEM;
    }
    plan->spec = spec;
    int rc = resolve_path(spec, plan->path, errbuf, errlen);
    if (rc)
        goto done;
    plan->envp = build_envp(spec);
    launch = launch_new(plan->path);
    rc = plan->envp && launch ? 0 : -ENOMEM;
    if (!rc)
        rc = make_pipe(out);
    if (!rc)
        rc = make_pipe(err);
    if (!rc && spec->ready.kind == KILN_READY_FD)
        rc = make_pipe(rdy);
    if (!rc)
        rc = make_pipe(ex);
    if (!rc && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go) < 0)
        rc = -errno;
    if (rc) {
        snprintf(errbuf, errlen, "service %s: cannot create pipes: %s", spec->name, strerror(-rc));
        rc = KILN_EIO;
        goto done;
    }
    plan->out_w = out[1], plan->err_w = err[1], plan->ready_w = rdy[1], plan->exec_w = ex[1];
    plan->go_r = go[0], plan->go_w = go[1];
    pid_t pid = clone_child(plan);
    if (pid < 0) {
        snprintf(errbuf, errlen, "service %s: clone failed: %s", spec->name, strerror(errno));
        rc = KILN_EIO;
        goto done;
    }
    sv_procinfo_t info;
    svc->pid = pid;
    svc->start_ticks = sv_proc_read(pid, &info) == 0 ? info.start_ticks : 0;
    svc->run_gen++;
    svc->n_desc = 0;
    launch->go_w = go[1], launch->exec_r = ex[0], launch->out_r = out[0];
    launch->err_r = err[0], launch->ready_r = rdy[0];
    launch->child = plan; /* the child runs on it until it has exec'd */
    go[1] = ex[0] = out[0] = err[0] = rdy[0] = -1;
    plan = NULL;
    sv_proc_launch_drop(svc);
    svc->launch = launch;
    launch = NULL;
    svc->sv->state_dirty = svc->sv->state_file != NULL;
    sv_schedule_flush(svc->sv);
    sv_stats_timer_update(svc->sv);
done:
    close_fd(&out[0]), close_fd(&out[1]), close_fd(&err[0]), close_fd(&err[1]);
    close_fd(&rdy[0]), close_fd(&rdy[1]), close_fd(&ex[0]), close_fd(&ex[1]);
    close_fd(&go[0]), close_fd(&go[1]);
    if (launch)
        launch_free(launch);
    child_free(plan);
    return rc;
}
