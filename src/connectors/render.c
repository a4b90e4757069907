/*
 * The render connector: renders a video with ffmpeg from a configured argv
 * template (never a shell). A job's values fill placeholders: numbers may
 * sit inside a larger argument ("s={width}x{height}"), but paths only ever
 * fill a whole argument ({input}, {output}), so nothing in a payload can
 * become an option or a filter. ffprobe reads the input's duration first;
 * `-progress pipe:1` on stdout then gives the percent. The output is
 * written to a temporary name and renamed into the outputs folder only on
 * success; every other end removes it.
 */
#include "outputs.h"
#include "kiln/connector.h"
#include "kiln/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RENDER_MAX_TIMEOUT_MS  (7LL * 24 * 3600 * 1000)
#define RENDER_PROBE_TIMEOUT   30000
#define RENDER_LINE_MAX        1024
#define RENDER_TAIL_BYTES      (64 * 1024)
#define RENDER_FAIL_TAIL_BYTES 2048
#define RENDER_ARG_MAX         4096
#define RENDER_NAME_MAX        128
#define RENDER_NO_PIDFD_TICKMS 50

/* The container formats a job may ask for, and the codec arguments that
 * {codec_args} stands for with each. */
typedef struct render_format {
    const char *name;
    const char *const *codec_args;
} render_format_t;

static const char *const mp4_codec_args[] = {
    "-c:v", "libx264", "-preset", "veryfast",  "-pix_fmt",   "yuv420p", "-c:a",
    "aac",  "-b:a",    "192k",    "-movflags", "+faststart", NULL};
static const char *const webm_codec_args[] = {
    "-c:v",     "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",    "-row-mt", "1",
    "-pix_fmt", "yuv420p",    "-c:a",      "libopus",  "-b:a",      "160k", NULL};
