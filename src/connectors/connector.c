/*
 * The connector interface: a table of built-in types, the instance wrapper
 * the worker holds, job outcomes, and the option-reading helpers every
 * connector's init() uses so their error messages read alike.
 */
#include "kiln/connector.h"
#include "kiln/log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

struct kiln_connector {
    const kiln_connector_ops_t *ops;
    void *state;
    char *name;
};

static const kiln_connector_ops_t *const builtin_types[] = {
    &kiln_connector_simulation, &kiln_connector_exec,       &kiln_connector_openai,
    &kiln_connector_render,     &kiln_connector_playwright, &kiln_connector_comfyui,
    &kiln_connector_ollama,     &kiln_connector_a1111,      &kiln_connector_replicate,
    &kiln_connector_runpod,
};

#define N_BUILTIN_TYPES (sizeof builtin_types / sizeof builtin_types[0])

const kiln_connector_ops_t *kiln_connector_find_type(const char *type)
{
    for (size_t i = 0; type && i < N_BUILTIN_TYPES; i++) {
        if (strcmp(builtin_types[i]->type, type) == 0)
            return builtin_types[i];
    }
    return NULL;
}

static void list_types(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_BUILTIN_TYPES && used < size; i++) {
        int n = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", builtin_types[i]->type);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

int kiln_connector_new(const kiln_connector_config_t *cfg, kiln_connector_t **out, kiln_err_t *err)
{
    *out = NULL;
    if (!cfg || !cfg->name || !cfg->name[0])
        return kiln_err_set(err, KILN_EINVAL, "connectors: a connector needs a non-empty name");
    const kiln_connector_ops_t *ops = kiln_connector_find_type(cfg->type);
    if (!ops) {
        char types[256];
        list_types(types, sizeof types);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.type: unknown connector type \"%s\"; expected one of %s",
                            cfg->name, cfg->type ? cfg->type : "", types);
    }
    if (cfg->options && !json_is_object(cfg->options))
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s: expected an object of options, got a JSON %s",
                            cfg->name, json_is_array(cfg->options) ? "array" : "scalar");

    kiln_connector_t *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(cfg->name))) {
        free(c);
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    }
    c->ops = ops;
    int rc = ops->init(cfg, &c->state, err);
    if (rc < 0) {
        free(c->name);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* Runs one job; out is overwritten (it must hold nothing owned on entry). */
int kiln_connector_run(kiln_connector_t *c, const kiln_job_context_t *job, kiln_job_outcome_t *out)
{
    memset(out, 0, sizeof *out);
    return c->ops->run(c->state, job, out);
}

int kiln_connector_health(kiln_connector_t *c, kiln_err_t *err)
{
    kiln_err_clear(err);
    if (!c->ops->health)
        return 0;
    return c->ops->health(c->state, err);
}

const char *kiln_connector_name(const kiln_connector_t *c)
{
    return c->name;
}

void kiln_connector_free(kiln_connector_t *c)
{
    if (!c)
        return;
    if (c->ops->free)
        c->ops->free(c->state);
    free(c->name);
    free(c);
}

/* Frees what out owns and resets it to an empty completed outcome. */
void kiln_job_outcome_clear(kiln_job_outcome_t *out)
{
    if (!out)
        return;
    free(out->result_json);
    free(out->error);
    memset(out, 0, sizeof *out);
}

/* Replaces whatever out held by a failure. Returns 0, or KILN_ENOMEM when
 * the message cannot be allocated (out is then cleared), so a connector can
 * `return kiln_job_outcome_fail(...)` from run(). */
int kiln_job_outcome_fail(kiln_job_outcome_t *out, bool retryable, const char *fmt, ...)
{
    kiln_job_outcome_clear(out);
    char *message = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&message, fmt, ap);
    va_end(ap);
    if (n < 0)
        return KILN_ENOMEM;
    out->status = KILN_OUTCOME_FAILED;
    out->error = message;
    out->retryable = retryable;
    return 0;
}

