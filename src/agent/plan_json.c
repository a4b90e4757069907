/*
 * The plan as JSON, for `kiln machine plan --json` and the machine API.
 * What a plan holds is what its processes get, secrets included; what it
 * shows is redacted: URL passwords and secret-looking variables are "***".
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "kiln/plan.h"

#define SHOWN_MAX 8192

static const char *const type_names[] = {"auto", "gpu", "api", "hybrid"};
static const char *const ready_names[] = {"none", "http", "tcp", "command", "fd", "exit"};
#define N_READY_NAMES (sizeof ready_names / sizeof ready_names[0])

static bool secret_name(const char *name, size_t len)
{
    static const char *const words[] = {"KEY",      "TOKEN",  "SECRET",
                                        "PASSWORD", "PASSWD", "CREDENTIAL"};
    char upper[160];
    size_t n = len < sizeof upper - 1 ? len : sizeof upper - 1;
    for (size_t i = 0; i < n; i++)
        upper[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
    upper[n] = '\0';
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strstr(upper, words[i]))
            return true;
    }
    return false;
}

/* text with the password of any URL in it ("scheme://user:pw@") masked. */
static json_t *redacted_string(const char *text)
{
    char out[SHOWN_MAX + 16];
    size_t len = 0;
    for (const char *p = text; *p && len + 4 < sizeof out;) {
        const char *scheme = strstr(p, "://");
        if (!scheme) {
            len += (size_t)snprintf(out + len, sizeof out - len, "%s", p);
            break;
        }
        const char *user = scheme + 3, *end = user + strcspn(user, "/ ,");
        const char *at = memchr(user, '@', (size_t)(end - user));
        const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
        if (colon) {
            len +=
                (size_t)snprintf(out + len, sizeof out - len, "%.*s***", (int)(colon + 1 - p), p);
            p = at;
        } else {
            len += (size_t)snprintf(out + len, sizeof out - len, "%.*s", (int)(user - p), p);
            p = user;
        }
    }
    if (len >= sizeof out)
        len = sizeof out - 1;
    out[len] = '\0';
    return json_string(out);
}

static json_t *strv_json(char *const *v, bool redact)
{
    json_t *a = json_array();
    for (size_t i = 0; v && v[i]; i++)
        json_array_append_new(a, redact ? redacted_string(v[i]) : json_string(v[i]));
    return a;
}

json_t *kiln_plan_to_json(const kiln_plan_t *plan)
{
    json_t *services = json_array();
    for (size_t i = 0; i < plan->count; i++) {
        const kiln_plan_service_t *s = &plan->services[i];
        json_t *env = json_object();
        for (size_t e = 0; e < s->n_env; e++) {
            size_t key_len = strcspn(s->env[e], "=");
            char key[160];
            snprintf(key, sizeof key, "%.*s", (int)key_len, s->env[e]);
            const char *value = s->env[e] + key_len + (s->env[e][key_len] ? 1 : 0);
            json_object_set_new(env, key,
                                secret_name(key, key_len) && *value ? json_string("***")
                                                                    : redacted_string(value));
        }
        json_t *ready =
            json_pack("{s:s}", "kind", ready_names[(size_t)s->ready.kind % N_READY_NAMES]);
        if (s->ready.target)
            json_object_set_new(ready, "target", json_string(s->ready.target));
        if (s->ready.command)
            json_object_set_new(ready, "command", strv_json(s->ready.command, true));
        json_array_append_new(services,
                              json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s}",
                                        "name", s->name, "kind", kiln_plan_kind_name(s->kind),
                                        "argv", strv_json(s->argv, true), "env", env, "cwd",
                                        s->cwd ? json_string(s->cwd) : json_null(), "port",
                                        s->port ? json_integer(s->port) : json_null(), "gpu",
                                        s->gpu >= 0 ? json_integer(s->gpu) : json_null(),
                                        "depends_on", strv_json(s->depends_on, false), "ready",
                                        ready, "restart", kiln_plan_restart_name(s->restart)));
    }
    return json_pack("{s:s, s:s, s:I, s:o}", "machine_id", plan->machine_id, "machine_type",
                     type_names[plan->machine_type & 3], "gpus", (json_int_t)plan->n_gpus,
                     "services", services);
}