static const render_format_t formats[] = {
    {"mp4", mp4_codec_args},
    {"webm", webm_codec_args},
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

/* The default template: a waveform of the input's audio, with the audio. */
static const char *const default_command[] = {
    "ffmpeg",
    "-hide_banner",
    "-nostdin",
    "-y",
    "-i",
    "{input}",
    "-filter_complex",
    "[0:a]showwaves=s={width}x{height}:r={fps}:mode=line,format=yuv420p[v]",
    "-map",
    "[v]",
    "-map",
    "0:a",
    "{codec_args}",
    "-shortest",
    "-progress",
    "pipe:1",
    "-f",
    "{format}",
    "{output}",
    NULL};

/* Placeholders: whole ones take a path or a list and must be a whole
 * argument; the others are numbers or a format name, safe inside one. */
typedef struct placeholder {
    const char *name;
    bool whole;
} placeholder_t;

static const placeholder_t placeholders[] = {
    {"input", true},   {"output", true}, {"codec_args", true}, {"width", false},
    {"height", false}, {"fps", false},   {"format", false},
};
#define N_PLACEHOLDERS (sizeof placeholders / sizeof placeholders[0])

typedef struct render_state {
    char *name;
    char **argv;   /* the template */
    char *ffmpeg;  /* argv[0] resolved */
    char *ffprobe; /* NULL: the duration comes from ffmpeg's stderr */
    char **envp;
    char *outputs_dir, *temp_dir, *inputs_dir; /* absolute, resolved */
    int64_t timeout_ms, kill_grace_ms, width, height, fps;
    const render_format_t *format;
} render_state_t;

/* One job's values, checked. */
typedef struct render_job {
    char input[PATH_MAX];
    char output_name[RENDER_NAME_MAX + 8];
    int64_t width, height, fps;
    const render_format_t *format;
} render_job_t;

typedef enum { STOP_NONE, STOP_CANCEL, STOP_TIMEOUT, STOP_INTERNAL } render_stop_t;

typedef struct line_buf {
    char text[RENDER_LINE_MAX];
    size_t len;
    bool overflow; /* the current line was too long: dropped */
} line_buf_t;

/* One child process (ffprobe or ffmpeg) and what it said. */
typedef struct render_proc {
    const render_state_t *st;
    const kiln_job_context_t *job;
    const char *path;
    pid_t pid;
    int pidfd, out_fd, err_fd, cancel_fd;
    line_buf_t out_line, err_line;
    void (*on_stdout)(struct render_proc *p, char *line);
    kiln_connector_tail_t tail;
    render_stop_t stop;
    int64_t deadline_ms, kill_at_ms;
    bool killed_hard, exited;
    int wait_status;
    double duration_s, rendered_s, last_percent; /* duration_s < 0: unknown */
    bool ended;
} render_proc_t;

static const char *const known_options[] = {
    "command", "outputs_dir", "temp_dir", "inputs_dir", "ffprobe", "timeout_ms", "kill_grace_ms",
    "env",     "width",       "height",   "fps",        "format",  NULL};

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

static const render_format_t *find_format(const char *name)
{
    for (size_t i = 0; name && i < N_FORMATS; i++) {
        if (strcmp(formats[i].name, name) == 0)
            return &formats[i];
    }
    return NULL;
}

/* ---- the template --------------------------------------------------------- */

static const placeholder_t *find_placeholder(const char *name, size_t len)
{
    for (size_t i = 0; i < N_PLACEHOLDERS; i++) {
        if (strlen(placeholders[i].name) == len && memcmp(placeholders[i].name, name, len) == 0)
            return &placeholders[i];
    }
    return NULL;
}

/* Checks every placeholder of the template, and that it has {input} and
 * {output}; the program (argv[0]) takes none. */
static int check_template(const kiln_connector_config_t *cfg, char **argv, kiln_err_t *err)
{
    bool has_input = false, has_output = false;
    for (size_t i = 0; argv[i]; i++) {
        const char *arg = argv[i];
        if (strlen(arg) >= RENDER_ARG_MAX)
            return kiln_err_set(err, KILN_EINVAL,
                                "connectors.%s.command[%zu]: longer than %d bytes", cfg->name, i,
                                RENDER_ARG_MAX - 1);
        for (const char *open = strchr(arg, '{'); open; open = strchr(open + 1, '{')) {
            const char *close = strchr(open, '}');
            size_t len = close ? (size_t)(close - open - 1) : strlen(open + 1);
            const placeholder_t *ph = close ? find_placeholder(open + 1, len) : NULL;
            if (!ph || i == 0)
                return kiln_err_set(
                    err, KILN_EINVAL,
                    "connectors.%s.command[%zu]: unknown placeholder \"%.*s\" in \"%s\"; "
                    "expected {input}, {output}, {codec_args} (each a whole argument), "
                    "{width}, {height}, {fps} or {format}%s",
                    cfg->name, i, close ? (int)(len + 2) : (int)strlen(open), open, arg,
                    i == 0 ? ", and none in the program" : "");
            if (ph->whole && (open != arg || close[1] != '\0'))
                return kiln_err_set(err, KILN_EINVAL,
                                    "connectors.%s.command[%zu]: {%s} must be a whole argument, "
                                    "got \"%s\"",
                                    cfg->name, i, ph->name, arg);
            has_input |= strcmp(ph->name, "input") == 0;
            has_output |= strcmp(ph->name, "output") == 0;
        }
    }
    if (!has_input || !has_output)
        return kiln_err_set(err, KILN_EINVAL, "connectors.%s.command: needs a {%s} argument",
                            cfg->name, has_input ? "output" : "input");
    return 0;
}

/* Substitutes the numbers and the format name into arg. The result is
 * never longer than arg: each placeholder's name is longer than its value. */
static char *expand_inline(const char *arg, const render_job_t *rj)
{
    char *out = malloc(strlen(arg) + 1);
    size_t used = 0;
    while (out && *arg) {
        const char *close = arg[0] == '{' ? strchr(arg, '}') : NULL;
        if (!close) {
            out[used++] = *arg++;
            continue;
        }
        size_t len = (size_t)(close - arg - 1);
        char value[32] = "";
        if (len == 5 && memcmp(arg + 1, "width", 5) == 0)
            snprintf(value, sizeof value, "%" PRId64, rj->width);
        else if (len == 6 && memcmp(arg + 1, "height", 6) == 0)
            snprintf(value, sizeof value, "%" PRId64, rj->height);
        else if (len == 3 && memcmp(arg + 1, "fps", 3) == 0)
            snprintf(value, sizeof value, "%" PRId64, rj->fps);
        else if (len == 6 && memcmp(arg + 1, "format", 6) == 0)
            snprintf(value, sizeof value, "%s", rj->format->name);
        memcpy(out + used, value, strlen(value));
        used += strlen(value);
        arg = close + 1;
    }
    if (out)
        out[used] = '\0';
    return out;
}

/* Builds the job's argv from the template; NULL when out of memory. */
static char **expand_template(const render_state_t *st, const render_job_t *rj,
                              const char *temp_path)
{
    size_t n = 0, extra = 0;
    while (st->argv[n])
        n++;
    while (rj->format->codec_args[extra])
        extra++;
    char **argv = calloc(n + extra + 1, sizeof *argv);
    size_t used = 0;
    for (size_t i = 0; argv && i < n; i++) {
        const char *arg = st->argv[i];
        char *value;
        if (i == 0) {
            value = strdup(st->ffmpeg);
        } else if (strcmp(arg, "{codec_args}") == 0) {
            for (size_t k = 0; k < extra && argv; k++) {
                if (!(argv[used++] = strdup(rj->format->codec_args[k]))) {
                    kiln_connector_free_strings(argv);
                    argv = NULL;
                }
            }
            continue;
        } else if (strcmp(arg, "{input}") == 0) {
            value = strdup(rj->input);
        } else if (strcmp(arg, "{output}") == 0) {
            value = strdup(temp_path);
        } else {
            value = expand_inline(arg, rj);
        }
        if (!(argv[used++] = value)) {
            kiln_connector_free_strings(argv);
            argv = NULL;
        }
    }
    return argv;
}

/* ---- options ---------------------------------------------------------------- */

static void render_free(void *state)
{
    render_state_t *st = state;
    if (!st)
        return;
    free(st->name);
    free(st->ffmpeg);
    free(st->ffprobe);
    free(st->outputs_dir);
    free(st->temp_dir);
    free(st->inputs_dir);
    kiln_connector_free_strings(st->argv);
    kiln_connector_free_strings(st->envp);
    free(st);
}

static int read_dirs(const kiln_connector_config_t *cfg, render_state_t *st, kiln_err_t *err)
{
    int rc = kiln_outputs_option_dir(cfg, "outputs_dir", "./outputs", true, &st->outputs_dir, err);
    if (rc == 0)
        rc = kiln_outputs_option_dir(cfg, "temp_dir", NULL, true, &st->temp_dir, err);
    if (rc == 0)
        rc = kiln_outputs_option_dir(cfg, "inputs_dir", NULL, false, &st->inputs_dir, err);
    if (rc < 0)
        return rc;
    if (!st->temp_dir && !(st->temp_dir = strdup(st->outputs_dir)))
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    /* The finished file is renamed into place, which only works within one
     * file system. */
    struct stat a, b;
    if (stat(st->temp_dir, &a) == 0 && stat(st->outputs_dir, &b) == 0 && a.st_dev != b.st_dev)
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.temp_dir: %s is not on the file system of outputs_dir "
                            "(%s); pick a folder on the same one, so outputs are renamed into "
                            "place atomically",
                            cfg->name, st->temp_dir, st->outputs_dir);
    return 0;
}