void kiln_connector_describe_value(const json_t *value, char *buf, size_t size)
{
    if (!size)
        return;
    if (!value) {
        snprintf(buf, size, "nothing");
        return;
    }
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        snprintf(buf, size, "an unprintable value");
        return;
    }
    /* Keep messages one short line even when someone pasted a document. */
    const size_t max_shown = size < 64 ? size - 1 : 63;
    if (strlen(text) > max_shown && max_shown > 3)
        snprintf(buf, size, "%.*s...", (int)(max_shown - 3), text);
    else
        snprintf(buf, size, "%s", text);
    free(text);
}

/* Fails out naming a bad payload field (contract in kiln/connector.h). */
int kiln_job_outcome_bad_field(kiln_job_outcome_t *out, const char *field, const char *expected,
                               const json_t *value)
{
    char got[64];
    kiln_connector_describe_value(value, got, sizeof got);
    return kiln_job_outcome_fail(out, false, "payload.%s: expected %s, got %s", field, expected,
                                 got);
}

static json_t *option_value(const kiln_connector_config_t *cfg, const char *key)
{
    json_t *v = cfg->options ? json_object_get(cfg->options, key) : NULL;
    return json_is_null(v) ? NULL : v;
}

int kiln_connector_option_int(const kiln_connector_config_t *cfg, const char *key, int64_t min,
                              int64_t max, int64_t def, int64_t *out, kiln_err_t *err)
{
    *out = def;
    json_t *v = option_value(cfg, key);
    if (!v)
        return 0;
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    if (!json_is_integer(v) || n < min || n > max) {
        char got[64];
        kiln_connector_describe_value(v, got, sizeof got);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.%s: expected an integer %" PRId64 "-%" PRId64 ", got %s",
                            cfg->name, key, min, max, got);
    }
    *out = n;
    return 0;
}

int kiln_connector_option_number(const kiln_connector_config_t *cfg, const char *key, double min,
                                 double max, double def, double *out, kiln_err_t *err)
{
    *out = def;
    json_t *v = option_value(cfg, key);
    if (!v)
        return 0;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x >= min && x <= max)) {
        char got[64];
        kiln_connector_describe_value(v, got, sizeof got);
        return kiln_err_set(err, KILN_EINVAL, "connectors.%s.%s: expected a number %g-%g, got %s",
                            cfg->name, key, min, max, got);
    }
    *out = x;
    return 0;
}

int kiln_connector_option_string(const kiln_connector_config_t *cfg, const char *key,
                                 const char **out, kiln_err_t *err)
{
    *out = NULL;
    json_t *v = option_value(cfg, key);
    if (!v)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        char got[64];
        kiln_connector_describe_value(v, got, sizeof got);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.%s: expected a non-empty string, got %s", cfg->name, key,
                            got);
    }
    *out = json_string_value(v);
    return 0;
}

void kiln_connector_warn_unknown_options(const kiln_connector_config_t *cfg,
                                         const char *const known[])
{
    if (!cfg->options || !json_is_object(cfg->options))
        return;
    const char *key;
    json_t *value;
    json_object_foreach(cfg->options, key, value)
    {
        bool found = strcmp(key, "type") == 0;
        for (size_t i = 0; !found && known[i]; i++)
            found = strcmp(key, known[i]) == 0;
        if (!found)
            kiln_log(KILN_LOG_WARN, "connector", NULL, NULL,
                     "connectors.%s.%s: unknown option for a %s connector; it is ignored "
                     "(check the spelling)",
                     cfg->name, key, cfg->type ? cfg->type : "");
    }
}

/* ---- helpers for connectors that run programs ------------------------------ */

void kiln_connector_free_strings(char **list)
{
    for (size_t i = 0; list && list[i]; i++)
        free(list[i]);
    free(list);
}

