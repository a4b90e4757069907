/*
 * The render connector's argv template and payload checks: a job's values
 * fill the template's placeholders, numbers and the format name inside an
 * argument, paths and the codec list only as whole arguments.
 */
#include "render_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* The format called name, or NULL. */
const render_format_t *kiln_render_find_format(const char *name)
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
int kiln_render_check_template(const kiln_connector_config_t *cfg, char **argv, kiln_err_t *err)
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
char **kiln_render_expand_template(const render_state_t *st, const render_job_t *rj,
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

/* ---- the payload ------------------------------------------------------------ */

/* A non-retryable failure in o; returns 0 (render_internal.h). */
int kiln_render_refuse(kiln_job_outcome_t *o, const char *fmt, ...)
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
        kiln_render_refuse(o, "payload.%s: expected an integer %" PRId64 "-%" PRId64 ", got %s",
                           key, min, max, got);
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
        return kiln_render_refuse(o, "payload.input: expected the path of the file to "
                                     "render");
    if (input[0] == '-')
        return kiln_render_refuse(o, "payload.input: \"%s\" starts with '-'; expected a path",
                                  input),
               0;
    char joined[PATH_MAX];
    if (input[0] != '/' && !st->inputs_dir)
        return kiln_render_refuse(o, "payload.input: \"%s\" must be an absolute path", input);
    if (input[0] != '/' &&
        snprintf(joined, sizeof joined, "%s/%s", st->inputs_dir, input) >= (int)sizeof joined)
        return kiln_render_refuse(o, "payload.input: path too long");
    struct stat sb;
    if (!realpath(input[0] == '/' ? input : joined, rj->input) || stat(rj->input, &sb) < 0)
        return kiln_render_refuse(o, "payload.input: \"%s\": %s", input, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return kiln_render_refuse(o, "payload.input: \"%s\" is not a regular file", input);
    size_t n = st->inputs_dir ? strlen(st->inputs_dir) : 0;
    if (st->inputs_dir && (strncmp(rj->input, st->inputs_dir, n) != 0 || rj->input[n] != '/'))
        return kiln_render_refuse(o,
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
            return kiln_render_refuse(o,
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
int kiln_render_parse_payload(const render_state_t *st, const kiln_job_context_t *job,
                              render_job_t *rj, kiln_job_outcome_t *o)
{
    json_error_t jerr;
    json_t *payload = json_loads(job->payload_json ? job->payload_json : "", 0, &jerr);
    if (!json_is_object(payload)) {
        json_decref(payload);
        return kiln_render_refuse(o, "payload: expected a JSON object with \"input\"");
    }
    int ok = payload_int(payload, "width", 16, 7680, st->width, &rj->width, o) &&
             payload_int(payload, "height", 16, 4320, st->height, &rj->height, o) &&
             payload_int(payload, "fps", 1, 120, st->fps, &rj->fps, o);
    if (ok && (rj->width % 2 || rj->height % 2))
        ok = kiln_render_refuse(
            o, "payload: width and height must be even (yuv420p), got %" PRId64 "x%" PRId64,
            rj->width, rj->height);
    json_t *format = json_object_get(payload, "format");
    rj->format = st->format;
    if (ok && format && !json_is_null(format) &&
        !(rj->format = kiln_render_find_format(json_string_value(format)))) {
        char got[64];
        kiln_connector_describe_value(format, got, sizeof got);
        ok = kiln_render_refuse(o, "payload.format: expected \"mp4\" or \"webm\", got %s", got);
    }
    ok = ok && check_output_name(payload, job->job_id, rj, o) && check_input(st, payload, rj, o);
    json_decref(payload);
    return ok;
}