static int read_numbers(const kiln_connector_config_t *cfg, render_state_t *st, kiln_err_t *err)
{
    int rc = kiln_connector_option_int(cfg, "timeout_ms", 0, RENDER_MAX_TIMEOUT_MS, 0,
                                       &st->timeout_ms, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "kill_grace_ms", 0, 600000, 2000, &st->kill_grace_ms,
                                       err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "width", 16, 7680, 1920, &st->width, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "height", 16, 4320, 1080, &st->height, err);
    if (rc == 0)
        rc = kiln_connector_option_int(cfg, "fps", 1, 120, 30, &st->fps, err);
    const char *format = NULL;
    if (rc == 0)
        rc = kiln_connector_option_string(cfg, "format", &format, err);
    if (rc == 0 && !(st->format = find_format(format ? format : "mp4")))
        rc = kiln_err_set(err, KILN_EINVAL,
                          "connectors.%s.format: expected \"mp4\" or \"webm\", got \"%s\"",
                          cfg->name, format);
    return rc;
}

static int read_command(const kiln_connector_config_t *cfg, render_state_t *st, kiln_err_t *err)
{
    int rc = kiln_connector_option_argv(cfg, "command", &st->argv, err);
    if (rc < 0)
        return rc;
    if (!st->argv) {
        size_t n = sizeof default_command / sizeof default_command[0];
        if (!(st->argv = calloc(n, sizeof *st->argv)))
            return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
        for (size_t i = 0; default_command[i]; i++) {
            if (!(st->argv[i] = strdup(default_command[i])))
                return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
        }
    }
    rc = check_template(cfg, st->argv, err);
    if (rc == 0)
        rc =
            kiln_connector_resolve_program(cfg, "command", st->argv[0], st->envp, &st->ffmpeg, err);
    if (rc < 0)
        return rc;
    /* Without ffprobe the duration comes from ffmpeg's "Duration:" line;
     * an ffprobe asked for by name must exist. */
    const char *probe;
    rc = kiln_connector_option_string(cfg, "ffprobe", &probe, err);
    if (rc == 0 && probe)
        return kiln_connector_resolve_program(cfg, "ffprobe", probe, st->envp, &st->ffprobe, err);
    kiln_err_t ignored = {0};
    if (rc == 0 && kiln_connector_resolve_program(cfg, "ffprobe", "ffprobe", st->envp, &st->ffprobe,
                                                  &ignored) < 0)
        kiln_log(KILN_LOG_WARN, "connector", NULL, NULL,
                 "connectors.%s: ffprobe not found (%s); reading durations from ffmpeg's log",
                 cfg->name, ignored.msg);
    return rc;
}

static int render_init(const kiln_connector_config_t *cfg, void **state, kiln_err_t *err)
{
    render_state_t *st = calloc(1, sizeof *st);
    if (!st || !(st->name = strdup(cfg->name))) {
        free(st);
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    }
    int rc = read_numbers(cfg, st, err);
    if (rc == 0)
        rc = kiln_connector_option_env(cfg, "env", &st->envp, err);
    if (rc == 0)
        rc = read_command(cfg, st, err);
    if (rc == 0)
        rc = read_dirs(cfg, st, err);
    if (rc < 0) {
        render_free(st);
        return rc;
    }
    kiln_connector_warn_unknown_options(cfg, known_options);
    *state = st;
    return 0;
}

