/*
 * The nvidia-smi fallback of GPU discovery (docs/gpu.md): used when NVML
 * cannot be loaded or initialised. nvidia-smi runs as argv (never through
 * a shell) in its own process group, its output is bounded, and it is
 * killed when it outlives its deadline; a hung driver must not hang the
 * machine agent.
 */
#include "agent/gpu_internal.h"
#include "kiln/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define GPU_LOG "gpu"

/* One line per GPU, in this column order; the parser depends on it. */
#define SMI_QUERY                                                                                  \
    "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu"
#define SMI_FORMAT       "--format=csv,noheader,nounits"
#define SMI_FIELDS       7
#define SMI_LINE_MAX     512  /* a real line is under 200 bytes */
#define SMI_KILL_WAIT_MS 1000 /* how long a SIGKILLed nvidia-smi may take to go */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kiln_gpu_text_clean(char *text)
{
    for (unsigned char *p = (unsigned char *)text; *p; p++) {
        if (*p < 0x20 || *p > 0x7e)
            *p = '?';
    }
}

/* ---- parsing --------------------------------------------------------------- */

static char *trim(char *text)
{
    while (*text == ' ' || *text == '\t')
        text++;
    size_t len = strlen(text);
    while (len && (text[len - 1] == ' ' || text[len - 1] == '\t' || text[len - 1] == '\r'))
        text[--len] = '\0';
    return text;
}

typedef enum { NUM_OK, NUM_UNKNOWN, NUM_BAD } num_t;

/* A decimal integer no larger than max; "[N/A]", "[Not Supported]" and any
 * other bracketed word nvidia-smi prints for a value it cannot read are
 * NUM_UNKNOWN. */
static num_t parse_number(const char *text, uint64_t max, uint64_t *value)
{
    size_t len = strlen(text);
    if ((len >= 2 && text[0] == '[' && text[len - 1] == ']') || strcmp(text, "N/A") == 0)
        return NUM_UNKNOWN;
    if (len == 0 || len > 19 || strspn(text, "0123456789") != len)
        return NUM_BAD;
    *value = strtoull(text, NULL, 10);
    return *value <= max ? NUM_OK : NUM_BAD;
}

/* Splits line in place into its SMI_FIELDS trimmed fields. GPU names may
 * contain commas, so the name is whatever lies between the first comma and
 * the fifth comma from the right. Returns false when there are too few. */
static bool split_fields(char *line, char *field[SMI_FIELDS])
{
    char *first = strchr(line, ',');
    if (!first)
        return false;
    char *end = line + strlen(line);
    for (int k = SMI_FIELDS - 1; k >= 2; k--) {
        char *comma = memrchr(first + 1, ',', (size_t)(end - (first + 1)));
        if (!comma)
            return false;
        *comma = '\0';
        field[k] = trim(comma + 1);
        end = comma;
    }
    *first = '\0';
    field[0] = trim(line);
    field[1] = trim(first + 1);
    return true;
}

/* Reads one line into gpu; returns NULL or why the line is malformed. */
static const char *parse_line(char *line, kiln_gpu_t *gpu)
{
    char *field[SMI_FIELDS];
    if (!split_fields(line, field))
        return "expected 7 comma-separated fields";
    uint64_t index, total = 0, used = 0, utilization = 0, temperature = 0;
    if (parse_number(field[0], INT_MAX, &index) != NUM_OK)
        return "index is not a number";
    num_t total_ok = parse_number(field[3], INT64_MAX, &total);
    num_t used_ok = parse_number(field[4], INT64_MAX, &used);
    if (total_ok == NUM_BAD || used_ok == NUM_BAD)
        return "memory is not a number of MiB";
    num_t utilization_ok = parse_number(field[5], 100, &utilization);
    if (utilization_ok == NUM_BAD)
        return "utilization is not a percentage";
    num_t temperature_ok = parse_number(field[6], 1000, &temperature);
    if (temperature_ok == NUM_BAD)
        return "temperature is not a number of degrees C";

    memset(gpu, 0, sizeof *gpu);
    gpu->index = (int)index;
    snprintf(gpu->name, sizeof gpu->name, "%s", field[1]);
    kiln_gpu_text_clean(gpu->name);
    if (field[2][0] != '[')
        snprintf(gpu->uuid, sizeof gpu->uuid, "%s", field[2]);
    kiln_gpu_text_clean(gpu->uuid);
    gpu->memory_total_mb = total_ok == NUM_OK ? total : 0;
    gpu->memory_used_mb = used_ok == NUM_OK ? used : 0;
    gpu->utilization_pct = utilization_ok == NUM_OK ? (int)utilization : -1;
    gpu->temperature_c = temperature_ok == NUM_OK ? (int)temperature : -1;
    return NULL;
}