int kiln_connector_option_argv(const kiln_connector_config_t *cfg, const char *key, char ***out,
                               kiln_err_t *err)
{
    *out = NULL;
    json_t *cmd = option_value(cfg, key);
    if (!cmd)
        return 0;
    char got[64];
    if (!json_is_array(cmd) || json_array_size(cmd) == 0) {
        kiln_connector_describe_value(cmd, got, sizeof got);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.%s: expected a non-empty array of strings, the "
                            "program and its arguments (run without a shell), e.g. "
                            "[\"/usr/bin/python3\", \"job.py\"]; got %s",
                            cfg->name, key, got);
    }
    size_t n = json_array_size(cmd);
    char **argv = calloc(n + 1, sizeof *argv);
    for (size_t i = 0; argv && i < n; i++) {
        json_t *arg = json_array_get(cmd, i);
        if (!json_is_string(arg) || (i == 0 && json_string_length(arg) == 0)) {
            kiln_connector_free_strings(argv);
            kiln_connector_describe_value(arg, got, sizeof got);
            return kiln_err_set(err, KILN_EINVAL,
                                "connectors.%s.%s[%zu]: expected a %sstring, got %s", cfg->name,
                                key, i, i == 0 ? "non-empty " : "", got);
        }
        if (!(argv[i] = strdup(json_string_value(arg)))) {
            kiln_connector_free_strings(argv);
            argv = NULL;
        }
    }
    if (!argv)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    *out = argv;
    return 0;
}

static bool env_entry_overridden(const json_t *env, const char *entry)
{
    const char *eq = strchr(entry, '=');
    char name[256];
    size_t len = eq ? (size_t)(eq - entry) : 0;
    if (!env || !eq || len >= sizeof name)
        return false;
    memcpy(name, entry, len);
    name[len] = '\0';
    return json_object_get(env, name) != NULL;
}

static int env_add_overrides(const kiln_connector_config_t *cfg, const char *key, json_t *env,
                             char **envp, size_t used, kiln_err_t *err)
{
    const char *name;
    json_t *value;
    json_object_foreach(env, name, value)
    {
        if (!name[0] || strchr(name, '=') || !json_is_string(value)) {
            char got[64];
            kiln_connector_describe_value(value, got, sizeof got);
            return kiln_err_set(err, KILN_EINVAL,
                                "connectors.%s.%s.%s: expected a variable name without '=' and "
                                "a string value, got %s",
                                cfg->name, key, name, got);
        }
        if (asprintf(&envp[used], "%s=%s", name, json_string_value(value)) < 0) {
            envp[used] = NULL;
            return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
        }
        used++;
    }
    return 0;
}

int kiln_connector_option_env(const kiln_connector_config_t *cfg, const char *key, char ***out,
                              kiln_err_t *err)
{
    *out = NULL;
    json_t *env = option_value(cfg, key);
    if (env && !json_is_object(env)) {
        char got[64];
        kiln_connector_describe_value(env, got, sizeof got);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.%s: expected an object of NAME: \"value\" strings, "
                            "got %s",
                            cfg->name, key, got);
    }
    size_t n_environ = 0;
    while (environ && environ[n_environ])
        n_environ++;
    char **envp = calloc(n_environ + (env ? json_object_size(env) : 0) + 1, sizeof *envp);
    size_t used = 0;
    for (size_t i = 0; envp && i < n_environ; i++) {
        if (env_entry_overridden(env, environ[i]))
            continue;
        if (!(envp[used++] = strdup(environ[i]))) {
            kiln_connector_free_strings(envp);
            envp = NULL;
        }
    }
    if (!envp)
        return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
    int rc = env ? env_add_overrides(cfg, key, env, envp, used, err) : 0;
    if (rc < 0) {
        kiln_connector_free_strings(envp);
        return rc;
    }
    *out = envp;
    return 0;
}

int kiln_connector_check_executable(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) < 0)
        return errno;
    if (!S_ISREG(sb.st_mode))
        return EACCES;
    return access(path, X_OK) == 0 ? 0 : errno;
}

static const char *env_lookup(char *const envp[], const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++) {
        if (strncmp(envp[i], name, len) == 0 && envp[i][len] == '=')
            return envp[i] + len + 1;
    }
    return NULL;
}

static int copy_path(const kiln_connector_config_t *cfg, const char *path, char **out,
                     kiln_err_t *err)
{
    *out = strdup(path);
    return *out ? 0 : kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", cfg->name);
}

/* Relative PATH entries are skipped: what they find would depend on the
 * working directory at run time. */