static int render_health(void *state, kiln_err_t *err)
{
    render_state_t *st = state;
    int e = kiln_connector_check_executable(st->ffmpeg);
    if (e)
        return kiln_err_set(err, KILN_ENOTFOUND,
                            "connectors.%s.command: %s is no longer executable (%s); reinstall it",
                            st->name, st->ffmpeg, strerror(e));
    if (access(st->outputs_dir, W_OK | X_OK) < 0)
        return kiln_err_set(err, KILN_EIO, "connectors.%s.outputs_dir: %s is not writable: %s",
                            st->name, st->outputs_dir, strerror(errno));
    return 0;
}

/* ---- the payload ------------------------------------------------------------ */

/* Records a non-retryable failure (a bad payload repeats on every attempt)
 * and returns 0, so checks read `return refuse(o, ...)`. When the message
 * cannot be allocated o->error stays NULL and run() reports KILN_ENOMEM. */
static int refuse(kiln_job_outcome_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int refuse(kiln_job_outcome_t *o, const char *fmt, ...)
{
    char *message = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&message, fmt, ap);
    va_end(ap);
    if (n >= 0)
        kiln_job_outcome_fail(o, false, "%s", message);
    free(message);
    return 0;
}

static int payload_int(json_t *payload, const char *key, int64_t min, int64_t max, int64_t def,
                       int64_t *out, kiln_job_outcome_t *o)
{
    json_t *v = json_object_get(payload, key);
    *out = def;
    if (!v || json_is_null(v))
        return 1;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char got[64];
        kiln_connector_describe_value(v, got, sizeof got);
        refuse(o, "payload.%s: expected an integer %" PRId64 "-%" PRId64 ", got %s", key, min, max,
               got);
        return 0;
    }
    *out = json_integer_value(v);
    return 1;
}

/* Resolves payload.input to an existing regular file inside inputs_dir
 * (when set). Returns 1, or 0 with a non-retryable failure in o. */
static int check_input(const render_state_t *st, json_t *payload, render_job_t *rj,
                       kiln_job_outcome_t *o)
{
    json_t *v = json_object_get(payload, "input");
    const char *input = json_string_value(v);
    if (!input || !input[0] || strlen(input) >= PATH_MAX)
        return refuse(o, "payload.input: expected the path of the file to "
                         "render");
    if (input[0] == '-')
        return refuse(o, "payload.input: \"%s\" starts with '-'; expected a path", input), 0;
    char joined[PATH_MAX];
    if (input[0] != '/' && !st->inputs_dir)
        return refuse(o, "payload.input: \"%s\" must be an absolute path", input);
    if (input[0] != '/' &&
        snprintf(joined, sizeof joined, "%s/%s", st->inputs_dir, input) >= (int)sizeof joined)
        return refuse(o, "payload.input: path too long");
    struct stat sb;
    if (!realpath(input[0] == '/' ? input : joined, rj->input) || stat(rj->input, &sb) < 0)
        return refuse(o, "payload.input: \"%s\": %s", input, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return refuse(o, "payload.input: \"%s\" is not a regular file", input);
    size_t n = st->inputs_dir ? strlen(st->inputs_dir) : 0;
    if (st->inputs_dir && (strncmp(rj->input, st->inputs_dir, n) != 0 || rj->input[n] != '/'))
        return refuse(o,
                      "payload.input: \"%s\" is outside connectors.%s.inputs_dir "
                      "(%s)",
                      input, st->name, st->inputs_dir);
    return 1;
}

static bool name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* The output's file name: payload.output_name (checked) or the job id
 * (made safe), with the format's extension. */
static int check_output_name(json_t *payload, const char *job_id, render_job_t *rj,
                             kiln_job_outcome_t *o)
{
    json_t *v = json_object_get(payload, "output_name");
    char base[RENDER_NAME_MAX + 1];
    if (v && !json_is_null(v)) {
        const char *name = json_string_value(v);
        size_t len = name ? strlen(name) : 0;
        bool ok = len > 0 && len <= RENDER_NAME_MAX && name[0] != '.' && name[0] != '-';
        for (size_t i = 0; ok && i < len; i++)
            ok = name_char_ok(name[i]);
        if (!ok) {
            char got[64];
            kiln_connector_describe_value(v, got, sizeof got);
            return refuse(o,
                          "payload.output_name: expected 1-%d characters of "
                          "A-Z a-z 0-9 . _ - not starting with '.' or '-', got %s",
                          RENDER_NAME_MAX, got);
        }
        snprintf(base, sizeof base, "%s", name);
    } else {
        snprintf(base, sizeof base, "%s", job_id && job_id[0] ? job_id : "render");
        for (char *p = base; *p; p++)
            *p = name_char_ok(*p) ? *p : '_';
        if (base[0] == '.' || base[0] == '-')
            base[0] = '_';
    }
    const char *ext = rj->format->name;
    size_t len = strlen(base), elen = strlen(ext);
    bool has_ext = len > elen && base[len - elen - 1] == '.' && strcmp(base + len - elen, ext) == 0;
    snprintf(rj->output_name, sizeof rj->output_name, "%s%s%s", base, has_ext ? "" : ".",
             has_ext ? "" : ext);
    return 1;
}

/* Parses and checks the payload. Returns 1 when rj is filled, 0 when o
 * holds a (non-retryable) failure. */
static int parse_payload(const render_state_t *st, const kiln_job_context_t *job, render_job_t *rj,
                         kiln_job_outcome_t *o)
{
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return refuse(o, "payload: expected a JSON object with \"input\"");
    }
    int ok = payload_int(payload, "width", 16, 7680, st->width, &rj->width, o) &&
             payload_int(payload, "height", 16, 4320, st->height, &rj->height, o) &&
             payload_int(payload, "fps", 1, 120, st->fps, &rj->fps, o);
    if (ok && (rj->width % 2 || rj->height % 2))
        ok = refuse(o, "payload: width and height must be even (yuv420p), got %" PRId64 "x%" PRId64,
                    rj->width, rj->height);
    json_t *format = json_object_get(payload, "format");
    rj->format = st->format;
    if (ok && format && !json_is_null(format) &&
        !(rj->format = find_format(json_string_value(format)))) {
        char got[64];
        kiln_connector_describe_value(format, got, sizeof got);
        ok = refuse(o, "payload.format: expected \"mp4\" or \"webm\", got %s", got);
    }
    ok = ok && check_output_name(payload, job->job_id, rj, o) && check_input(st, payload, rj, o);
    json_decref(payload);
    return ok;
}

