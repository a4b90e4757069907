/*
 * The exec connector: runs any program (argv, never a shell) per job. The
 * job goes to its stdin as one JSON line; it answers on stdout with NDJSON
 * progress, result and error lines (docs/connectors.md). The process
 * itself (spawn, pipes, timeout, cancel, reaping) is child.c's.
 */
#include "child.h"

#include "kiln/connector.h"
#include "kiln/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define EXEC_MAX_TIMEOUT_MS  (7LL * 24 * 3600 * 1000)
#define EXEC_LOG_LINE_MAX    1024
#define EXEC_FAIL_TAIL_BYTES 2048
#define EXEC_ERROR_MAX_BYTES 4096

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

/* Why exec stops a child, beyond child.c's own reasons. */
enum {
    STOP_OUTPUT_LIMIT = KILN_CHILD_STOP_CALLER,
    STOP_LINE_LIMIT,
};

/* Everything one job's run owns: the child and what it said. */
typedef struct exec_run {
    const exec_state_t *st;
    const kiln_job_context_t *job;
    kiln_child_t child;
    char *input;
    size_t input_len;
    char *line; /* the stdout line being assembled */
    size_t line_len, line_cap;
    int64_t stdout_bytes;
    char log_line[EXEC_LOG_LINE_MAX + 1];
    size_t log_len;
    char *result_json;
    bool has_result, has_error, error_retryable;
    char *error_message;
    int64_t timeout_ms;
} exec_run_t;

static const char *const known_options[] = {"command",
                                            "timeout_ms",
                                            "max_output_bytes",
                                            "max_line_bytes",
                                            "stderr_tail_bytes",
                                            "env",
                                            "cwd",
                                            "kill_grace_ms",
                                            NULL};

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
    return kiln_child_check_program(st->name, "command", st->path, err);
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
        kiln_child_fail(&r->child, KILN_ENOMEM);
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
            kiln_child_fail(&r->child, KILN_ENOMEM);
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
        kiln_child_stop(&r->child, STOP_LINE_LIMIT);
        return false;
    }
    if (r->line_len + len + 1 > r->line_cap) {
        size_t cap = r->line_cap ? r->line_cap : 4096;
        while (cap < r->line_len + len + 1)
            cap *= 2;
        char *grown = realloc(r->line, cap);
        if (!grown) {
            kiln_child_fail(&r->child, KILN_ENOMEM);
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
    while (len > 0 && r->child.stop == KILN_CHILD_STOP_NONE) {
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

/* child.c's stdout callback: counts the bytes against max_output_bytes and
 * splits them into lines. Output after a stop is read and discarded. */
static void on_stdout(void *ctx, const char *data, size_t len)
{
    exec_run_t *r = ctx;
    if (r->child.stop != KILN_CHILD_STOP_NONE)
        return;
    r->stdout_bytes += (int64_t)len;
    if (r->stdout_bytes > r->st->max_output_bytes) {
        kiln_child_stop(&r->child, STOP_OUTPUT_LIMIT);
        return;
    }
    feed_stdout(r, data, len);
}

/* ---- stderr: the log (child.c keeps the tail) ------------------------------ */

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

static void on_stderr(void *ctx, const char *data, size_t len)
{
    exec_run_t *r = ctx;
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

/* ---- the outcome ---------------------------------------------------------- */

static int exit_failure(exec_run_t *r, kiln_job_outcome_t *out)
{
    char *text = kiln_child_describe_exit(&r->child, EXEC_FAIL_TAIL_BYTES);
    if (!text)
        return KILN_ENOMEM;
    int rc = kiln_job_outcome_fail(out, true, "%s", text);
    free(text);
    return rc;
}

static int make_outcome(exec_run_t *r, kiln_job_outcome_t *out)
{
    const char *name = r->st->name;
    int status = r->child.wait_status;
    switch (r->child.stop) {
    case KILN_CHILD_STOP_INTERNAL:
        return r->child.internal_error;
    case KILN_CHILD_STOP_CANCEL:
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    case KILN_CHILD_STOP_TIMEOUT:
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
    }
    if (r->has_error)
        return kiln_job_outcome_fail(out, r->error_retryable, "%s", r->error_message);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        out->status = KILN_OUTCOME_COMPLETED;
        out->result_json = r->result_json; /* NULL: the program gave no result */
        r->result_json = NULL;
        return 0;
    }
    return exit_failure(r, out);
}

static void run_close(exec_run_t *r)
{
    kiln_child_close(&r->child);
    free(r->input);
    free(r->line);
    free(r->result_json);
    free(r->error_message);
}

/* Spawns the program, runs it to its end and reads the outcome. */
static int run_child(exec_run_t *r, kiln_job_outcome_t *out)
{
    const exec_state_t *st = r->st;
    kiln_child_options_t opts = {
        .path = st->path,
        .argv = st->argv,
        .envp = st->envp,
        .cwd = st->cwd,
        .input = r->input,
        .input_len = r->input_len,
        .deadline_ms = r->timeout_ms > 0 ? kiln_child_now_ms() + r->timeout_ms : 0,
        .kill_grace_ms = st->kill_grace_ms,
        .stderr_tail_bytes = (size_t)st->stderr_tail_bytes,
        .cancel = r->job->cancel,
        .cancel_fd = r->job->cancel_fd,
        .on_stdout = on_stdout,
        .on_stderr = on_stderr,
        .ctx = r,
    };
    if (!kiln_child_run(&r->child, &opts, out))
        return 0;
    if (r->line_len > 0 && r->child.stop == KILN_CHILD_STOP_NONE)
        handle_line(r, r->line, r->line_len); /* a last line without '\n' */
    log_stderr_line(r);
    return make_outcome(r, out);
}

static int exec_run(void *state, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    exec_run_t r = {.st = state, .job = job};
    kiln_child_init(&r.child, &(kiln_child_options_t){.cancel_fd = -1});
    if (job->cancel && atomic_load(job->cancel)) {
        out->status = KILN_OUTCOME_CANCELLED;
        return 0;
    }
    r.timeout_ms = kiln_child_timeout_ms(r.st->timeout_ms, job->timeout_ms);
    int rc = build_input(&r, out);
    if (rc == 0 && r.input) /* !r.input: out holds a bad-payload failure */
        rc = run_child(&r, out);
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
