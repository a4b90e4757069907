/*
 * The render connector: renders a video with ffmpeg from a configured argv
 * template (never a shell). A job's values fill placeholders: numbers may
 * sit inside a larger argument ("s={width}x{height}"), but paths only ever
 * fill a whole argument ({input}, {output}), so nothing in a payload can
 * become an option or a filter. ffprobe reads the input's duration first;
 * `-progress pipe:1` on stdout then gives the percent. The output is
 * written to a temporary name and renamed into the outputs folder only on
 * success; every other end removes it. The template and the payload
 * checks are render_job.c's, the processes child.c's.
 */
#include "child.h"
#include "outputs.h"
#include "render_internal.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define RENDER_MAX_TIMEOUT_MS  (7LL * 24 * 3600 * 1000)
#define RENDER_PROBE_TIMEOUT   30000
#define RENDER_LINE_MAX        1024
#define RENDER_TAIL_BYTES      (64 * 1024)
#define RENDER_FAIL_TAIL_BYTES 2048

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

typedef struct line_buf {
    char text[RENDER_LINE_MAX];
    size_t len;
    bool overflow; /* the current line was too long: dropped */
} line_buf_t;

/* One child process (ffprobe or ffmpeg) and what it said. */
typedef struct render_proc {
    const render_state_t *st;
    const kiln_job_context_t *job;
    kiln_child_t child;
    line_buf_t out_line, err_line;
    void (*on_stdout_line)(struct render_proc *p, char *line);
    double duration_s, rendered_s, last_percent; /* duration_s < 0: unknown */
    bool ended;
} render_proc_t;

static const char *const known_options[] = {
    "command", "outputs_dir", "temp_dir", "inputs_dir", "ffprobe", "timeout_ms", "kill_grace_ms",
    "env",     "width",       "height",   "fps",        "format",  NULL};

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
    if (rc == 0 && !(st->format = kiln_render_find_format(format ? format : "mp4")))
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
    rc = kiln_render_check_template(cfg, st->argv, err);
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
    int rc = kiln_child_check_program(st->name, "command", st->ffmpeg, err);
    if (rc < 0)
        return rc;
    if (access(st->outputs_dir, W_OK | X_OK) < 0)
        return kiln_err_set(err, KILN_EIO, "connectors.%s.outputs_dir: %s is not writable: %s",
                            st->name, st->outputs_dir, strerror(errno));
    return 0;
}

/* ---- processes ---------------------------------------------------------------- */

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

static void on_stdout(void *ctx, const char *data, size_t len)
{
    render_proc_t *p = ctx;
    feed_lines(p, &p->out_line, data, len, p->on_stdout_line);
}

static void on_stderr(void *ctx, const char *data, size_t len)
{
    render_proc_t *p = ctx;
    feed_lines(p, &p->err_line, data, len, on_stderr_line);
}

/* Runs path with argv (stdin from /dev/null, in temp_dir) until it exits,
 * stopping it on cancel or at deadline_ms. Returns 1 when it ran (see
 * p->child), or 0 with a failure in o when it could not start. The caller
 * closes p->child either way. */