/* ---- processes ---------------------------------------------------------------- */

/* In the child between fork and exec: async-signal-safe calls only. */
static void child_exec(const render_proc_t *p, char *const argv[], int out_fd, int err_fd,
                       int null_fd, int report_fd)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);
    }
    setpgid(0, 0);
    int fds[3] = {null_fd, out_fd, err_fd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 3)
            fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0 || dup2(fds[i], i) < 0)
            goto fail;
    }
    syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
    if (chdir(p->st->temp_dir) < 0)
        goto fail;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(p->path, argv, p->st->envp);
fail:;
    int e = errno;
    ssize_t n = write(report_fd, &e, sizeof e);
    (void)n;
    _exit(127);
}

/* Starts p->path with argv, stdin from /dev/null. Returns 0 with p->pid
 * set, or an errno value (nothing left running). */
static int proc_spawn(render_proc_t *p, char *const argv[])
{
    int so[2] = {-1, -1}, se[2] = {-1, -1}, report[2] = {-1, -1};
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int e = 0;
    if (null_fd < 0 || pipe2(so, O_CLOEXEC) < 0 || pipe2(se, O_CLOEXEC) < 0 ||
        pipe2(report, O_CLOEXEC) < 0)
        e = errno;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = e ? -1 : fork();
    if (pid == 0)
        child_exec(p, argv, so[1], se[1], null_fd, report[1]);
    if (!e && pid < 0)
        e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close_fd(&null_fd), close_fd(&so[1]), close_fd(&se[1]), close_fd(&report[1]);
    p->out_fd = so[0], p->err_fd = se[0];
    if (pid > 0) {
        setpgid(pid, pid);
        int child_errno;
        ssize_t n;
        while ((n = read(report[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR)
            ;
        if (n == (ssize_t)sizeof child_errno) {
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
            e = child_errno ? child_errno : EIO;
        } else {
            p->pid = pid;
            fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
            fcntl(p->err_fd, F_SETFL, O_NONBLOCK);
            p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        }
    }
    close_fd(&report[0]);
    if (e) {
        close_fd(&p->out_fd);
        close_fd(&p->err_fd);
    }
    return e;
}

static void signal_group(render_proc_t *p, int sig)
{
    kill(-p->pid, sig);
    if (getpgid(p->pid) != p->pid)
        kill(p->pid, sig);
}

static void begin_stop(render_proc_t *p, render_stop_t reason)
{
    if (p->stop != STOP_NONE)
        return;
    p->stop = reason;
    signal_group(p, SIGTERM);
    p->kill_at_ms = now_ms() + p->st->kill_grace_ms;
    if (p->st->kill_grace_ms == 0) {
        signal_group(p, SIGKILL);
        p->killed_hard = true;
    }
}

/* ffmpeg's "  Duration: 00:01:02.50, start: ..." line, for when there is
 * no ffprobe; only the first input's counts. */
static void parse_duration_line(render_proc_t *p, const char *line)
{
    unsigned h, m;
    double s;
    const char *d = strstr(line, "Duration: ");
    if (p->duration_s < 0 && d && sscanf(d, "Duration: %u:%u:%lf", &h, &m, &s) == 3)
        p->duration_s = h * 3600.0 + m * 60.0 + s;
}

static void on_stderr_line(render_proc_t *p, char *line)
{
    parse_duration_line(p, line);
    kiln_connector_sanitize_text(line, strlen(line));
    kiln_log(KILN_LOG_DEBUG, "connector", p->job->job_id, NULL, "%s stderr: %s", p->st->name, line);
}

/* Splits data into lines; a line past RENDER_LINE_MAX is dropped whole. */
static void feed_lines(render_proc_t *p, line_buf_t *lb, const char *data, size_t len,
                       void (*on_line)(render_proc_t *, char *))
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n' || data[i] == '\r') {
            lb->text[lb->len] = '\0';
            if (!lb->overflow && lb->len > 0 && on_line)
                on_line(p, lb->text);
            lb->len = 0;
            lb->overflow = false;
        } else if (lb->len + 1 < sizeof lb->text) {
            lb->text[lb->len++] = data[i];
        } else {
            lb->overflow = true;
        }
    }
}

