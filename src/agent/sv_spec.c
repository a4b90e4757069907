/*
 * Service specs: defaults, deep copies, equality (what a reload leaves
 * alone) and validation of a whole set (names, dependencies, cycles).
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sv_internal.h"

/* Sets the documented defaults; name and argv are left for the caller. */
void kiln_svc_spec_init(kiln_svc_spec_t *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->restart = KILN_RESTART_ALWAYS;
    spec->ready.kind = KILN_READY_NONE;
    spec->ready.interval_ms = 200;
    spec->ready.timeout_ms = 2000;
    spec->ready.deadline_ms = 120000;
    spec->stop_signal = SIGTERM;
    spec->stop_timeout_ms = 10000;
    spec->backoff_base_ms = 100;
    spec->backoff_max_ms = 30000;
    spec->stable_ms = 10000;
    spec->max_failures = 5;
    spec->failure_window_ms = 60000;
}

static void strv_free(char **v)
{
    if (!v)
        return;
    for (size_t i = 0; v[i]; i++)
        free(v[i]);
    free(v);
}

/* Frees everything the spec owns and leaves it zeroed. */
void kiln_svc_spec_clear(kiln_svc_spec_t *spec)
{
    if (!spec)
        return;
    free(spec->name);
    strv_free(spec->argv);
    strv_free(spec->env);
    free(spec->cwd);
    strv_free(spec->depends_on);
    free(spec->done_marker);
    free(spec->ready.target);
    strv_free(spec->ready.argv);
    memset(spec, 0, sizeof *spec);
}

static int str_dup(char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : KILN_ENOMEM;
}

static int strv_dup(char ***dst, char *const *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    size_t n = 0;
    while (src[n])
        n++;
    char **v = calloc(n + 1, sizeof *v);
    if (!v)
        return KILN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!(v[i] = strdup(src[i]))) {
            strv_free(v);
            return KILN_ENOMEM;
        }
    }
    *dst = v;
    return 0;
}

/* Deep-copies src into dst (dst owns the copies). 0 or KILN_ENOMEM, with
 * dst cleared on failure. */
int sv_spec_copy(kiln_svc_spec_t *dst, const kiln_svc_spec_t *src)
{
    *dst = *src;
    dst->name = dst->cwd = dst->done_marker = dst->ready.target = NULL;
    dst->argv = dst->env = dst->depends_on = dst->ready.argv = NULL;
    if (str_dup(&dst->name, src->name) || strv_dup(&dst->argv, src->argv) ||
        strv_dup(&dst->env, src->env) || str_dup(&dst->cwd, src->cwd) ||
        strv_dup(&dst->depends_on, src->depends_on) ||
        str_dup(&dst->done_marker, src->done_marker) ||
        str_dup(&dst->ready.target, src->ready.target) ||
        strv_dup(&dst->ready.argv, src->ready.argv)) {
        kiln_svc_spec_clear(dst);
        return KILN_ENOMEM;
    }
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool strv_eq(char *const *a, char *const *b)
{
    if (!a || !b)
        return (!a || !a[0]) && (!b || !b[0]);
    size_t i = 0;
    for (; a[i] && b[i]; i++) {
        if (strcmp(a[i], b[i]) != 0)
            return false;
    }
    return !a[i] && !b[i];
}

static bool ready_eq(const kiln_ready_check_t *a, const kiln_ready_check_t *b)
{
    return a->kind == b->kind && str_eq(a->target, b->target) && strv_eq(a->argv, b->argv) &&
           a->interval_ms == b->interval_ms && a->timeout_ms == b->timeout_ms &&
           a->deadline_ms == b->deadline_ms;
}

/* True when every field that shapes a run is the same. */
bool kiln_svc_spec_equal(const kiln_svc_spec_t *a, const kiln_svc_spec_t *b)
{
    return str_eq(a->name, b->name) && strv_eq(a->argv, b->argv) && strv_eq(a->env, b->env) &&
           str_eq(a->cwd, b->cwd) && strv_eq(a->depends_on, b->depends_on) &&
           a->oneshot == b->oneshot && str_eq(a->done_marker, b->done_marker) &&
           a->oneshot_timeout_ms == b->oneshot_timeout_ms && a->restart == b->restart &&
           ready_eq(&a->ready, &b->ready) && a->stop_signal == b->stop_signal &&
           a->stop_timeout_ms == b->stop_timeout_ms && a->memory_limit_mb == b->memory_limit_mb &&
           a->backoff_base_ms == b->backoff_base_ms && a->backoff_max_ms == b->backoff_max_ms &&
           a->stable_ms == b->stable_ms && a->max_failures == b->max_failures &&
           a->failure_window_ms == b->failure_window_ms;
}

static bool name_valid(const char *name)
{
    if (!name || !name[0] || strlen(name) > 64)
        return false;
    for (const char *p = name; *p; p++) {
        bool alnum = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9');
        if (!alnum && (p == name || (*p != '_' && *p != '-')))
            return false;
    }
    return true;
}

static long index_of(const kiln_svc_spec_t *specs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(specs[i].name, name) == 0)
            return (long)i;
    }
    return -1;
}

#define DAY_MS (24L * 3600 * 1000)