static int proc_run(render_proc_t *p, const char *path, char *const argv[], int64_t deadline_ms,
                    kiln_job_outcome_t *o)
{
    const render_state_t *st = p->st;
    kiln_child_options_t opts = {
        .path = path,
        .argv = argv,
        .envp = st->envp,
        .cwd = st->temp_dir,
        .deadline_ms = deadline_ms,
        .kill_grace_ms = st->kill_grace_ms,
        .stderr_tail_bytes = RENDER_TAIL_BYTES,
        .cancel = p->job->cancel,
        .cancel_fd = p->job->cancel_fd,
        .on_stdout = on_stdout,
        .on_stderr = on_stderr,
        .ctx = p,
    };
    return kiln_child_run(&p->child, &opts, o);
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
                      void (*on_stdout_line)(render_proc_t *, char *))
{
    memset(p, 0, sizeof *p);
    p->st = st, p->job = job, p->on_stdout_line = on_stdout_line;
    p->duration_s = -1;
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
    int64_t probe_deadline = kiln_child_now_ms() + RENDER_PROBE_TIMEOUT;
    render_proc_t p;
    proc_init(&p, st, job, on_probe_line);
    if (!proc_run(&p, st->ffprobe, argv,
                  deadline_ms > 0 && deadline_ms < probe_deadline ? deadline_ms : probe_deadline,
                  o)) {
        kiln_child_close(&p.child);
        return 0;
    }
    *duration_s = p.duration_s;
    char *tail = kiln_connector_tail_text(&p.child.tail, RENDER_FAIL_TAIL_BYTES);
    int stop = p.child.stop, status = p.child.wait_status, ok = 0;
    if (stop == KILN_CHILD_STOP_CANCEL)
        o->status = KILN_OUTCOME_CANCELLED;
    else if (stop == KILN_CHILD_STOP_TIMEOUT && deadline_ms > 0 &&
             kiln_child_now_ms() >= deadline_ms)
        kiln_job_outcome_fail(o, true, "timed out after %" PRId64 " ms", timeout_ms);
    else if (stop == KILN_CHILD_STOP_TIMEOUT)
        kiln_job_outcome_fail(o, true, "ffprobe did not read the input within %d ms",
                              RENDER_PROBE_TIMEOUT);
    else if (stop == KILN_CHILD_STOP_NONE && (!WIFEXITED(status) || WEXITSTATUS(status)))
        kiln_render_refuse(o, "payload.input: %s is not a media file ffprobe can read: %s",
                           rj->input, tail ? tail : "no details");
    else
        ok = stop == KILN_CHILD_STOP_NONE;
    free(tail);
    kiln_child_close(&p.child);
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
    const kiln_child_t *c = &p->child;
    if (c->stop == KILN_CHILD_STOP_INTERNAL)
        return c->internal_error;
    if (c->stop == KILN_CHILD_STOP_CANCEL) {
        o->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    if (c->stop == KILN_CHILD_STOP_TIMEOUT)
        return kiln_job_outcome_fail(o, true, "timed out after %" PRId64 " ms", timeout_ms);
    if (WIFEXITED(c->wait_status) && WEXITSTATUS(c->wait_status) == 0)
        return finish_output(p, rj, temp_path, o);
    char *tail = kiln_connector_tail_text(&c->tail, RENDER_FAIL_TAIL_BYTES);
    char *text = kiln_child_describe_exit(c, RENDER_FAIL_TAIL_BYTES);
    /* A signal is the machine's doing (OOM killer), not the job's. */
    bool retryable = WIFSIGNALED(c->wait_status) || looks_transient(tail);
    int rc = text ? kiln_job_outcome_fail(o, retryable, "ffmpeg %s%s",
                                          WIFSIGNALED(c->wait_status) ? "was " : "", text)
                  : KILN_ENOMEM;
    free(text);
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
    char **argv = kiln_render_expand_template(st, rj, temp_path);
    if (!argv) {
        unlink(temp_path);
        return KILN_ENOMEM;
    }
    render_proc_t p;
    proc_init(&p, st, job, on_progress_line);
    p.duration_s = duration_s;
    int rc = 0;
    if (proc_run(&p, st->ffmpeg, argv, deadline_ms, o))
        rc = render_outcome(&p, rj, temp_path, timeout_ms, o);
    if (rc < 0 || o->status != KILN_OUTCOME_COMPLETED)
        unlink(temp_path);
    kiln_connector_free_strings(argv);
    kiln_child_close(&p.child);
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
    if (!kiln_render_parse_payload(st, job, &rj, out))
        return out->error ? 0 : KILN_ENOMEM;
    int64_t timeout_ms = kiln_child_timeout_ms(st->timeout_ms, job->timeout_ms);
    int64_t deadline_ms = timeout_ms > 0 ? kiln_child_now_ms() + timeout_ms : 0;
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