/* Reads a chunk from *fd; false at EOF, on error or when nothing is ready. */
static bool read_stream(render_proc_t *p, int *fd)
{
    char buf[16384];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n <= 0) {
        close_fd(fd);
        return false;
    }
    if (fd == &p->out_fd) {
        feed_lines(p, &p->out_line, buf, (size_t)n, p->on_stdout);
    } else {
        if (kiln_connector_tail_append(&p->tail, buf, (size_t)n) < 0 && p->stop == STOP_NONE) {
            begin_stop(p, STOP_INTERNAL);
        }
        feed_lines(p, &p->err_line, buf, (size_t)n, on_stderr_line);
    }
    return true;
}

static int next_timeout(const render_proc_t *p)
{
    int64_t due = p->stop == STOP_NONE ? p->deadline_ms : p->killed_hard ? 0 : p->kill_at_ms;
    int timeout = -1;
    if (due > 0) {
        int64_t left = due - now_ms();
        timeout = left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
    }
    if (p->pidfd < 0 && (timeout < 0 || timeout > RENDER_NO_PIDFD_TICKMS))
        timeout = RENDER_NO_PIDFD_TICKMS;
    return timeout;
}

static void check_timers(render_proc_t *p)
{
    if (p->stop == STOP_NONE && p->job->cancel && atomic_load(p->job->cancel))
        begin_stop(p, STOP_CANCEL);
    int64_t now = now_ms();
    if (p->stop == STOP_NONE && p->deadline_ms > 0 && now >= p->deadline_ms)
        begin_stop(p, STOP_TIMEOUT);
    if (p->stop != STOP_NONE && !p->killed_hard && now >= p->kill_at_ms) {
        signal_group(p, SIGKILL);
        p->killed_hard = true;
    }
    siginfo_t info = {0};
    if (p->pidfd < 0 && waitid(P_PID, (id_t)p->pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == p->pid)
        p->exited = true;
}

/* Runs the child until it exits (stopping it on cancel or the deadline),
 * then kills what is left of its group, drains its output and reaps it. */
static void proc_wait(render_proc_t *p)
{
    while (!p->exited) {
        struct pollfd fds[4];
        int nfds = 0;
        int watch[4] = {p->out_fd, p->err_fd, p->pidfd, p->stop == STOP_NONE ? p->cancel_fd : -1};
        for (int i = 0; i < 4; i++) {
            if (watch[i] >= 0)
                fds[nfds++] = (struct pollfd){.fd = watch[i], .events = POLLIN};
        }
        int n = poll(fds, (nfds_t)nfds, next_timeout(p));
        for (int i = 0; n > 0 && i < nfds; i++) {
            if (!fds[i].revents)
                continue;
            if (fds[i].fd == p->out_fd)
                read_stream(p, &p->out_fd);
            else if (fds[i].fd == p->err_fd)
                read_stream(p, &p->err_fd);
            else if (fds[i].fd == p->pidfd)
                p->exited = true;
            else if (fds[i].revents & POLLNVAL)
                p->cancel_fd = -1;
            else
                begin_stop(p, STOP_CANCEL);
        }
        if (n < 0 && errno != EINTR) {
            begin_stop(p, STOP_INTERNAL);
            signal_group(p, SIGKILL);
            p->killed_hard = p->exited = true;
        }
        check_timers(p);
    }
    kill(-p->pid, SIGKILL);
    for (int i = 0; i < 256 && p->out_fd >= 0 && read_stream(p, &p->out_fd); i++)
        ;
    for (int i = 0; i < 256 && p->err_fd >= 0 && read_stream(p, &p->err_fd); i++)
        ;
    while (waitpid(p->pid, &p->wait_status, 0) < 0 && errno == EINTR)
        ;
    p->pid = -1;
    close_fd(&p->out_fd);
    close_fd(&p->err_fd);
    close_fd(&p->pidfd);
}

/* ---- the job ------------------------------------------------------------------- */

static void on_probe_line(render_proc_t *p, char *line)
{
    char *end;
    double d = strtod(line, &end);
    if (end != line && isfinite(d) && d > 0 && p->duration_s < 0)
        p->duration_s = d;
}

static void on_progress_line(render_proc_t *p, char *line)
{
    const kiln_job_context_t *job = p->job;
    char *end;
    /* out_time_ms is in microseconds too (a long-standing ffmpeg quirk). */
    if (strncmp(line, "out_time_us=", 12) == 0 || strncmp(line, "out_time_ms=", 12) == 0) {
        long long us = strtoll(line + 12, &end, 10);
        if (end != line + 12 && us >= 0)
            p->rendered_s = us / 1e6;
        return;
    }
    if (strncmp(line, "progress=", 9) != 0)
        return;
    p->ended |= strcmp(line + 9, "end") == 0;
    double pct = p->ended ? 100 : p->duration_s > 0 ? 100 * p->rendered_s / p->duration_s : 0;
    pct = pct > 100 ? 100 : pct < p->last_percent ? p->last_percent : pct;
    p->last_percent = pct;
    char message[96];
    if (p->duration_s > 0)
        snprintf(message, sizeof message, "rendered %.1f s of %.1f s", p->rendered_s,
                 p->duration_s);
    else
        snprintf(message, sizeof message, "rendered %.1f s", p->rendered_s);
    if (job->progress)
        job->progress(job->progress_ctx, pct, message);
}

static void proc_init(render_proc_t *p, const render_state_t *st, const kiln_job_context_t *job,
                      int64_t deadline_ms)
{
    memset(p, 0, sizeof *p);
    p->st = st, p->job = job, p->pid = -1, p->deadline_ms = deadline_ms;
    p->pidfd = p->out_fd = p->err_fd = -1;
    p->cancel_fd = job->cancel_fd;
    p->duration_s = -1;
    kiln_connector_tail_init(&p->tail, RENDER_TAIL_BYTES);
}

/* Reads the input's duration with ffprobe. Returns 1 (duration_s set, or
 * -1 when it could not say), or 0 with the outcome in o. */
static int probe_duration(const render_state_t *st, const kiln_job_context_t *job,
                          const render_job_t *rj, int64_t deadline_ms, int64_t timeout_ms,
                          double *duration_s, kiln_job_outcome_t *o)
{
    *duration_s = -1;
    if (!st->ffprobe)
        return 1;
    char *argv[] = {st->ffprobe,
                    "-v",
                    "error",
                    "-show_entries",
                    "format=duration",
                    "-of",
                    "default=noprint_wrappers=1:nokey=1",
                    (char *)rj->input,
                    NULL};
    int64_t probe_deadline = now_ms() + RENDER_PROBE_TIMEOUT;
    render_proc_t p;
    proc_init(&p, st, job,
              deadline_ms > 0 && deadline_ms < probe_deadline ? deadline_ms : probe_deadline);
    p.path = st->ffprobe;
    p.on_stdout = on_probe_line;
    int e = proc_spawn(&p, argv);
    if (e) {
        kiln_connector_tail_close(&p.tail);
        kiln_job_outcome_fail(o, false, "cannot run %s: %s", st->ffprobe, strerror(e));
        return 0;
    }
    proc_wait(&p);
    *duration_s = p.duration_s;
    char *tail = kiln_connector_tail_text(&p.tail, RENDER_FAIL_TAIL_BYTES);
    int ok = 0;
    if (p.stop == STOP_CANCEL)
        o->status = KILN_OUTCOME_CANCELLED;
    else if (p.stop == STOP_TIMEOUT && deadline_ms > 0 && now_ms() >= deadline_ms)
        kiln_job_outcome_fail(o, true, "timed out after %" PRId64 " ms", timeout_ms);
    else if (p.stop == STOP_TIMEOUT)
        kiln_job_outcome_fail(o, true, "ffprobe did not read the input within %d ms",
                              RENDER_PROBE_TIMEOUT);
    else if (p.stop == STOP_NONE && (!WIFEXITED(p.wait_status) || WEXITSTATUS(p.wait_status)))
        refuse(o, "payload.input: %s is not a media file ffprobe can read: %s", rj->input,
               tail ? tail : "no details");
    else
        ok = p.stop == STOP_NONE;
    free(tail);
    kiln_connector_tail_close(&p.tail);
    return ok;
}

/* Some failures say nothing about the job: the machine was short of
 * something for a moment. */
static bool looks_transient(const char *tail)
{
    static const char *const hints[] = {
        "Cannot allocate memory",  "No space left on device", "Resource temporarily unavailable",
        "Device or resource busy", "out of memory",           NULL};
    for (size_t i = 0; tail && hints[i]; i++) {
        if (strstr(tail, hints[i]))
            return true;
    }
    return false;
}

/* Moves the finished temp file into place and writes the result. */
static int finish_output(render_proc_t *p, const render_job_t *rj, const char *temp_path,
                         kiln_job_outcome_t *o)
{
    char final_path[PATH_MAX];
    struct stat sb;
    if (snprintf(final_path, sizeof final_path, "%s/%s", p->st->outputs_dir, rj->output_name) >=
        (int)sizeof final_path)
        return kiln_job_outcome_fail(o, false, "output path too long");
    if (stat(temp_path, &sb) < 0 || sb.st_size == 0)
        return kiln_job_outcome_fail(o, false, "ffmpeg exited 0 but wrote no output");
    if (rename(temp_path, final_path) < 0)
        return kiln_job_outcome_fail(o, true, "cannot move the output to %s: %s", final_path,
                                     strerror(errno));
    double duration = p->rendered_s > 0 ? p->rendered_s : p->duration_s;
    json_t *result = json_pack(
        "{s:s, s:I, s:f, s:I, s:I, s:s}", "output", final_path, "bytes", (json_int_t)sb.st_size,
        "duration_s", duration > 0 ? round(duration * 1000) / 1000 : 0.0, "width",
        (json_int_t)rj->width, "height", (json_int_t)rj->height, "format", rj->format->name);
    o->result_json = result ? json_dumps(result, JSON_COMPACT) : NULL;
    json_decref(result);
    if (!o->result_json)
        return KILN_ENOMEM;
    o->status = KILN_OUTCOME_COMPLETED;
    return 0;
}

static int render_outcome(render_proc_t *p, const render_job_t *rj, const char *temp_path,
                          int64_t timeout_ms, kiln_job_outcome_t *o)
{
    if (p->stop == STOP_INTERNAL)
        return KILN_ENOMEM;
    if (p->stop == STOP_CANCEL) {
        o->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    if (p->stop == STOP_TIMEOUT)
        return kiln_job_outcome_fail(o, true, "timed out after %" PRId64 " ms", timeout_ms);
    if (WIFEXITED(p->wait_status) && WEXITSTATUS(p->wait_status) == 0)
        return finish_output(p, rj, temp_path, o);
    char *tail = kiln_connector_tail_text(&p->tail, RENDER_FAIL_TAIL_BYTES);
    const char *sep = tail ? "; stderr: " : "";
    int rc;
    if (WIFSIGNALED(p->wait_status)) {
        int sig = WTERMSIG(p->wait_status);
        const char *abbrev = sigabbrev_np(sig);
        rc = kiln_job_outcome_fail(o, true, "ffmpeg was killed by signal %d (SIG%s)%s%s", sig,
                                   abbrev ? abbrev : "?", sep, tail ? tail : "");
    } else {
        rc = kiln_job_outcome_fail(o, looks_transient(tail), "ffmpeg exited with code %d%s%s",
                                   WEXITSTATUS(p->wait_status), sep, tail ? tail : "");
    }
    free(tail);
    return rc;
}

static int render_ffmpeg(const render_state_t *st, const kiln_job_context_t *job,
                         const render_job_t *rj, double duration_s, int64_t deadline_ms,
                         int64_t timeout_ms, kiln_job_outcome_t *o)
{
    char temp_path[PATH_MAX];
    if (snprintf(temp_path, sizeof temp_path, "%s/.kiln-render-XXXXXX.%s", st->temp_dir,
                 rj->format->name) >= (int)sizeof temp_path)
        return kiln_job_outcome_fail(o, false, "connectors.%s.temp_dir: path too long", st->name);
    /* mkstemps reserves a unique name; ffmpeg (-y) writes over it. */
    int fd = mkstemps(temp_path, (int)strlen(rj->format->name) + 1);
    if (fd < 0)
        return kiln_job_outcome_fail(o, true, "cannot create a file in %s: %s", st->temp_dir,
                                     strerror(errno));
    close(fd);
    char **argv = expand_template(st, rj, temp_path);
    if (!argv) {
        unlink(temp_path);
        return KILN_ENOMEM;
    }
    render_proc_t p;
    proc_init(&p, st, job, deadline_ms);
    p.path = st->ffmpeg;
    p.on_stdout = on_progress_line;
    p.duration_s = duration_s;
    int e = proc_spawn(&p, argv);
    int rc = e ? kiln_job_outcome_fail(o, false, "cannot run %s: %s", st->ffmpeg, strerror(e)) : 0;
    if (!e) {
        proc_wait(&p);
        rc = render_outcome(&p, rj, temp_path, timeout_ms, o);
    }
    if (rc < 0 || o->status != KILN_OUTCOME_COMPLETED)
        unlink(temp_path);
    kiln_connector_free_strings(argv);
    kiln_connector_tail_close(&p.tail);
    return rc;
}

static int render_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    const render_state_t *st = state;
    if (job->cancel && atomic_load(job->cancel)) {
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    render_job_t rj;
    memset(&rj, 0, sizeof rj);
    if (!parse_payload(st, job, &rj, out))
        return out->error ? 0 : KILN_ENOMEM;
    int64_t timeout_ms = st->timeout_ms;
    if (job->timeout_ms > 0 && (timeout_ms == 0 || job->timeout_ms < timeout_ms))
        timeout_ms = job->timeout_ms;
    int64_t deadline_ms = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    double duration_s;
    if (!probe_duration(st, job, &rj, deadline_ms, timeout_ms, &duration_s, out))
        return out->status == KILN_OUTCOME_CANCELLED || out->error ? 0 : KILN_ENOMEM;
    if (job->progress)
        job->progress(job->progress_ctx, 0, "starting ffmpeg");
    return render_ffmpeg(st, job, &rj, duration_s, deadline_ms, timeout_ms, out);
}

const kiln_connector_ops_t kiln_connector_render = {
    .type = "render",
    .init = render_init,
    .run = render_run,
    .health = render_health,
    .free = render_free,
};