/* Every number of a spec within its range, each named in the error. A zero
 * backoff restarts at once (max_failures still ends a crash loop); a zero
 * stop timeout is SIGKILL at once. */
static int spec_check_limits(const kiln_svc_spec_t *s, kiln_err_t *err)
{
    const struct {
        const char *field;
        long value, min, max;
    } limits[] = {
        {"backoff_base_ms", s->backoff_base_ms, 0, DAY_MS},
        {"backoff_max_ms", s->backoff_max_ms, s->backoff_base_ms, DAY_MS},
        {"stable_ms", s->stable_ms, 0, DAY_MS},
        {"max_failures", s->max_failures, 1, SV_FAIL_MAX},
        {"failure_window_ms", s->failure_window_ms, 1, DAY_MS},
        {"stop_timeout_ms", s->stop_timeout_ms, 0, DAY_MS},
        {"oneshot_timeout_ms", s->oneshot_timeout_ms, 0, DAY_MS},
        {"memory_limit_mb", s->memory_limit_mb, 0, 1L << 30},
        {"ready.interval_ms", s->ready.interval_ms, 1, DAY_MS},
        {"ready.timeout_ms", s->ready.timeout_ms, 1, DAY_MS},
        {"ready.deadline_ms", s->ready.deadline_ms, 0, DAY_MS},
    };
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        if (limits[i].value >= limits[i].min && limits[i].value <= limits[i].max)
            continue;
        if (i == 1) /* the one whose minimum is another field */
            return kiln_err_set(err, KILN_EINVAL,
                                "service %s: backoff_max_ms: expected at least backoff_base_ms "
                                "(%ld) and at most %ld, got %ld",
                                s->name, s->backoff_base_ms, DAY_MS, s->backoff_max_ms);
        return kiln_err_set(err, KILN_EINVAL, "service %s: %s: expected %ld-%ld, got %ld", s->name,
                            limits[i].field, limits[i].min, limits[i].max, limits[i].value);
    }
    return 0;
}

static int spec_validate_one(const kiln_svc_spec_t *specs, size_t n, size_t i, kiln_err_t *err)
{
    const kiln_svc_spec_t *s = &specs[i];
    if (!name_valid(s->name))
        return kiln_err_set(err, KILN_EINVAL,
                            "service name \"%s\": expected [a-z0-9][a-z0-9_-]{0,63}",
                            s->name ? s->name : "");
    if (index_of(specs, n, s->name) != (long)i)
        return kiln_err_set(err, KILN_EINVAL,
                            "service %s: defined twice; give each service a unique name", s->name);
    if (!s->argv || !s->argv[0] || !s->argv[0][0])
        return kiln_err_set(err, KILN_EINVAL, "service %s: argv is empty; set the command to run",
                            s->name);
    if (s->ready.kind == KILN_READY_COMMAND && (!s->ready.argv || !s->ready.argv[0]))
        return kiln_err_set(err, KILN_EINVAL, "service %s: ready check \"command\" has no argv",
                            s->name);
    if ((s->ready.kind == KILN_READY_HTTP || s->ready.kind == KILN_READY_TCP) && !s->ready.target)
        return kiln_err_set(err, KILN_EINVAL, "service %s: ready check needs a target", s->name);
    int rc = spec_check_limits(s, err);
    if (rc)
        return rc;
    for (size_t d = 0; s->depends_on && s->depends_on[d]; d++) {
        if (index_of(specs, n, s->depends_on[d]) < 0)
            return kiln_err_set(err, KILN_EINVAL,
                                "service %s: depends_on \"%s\" is not a service in this set; "
                                "add it or remove the dependency",
                                s->name, s->depends_on[d]);
    }
    return 0;
}

/* Depth-first search for a cycle through i; mark: 0 new, 1 on the path, 2 done. */
static long find_cycle(const kiln_svc_spec_t *specs, size_t n, size_t i, unsigned char *mark)
{
    mark[i] = 1;
    for (size_t d = 0; specs[i].depends_on && specs[i].depends_on[d]; d++) {
        long j = index_of(specs, n, specs[i].depends_on[d]);
        if (mark[j] == 1)
            return j;
        if (mark[j] == 0) {
            long c = find_cycle(specs, n, (size_t)j, mark);
            if (c >= 0)
                return c;
        }
    }
    mark[i] = 2;
    return -1;
}

/* Checks a whole set: valid unique names, argv present, every dependency
 * known, no cycle. 0 or KILN_EINVAL with a message naming the service. */
int sv_specs_validate(const kiln_svc_spec_t *specs, size_t n, kiln_err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = spec_validate_one(specs, n, i, err);
        if (rc)
            return rc;
    }
    unsigned char *mark = calloc(n ? n : 1, 1);
    if (!mark)
        return kiln_err_set(err, KILN_ENOMEM, "supervisor: out of memory validating services");
    long cycle = -1;
    for (size_t i = 0; i < n && cycle < 0; i++) {
        if (mark[i] == 0)
            cycle = find_cycle(specs, n, i, mark);
    }
    free(mark);
    if (cycle >= 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "service %s: depends_on forms a cycle; remove one dependency of the "
                            "cycle through %s",
                            specs[cycle].name, specs[cycle].name);
    return 0;
}