int kiln_connector_resolve_program(const kiln_connector_config_t *cfg, const char *key,
                                   const char *program, char *const envp[], char **out,
                                   kiln_err_t *err)
{
    *out = NULL;
    if (strchr(program, '/')) {
        int e = program[0] == '/' ? kiln_connector_check_executable(program) : 0;
        if (program[0] != '/')
            return kiln_err_set(err, KILN_EINVAL,
                                "connectors.%s.%s: \"%s\" is a relative path; give an absolute "
                                "path or a program name found in PATH",
                                cfg->name, key, program);
        if (e)
            return kiln_err_set(err, KILN_EINVAL,
                                "connectors.%s.%s: cannot run \"%s\": %s; expected an "
                                "executable file",
                                cfg->name, key, program, strerror(e));
        return copy_path(cfg, program, out, err);
    }
    const char *search = env_lookup(envp, "PATH");
    if (!search)
        search = "/usr/local/bin:/usr/bin:/bin";
    for (const char *dir = search; *dir;) {
        size_t len = strcspn(dir, ":");
        char candidate[PATH_MAX];
        int n = snprintf(candidate, sizeof candidate, "%.*s/%s", (int)len, dir, program);
        if (dir[0] == '/' && n > 0 && (size_t)n < sizeof candidate &&
            kiln_connector_check_executable(candidate) == 0)
            return copy_path(cfg, candidate, out, err);
        dir += len + (dir[len] == ':');
    }
    return kiln_err_set(err, KILN_EINVAL,
                        "connectors.%s.%s: \"%s\" was not found as an executable in PATH (%s); "
                        "install it or give an absolute path",
                        cfg->name, key, program, search);
}

/* The length of the valid UTF-8 sequence at s (as jansson checks it: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_sequence_length(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n = c < 0x80             ? 1
               : (c & 0xE0) == 0xC0 ? 2
               : (c & 0xF0) == 0xE0 ? 3
               : (c & 0xF8) == 0xF0 ? 4
                                    : 0;
    if (n == 0 || n > left)
        return 0;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; k < n; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

void kiln_connector_sanitize_text(char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n = utf8_sequence_length((const unsigned char *)s + i, len - i);
        if (n == 0 || (c < 0x20 && c != '\n' && c != '\t') || c == 0x7F) {
            s[i++] = '?';
            continue;
        }
        i += n;
    }
}

/* ---- a bounded tail of a stream ------------------------------------------------ */

void kiln_connector_tail_init(kiln_connector_tail_t *t, size_t cap)
{
    memset(t, 0, sizeof *t);
    t->cap = cap;
}

int kiln_connector_tail_append(kiln_connector_tail_t *t, const char *data, size_t len)
{
    if (t->cap == 0 || len == 0)
        return 0;
    if (!t->buf && !(t->buf = malloc(t->cap)))
        return KILN_ENOMEM;
    if (len >= t->cap) {
        memcpy(t->buf, data + len - t->cap, t->cap);
        t->pos = 0;
        t->used = t->cap;
        return 0;
    }
    size_t first = t->cap - t->pos < len ? t->cap - t->pos : len;
    memcpy(t->buf + t->pos, data, first);
    memcpy(t->buf, data + first, len - first);
    t->pos = (t->pos + len) % t->cap;
    t->used = t->used + len > t->cap ? t->cap : t->used + len;
    return 0;
}

char *kiln_connector_tail_text(const kiln_connector_tail_t *t, size_t max)
{
    size_t want = t->used < max ? t->used : max;
    char *text = want ? malloc(want + 1) : NULL;
    if (!text)
        return NULL;
    size_t start = (t->pos + t->cap - want) % t->cap;
    for (size_t i = 0; i < want; i++)
        text[i] = t->buf[(start + i) % t->cap];
    /* Cut in the middle of a line: start at the next one if there is one. */
    size_t skip = 0;
    const char *nl = want < t->used ? memchr(text, '\n', want) : NULL;
    if (nl && (size_t)(nl - text) + 1 < want)
        skip = (size_t)(nl - text) + 1;
    size_t len = want - skip;
    memmove(text, text + skip, len);
    while (len > 0 && (text[len - 1] == 0 || strchr("\r\n\t ", text[len - 1])))
        len--;
    text[len] = '\0';
    kiln_connector_sanitize_text(text, len);
    if (len == 0) {
        free(text);
        return NULL;
    }
    return text;
}

void kiln_connector_tail_close(kiln_connector_tail_t *t)
{
    free(t->buf);
    memset(t, 0, sizeof *t);
}