static bool index_seen(const kiln_gpu_list_t *list, int index)
{
    for (size_t i = 0; i < list->count; i++) {
        if (list->gpus[i].index == index)
            return true;
    }
    return false;
}

int kiln_gpu_smi_parse(const char *csv, kiln_gpu_list_t *out, kiln_err_t *err)
{
    size_t lines = 1;
    for (const char *p = csv; *p; p++)
        lines += *p == '\n';
    size_t capacity = lines < KILN_GPU_MAX ? lines : KILN_GPU_MAX;
    out->gpus = calloc(capacity, sizeof *out->gpus);
    out->count = 0;
    if (!out->gpus)
        return kiln_err_set(err, KILN_ENOMEM, "gpu: out of memory parsing nvidia-smi output");

    const char *p = csv;
    for (size_t number = 1; *p; number++) {
        size_t len = strcspn(p, "\n");
        const char *next = p[len] ? p + len + 1 : p + len;
        char line[SMI_LINE_MAX];
        const char *why = NULL;
        kiln_gpu_t gpu = {0};
        if (len >= sizeof line) {
            why = "line too long";
        } else {
            memcpy(line, p, len);
            line[len] = '\0';
            if (trim(line)[0] == '\0') {
                p = next;
                continue;
            }
            why = parse_line(line, &gpu);
            if (!why && index_seen(out, gpu.index))
                why = "index listed twice";
            if (!why && out->count == capacity)
                why = "more GPUs than kiln supports (KILN_GPU_MAX)";
        }
        if (why) {
            KILN_LOG_DEBUG_(GPU_LOG, "nvidia-smi output line %zu skipped (%s): %.*s", number, why,
                            len < 80 ? (int)len : 80, p);
        } else {
            out->gpus[out->count++] = gpu;
        }
        p = next;
    }
    if (out->count == 0) {
        free(out->gpus);
        out->gpus = NULL;
    }
    return 0;
}

/* ---- running --------------------------------------------------------------- */

/* Waits until pid exits or deadline_ms passes. Returns true when it is gone
 * (status set; -1 when someone else reaped it, as SIGCHLD = SIG_IGN does). */
static bool reap_by(pid_t pid, int pidfd, int64_t deadline_ms, int *status)
{
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return true;
        if (r < 0 && errno != EINTR) {
            *status = -1;
            return true;
        }
        int64_t left = deadline_ms - now_ms();
        if (left <= 0)
            return false;
        if (pidfd >= 0) {
            struct pollfd exited = {.fd = pidfd, .events = POLLIN};
            poll(&exited, 1, (int)left);
        } else {
            poll(NULL, 0, left < 10 ? (int)left : 10);
        }
    }
}

/* Starts nvidia-smi with stdout on a pipe and stdin/stderr on /dev/null.
 * Returns its pid, or -1 (logged) when it cannot be started. */
static pid_t smi_spawn(const char *path, int *out_fd)
{
    char *const argv[] = {(char *)path, (char *)SMI_QUERY, (char *)SMI_FORMAT, NULL};
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        KILN_LOG_WARN_(GPU_LOG, "cannot run %s: pipe: %s", path, strerror(errno));
        return -1;
    }
    /* With stdio closed in the agent the write end could be fd 0-2, which
     * the redirections below would clobber: move it above them. */
    if (pipefd[1] < 3) {
        int moved = fcntl(pipefd[1], F_DUPFD_CLOEXEC, 3);
        close(pipefd[1]);
        pipefd[1] = moved;
    }
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    /* Descriptors other libraries opened without O_CLOEXEC stay here. */
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    /* The agent may block or ignore signals; nvidia-smi starts from the
     * defaults, in a process group of its own so one kill reaches it all. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    pid_t pid = -1;
    int rc = pipefd[1] < 0 ? errno : posix_spawnp(&pid, path, &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (rc != 0) {
        close(pipefd[0]);
        KILN_LOG_DEBUG_(GPU_LOG, "nvidia-smi fallback: cannot run %s: %s", path, strerror(rc));
        return -1;
    }
    *out_fd = pipefd[0];
    return pid;
}

typedef enum { READ_EOF, READ_TIMEOUT, READ_TOO_BIG, READ_ERROR } read_end_t;

/* Reads fd into buf (NUL-terminated, at most cap - 1 bytes) until EOF or
 * deadline_ms. */
static read_end_t read_until(int fd, int64_t deadline_ms, char *buf, size_t cap, size_t *len)
{
    *len = 0;
    read_end_t end = READ_EOF;
    for (;;) {
        if (*len == cap - 1) {
            end = READ_TOO_BIG;
            break;
        }
        int64_t left = deadline_ms - now_ms();
        if (left <= 0) {
            end = READ_TIMEOUT;
            break;
        }
        struct pollfd readable = {.fd = fd, .events = POLLIN};
        int n = poll(&readable, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            end = READ_ERROR;
            break;
        }
        if (n == 0)
            continue; /* the deadline check above ends the loop */
        ssize_t got = read(fd, buf + *len, cap - 1 - *len);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0) {
            end = READ_ERROR;
            break;
        }
        if (got == 0)
            break;
        *len += (size_t)got;
    }
    buf[*len] = '\0';
    return end;
}

/* Runs nvidia-smi into buf. Returns true when it ran to completion and
 * exited 0; otherwise logs why and returns false. */
static bool smi_run(const char *path, int timeout_ms, char *buf, size_t cap)
{
    int fd = -1;
    int64_t deadline_ms = now_ms() + timeout_ms;
    pid_t pid = smi_spawn(path, &fd);
    if (pid < 0)
        return false;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    size_t len = 0;
    read_end_t end = read_until(fd, deadline_ms, buf, cap, &len);
    close(fd);

    int status = 0;
    bool killed = false, gone = end == READ_EOF && reap_by(pid, pidfd, deadline_ms, &status);
    if (!gone) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL); /* in case it left its process group */
        killed = true;
        gone = reap_by(pid, pidfd, now_ms() + SMI_KILL_WAIT_MS, &status);
    }
    if (pidfd >= 0)
        close(pidfd);

    if (!gone) {
        KILN_LOG_WARN_(GPU_LOG,
                       "%s did not exit %d ms after SIGKILL (stuck in the driver?); left behind "
                       "as pid %d",
                       path, SMI_KILL_WAIT_MS, (int)pid);
        return false;
    }
    if (end == READ_TIMEOUT || (killed && end == READ_EOF)) {
        KILN_LOG_WARN_(GPU_LOG,
                       "%s did not finish within %d ms and was killed; check the NVIDIA driver",
                       path, timeout_ms);
        return false;
    }
    if (end == READ_TOO_BIG) {
        KILN_LOG_WARN_(GPU_LOG, "%s printed more than %d bytes and was killed; output ignored",
                       path, (int)cap - 1);
        return false;
    }
    if (end == READ_ERROR) {
        KILN_LOG_WARN_(GPU_LOG, "reading from %s failed; output ignored", path);
        return false;
    }
    if (status != -1 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        KILN_LOG_INFO_(GPU_LOG, "%s failed (%s %d): %.200s", path,
                       WIFEXITED(status) ? "exit status" : "signal",
                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), buf);
        return false;
    }
    return true;
}

int kiln_gpu_smi_discover(const char *path, int timeout_ms, kiln_gpu_list_t *out, kiln_err_t *err)
{
    char *buf = malloc(KILN_GPU_SMI_OUTPUT_MAX + 1);
    if (!buf)
        return kiln_err_set(err, KILN_ENOMEM, "gpu: out of memory reading nvidia-smi output");
    int rc = 0;
    if (smi_run(path, timeout_ms, buf, KILN_GPU_SMI_OUTPUT_MAX + 1)) {
        rc = kiln_gpu_smi_parse(buf, out, err);
        if (rc == 0) {
            snprintf(out->source, sizeof out->source, "nvidia-smi");
            rc = 1;
        }
    }
    free(buf);
    return rc;
}
