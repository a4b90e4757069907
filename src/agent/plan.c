/*
 * The service plan: from WORKER_CONNECTORS, the GPU list and the services:
 * section to an ordered list of argv-and-environment service specs. Every
 * placeholder is substituted inside one argument, so a value with spaces or
 * shell characters stays one argument: nothing here or later goes through a
 * shell. Ports go through the port manager; dependencies are checked and
 * put in a stable topological order.
 */
#include "kiln/plan.h"

#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/ports.h"

#define SUBST_MAX         8192 /* bytes of one argument after substitution */
#define PLAN_MAX_GPUS     64
#define INSTANCE_NAME_MAX 48

typedef enum { CONN_API, CONN_GPU, CONN_LOCAL } conn_class_t;

/* The values placeholders stand for in one service. */
typedef struct subst {
    const char *field; /* "templates.comfyui" or "services.web", for messages */
    const char *name;
    const char *machine_id;
    const char *kiln;
    int port; /* 0: none */
    int gpu;  /* CUDA index; -1: none */
} subst_t;

typedef struct builder {
    const kiln_config_t *cfg;
    const kiln_gpu_list_t *gpus;
    size_t n_gpus;
    char kiln_path[4096];
    kiln_plan_t *plan;
    kiln_ports_t ports;
    kiln_err_t *err;
    bool has_setup;
} builder_t;

static const char *const kind_names[] = {"setup", "inference", "worker", "connector", "user"};
static const char *const restart_names[] = {"always", "on-failure", "never"};

const char *kiln_plan_kind_name(kiln_service_kind_t kind)
{
    return (unsigned)kind < 5 ? kind_names[kind] : "unknown";
}

const char *kiln_plan_restart_name(kiln_restart_t restart)
{
    return (unsigned)restart < 3 ? restart_names[restart] : "unknown";
}

/* ---- small owned vectors ---------------------------------------------------- */

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* Appends text (taking ownership) to the NULL-terminated *v of *n items. */
static int strv_push_owned(char ***v, size_t *n, char *text)
{
    char **grown = text ? realloc(*v, (*n + 2) * sizeof *grown) : NULL;
    if (!grown) {
        free(text);
        return KILN_ENOMEM;
    }
    grown[(*n)++] = text;
    grown[*n] = NULL;
    *v = grown;
    return 0;
}

static int strv_push(char ***v, size_t *n, const char *text)
{
    return strv_push_owned(v, n, strdup(text));
}

/* Sets NAME=value in the service's environment, replacing an earlier value,
 * so a user's env wins over the plan's defaults. */
static int env_set_owned(kiln_plan_service_t *s, char *entry)
{
    if (!entry)
        return KILN_ENOMEM;
    size_t key_len = strcspn(entry, "=");
    for (size_t i = 0; i < s->n_env; i++) {
        if (strncmp(s->env[i], entry, key_len + 1) == 0) {
            free(s->env[i]);
            s->env[i] = entry;
            return 0;
        }
    }
    return strv_push_owned(&s->env, &s->n_env, entry);
}

static char *printf_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *printf_alloc(const char *fmt, ...)
{
    char *out = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : out;
}

/* ---- placeholders ----------------------------------------------------------- */

/* Replaces {port}, {gpu}, {machine_id}, {name} and {kiln} in text; "{{" is a
 * literal '{'. Braces that do not enclose a lower-case word (JSON, say) are
 * copied as they are. where names the argument in messages. */
static int substitute(const subst_t *s, const char *where, const char *text, char **out,
                      kiln_err_t *err)
{
    char buf[SUBST_MAX];
    size_t len = 0;
    for (const char *p = text; *p;) {
        char num[16];
        const char *value = NULL;
        size_t skip = 1, word = 0;
        if (p[0] == '{' && p[1] == '{') {
            value = "{", skip = 2;
        } else if (p[0] == '{') {
            word = strspn(p + 1, "abcdefghijklmnopqrstuvwxyz_");
            if (word == 0 || p[1 + word] != '}')
                word = 0;
        }
        if (word > 0) {
            skip = word + 2;
            if (strncmp(p, "{port}", skip) == 0 && s->port > 0)
                snprintf(num, sizeof num, "%d", s->port), value = num;
            else if (strncmp(p, "{gpu}", skip) == 0 && s->gpu >= 0)
                snprintf(num, sizeof num, "%d", s->gpu), value = num;
            else if (strncmp(p, "{machine_id}", skip) == 0)
                value = s->machine_id;
            else if (strncmp(p, "{name}", skip) == 0)
                value = s->name;
            else if (strncmp(p, "{kiln}", skip) == 0)
                value = s->kiln;
            else if (strncmp(p, "{port}", skip) == 0)
                return kiln_err_set(err, KILN_EINVAL,
                                    "%s: {port} is used but %s has no port; add port: N", where,
                                    s->name);
            else if (strncmp(p, "{gpu}", skip) == 0)
                return kiln_err_set(err, KILN_EINVAL,
                                    "%s: {gpu} is used but %s is not pinned to a GPU; add gpu: N",
                                    where, s->name);
            else
                return kiln_err_set(err, KILN_EINVAL,
                                    "%s: unknown placeholder %.*s; use {port}, {gpu}, "
                                    "{machine_id}, {name} or {kiln} (write {{ for a literal {)",
                                    where, (int)skip, p);
        }
        size_t n = value ? strlen(value) : 1;
        if (len + n >= sizeof buf)
            return kiln_err_set(err, KILN_ETOOBIG,
                                "%s: longer than %d bytes once placeholders are substituted", where,
                                SUBST_MAX - 1);
        memcpy(buf + len, value ? value : p, n);
        len += n;
        p += skip;
    }
    buf[len] = '\0';
    *out = strdup(buf);
    return *out ? 0 : KILN_ENOMEM;
}

/* Substitutes each of items into a new NULL-terminated vector. */
static int substitute_argv(const subst_t *s, const char *field, char *const *items, size_t n,
                           char ***out, size_t *n_out, kiln_err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        char where[256], *value = NULL;
        snprintf(where, sizeof where, "%s[%zu]", field, i);
        int rc = substitute(s, where, items[i], &value, err);
        if (rc == 0)
            rc = strv_push_owned(out, n_out, value);
        if (rc != 0)
            return rc == KILN_ENOMEM ? kiln_err_set(err, rc, "out of memory") : rc;
    }
    return 0;
}

static int substitute_env(const subst_t *s, const char *field, char *const *env, size_t n,
                          kiln_plan_service_t *svc, kiln_err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        char where[256], *value = NULL;
        size_t key_len = strcspn(env[i], "=");
        snprintf(where, sizeof where, "%s.%.*s", field, (int)key_len, env[i]);
        int rc = substitute(s, where, env[i], &value, err);
        if (rc == 0)
            rc = env_set_owned(svc, value);
        if (rc != 0)
            return rc == KILN_ENOMEM ? kiln_err_set(err, rc, "out of memory") : rc;
    }
    return 0;
}

static int substitute_ready(const subst_t *s, const char *field, const kiln_ready_config_t *r,
                            kiln_plan_service_t *svc, kiln_err_t *err)
{
    char where[256];
    snprintf(where, sizeof where, "%s.ready", field);
    svc->ready.kind = r->kind;
    if (r->kind == KILN_READY_COMMAND) {
        size_t n = 0;
        snprintf(where, sizeof where, "%s.ready.command", field);
        return substitute_argv(s, where, r->command, r->n_command, &svc->ready.command, &n, err);
    }
    if (r->target)
        return substitute(s, where, r->target, &svc->ready.target, err);
    return 0;
}

/* ---- building --------------------------------------------------------------- */

static kiln_plan_service_t *find_service(const kiln_plan_t *plan, const char *name)
{
    for (size_t i = 0; i < plan->count; i++) {
        if (strcmp(plan->services[i].name, name) == 0)
            return &plan->services[i];
    }
    return NULL;
}

const kiln_plan_service_t *kiln_plan_find(const kiln_plan_t *plan, const char *name)
{
    return find_service(plan, name);
}

static void service_free(kiln_plan_service_t *s)
{
    free(s->name);
    strv_free(s->argv);
    strv_free(s->env);
    free(s->cwd);
    strv_free(s->depends_on);
    free(s->ready.target);
    strv_free(s->ready.command);
    free(s->downloads_for);
    memset(s, 0, sizeof *s);
}

/* Appends a service named name with the environment every service gets
 * (and the Redis URL for kiln's own processes and the user's), depending on
 * shared-setup when there is one. Returns it, or NULL with err set. */
static kiln_plan_service_t *add_service(builder_t *b, const char *name, kiln_service_kind_t kind,
                                        bool with_redis)
{
    kiln_plan_t *plan = b->plan;
    const kiln_plan_service_t *taken = find_service(plan, name);
    if (taken) {
        kiln_err_set(b->err, KILN_EINVAL,
                     "services.%s: the name is taken by a generated service (%s); choose another "
                     "name",
                     name, kiln_plan_kind_name(taken->kind));
        return NULL;
    }
    if (plan->count == KILN_PLAN_MAX_SERVICES) {
        kiln_err_set(b->err, KILN_ETOOBIG,
                     "the plan has more than %d services; lower machine.instances_per_gpu or the "
                     "number of connectors",
                     KILN_PLAN_MAX_SERVICES);
        return NULL;
    }
    kiln_plan_service_t *grown = realloc(plan->services, (plan->count + 1) * sizeof *grown);
    if (!grown) {
        kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
        return NULL;
    }
    plan->services = grown;
    kiln_plan_service_t *s = &plan->services[plan->count++];
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->gpu = -1;
    s->restart = KILN_RESTART_ALWAYS;
    s->backoff_ms = -1;
    s->ready_timeout_ms = -1;
    s->stop_timeout_ms = -1;
    s->memory_limit_mb = -1;
    int rc = (s->name = strdup(name)) ? 0 : KILN_ENOMEM;
    if (rc == 0)
        rc = env_set_owned(s, printf_alloc("KILN_MACHINE_ID=%s", plan->machine_id));
    if (rc == 0)
        rc = env_set_owned(s, printf_alloc("MACHINE_ID=%s", plan->machine_id));
    if (rc == 0 && with_redis)
        rc = env_set_owned(s, printf_alloc("KILN_REDIS_URL=%s", b->cfg->redis_url));
    if (rc == 0 && b->has_setup && kind != KILN_SERVICE_SETUP)
        rc = strv_push(&s->depends_on, &s->n_depends_on, "shared-setup");
    if (rc != 0) {
        kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
        return NULL;
    }
    return s;
}

/* Pins s to GPU position pos of the list: CUDA numbers devices in PCI bus
 * order only when told to, so both variables are set. */
static int pin_gpu(builder_t *b, kiln_plan_service_t *s, size_t pos)
{
    int index = b->gpus->gpus[pos].index;
    s->gpu = (int)pos;
    int rc = env_set_owned(s, strdup("CUDA_DEVICE_ORDER=PCI_BUS_ID"));
    if (rc == 0)
        rc = env_set_owned(s, printf_alloc("CUDA_VISIBLE_DEVICES=%d", index));
    return rc ? kiln_err_set(b->err, rc, "out of memory") : 0;
}

static conn_class_t connector_class(const kiln_config_t *cfg, const char *name,
                                    const kiln_template_config_t **tpl, const char **tpl_field)
{
    const kiln_connector_config_t *c = kiln_config_connector(cfg, name);
    const char *type = c ? c->type : name;
    if (strcmp(type, "comfyui") == 0) {
        *tpl = &cfg->templates.comfyui, *tpl_field = "templates.comfyui";
        return CONN_GPU;
    }
    if (strcmp(type, "a1111") == 0) {
        *tpl = &cfg->templates.a1111, *tpl_field = "templates.a1111";
        return CONN_GPU;
    }
    if (strcmp(type, "ollama") == 0) {
        *tpl = &cfg->templates.ollama, *tpl_field = "templates.ollama";
        return CONN_LOCAL;
    }
    if (strcmp(type, "playwright") == 0) {
        *tpl = &cfg->templates.playwright, *tpl_field = "templates.playwright";
        return CONN_LOCAL;
    }
    *tpl = NULL, *tpl_field = NULL;
    return CONN_API;
}

/* The readiness check a template service gets: each server's cheapest
 * endpoint that answers only once it can take work. */
static const char *template_ready(const char *tpl_field, kiln_ready_kind_t *kind)
{
    *kind = KILN_READY_HTTP;
    if (strcmp(tpl_field, "templates.comfyui") == 0)
        return "http://127.0.0.1:{port}/system_stats";
    if (strcmp(tpl_field, "templates.ollama") == 0)
        return "http://127.0.0.1:{port}/api/version";
    if (strcmp(tpl_field, "templates.playwright") == 0)
        return "http://127.0.0.1:{port}/health"; /* 200 once chromium runs */
    *kind = KILN_READY_TCP;
    return "127.0.0.1:{port}";
}

/* An inference service from a template on port (and GPU position pos, or
 * (size_t)-1 for a per-machine one). */
static int add_template_service(builder_t *b, const char *name, const char *tpl_field,
                                const kiln_template_config_t *tpl, int port, size_t pos)
{
    if (!tpl->command || tpl->n_command == 0)
        return kiln_err_set(b->err, KILN_EINVAL, "%s.command: missing; give the program to run",
                            tpl_field);
    kiln_plan_service_t *s = add_service(b, name, KILN_SERVICE_INFERENCE, false);
    if (!s)
        return b->err->code;
    s->port = port;
    int rc = pos != (size_t)-1 ? pin_gpu(b, s, pos) : 0;
    subst_t sub = {.field = tpl_field,
                   .name = name,
                   .machine_id = b->plan->machine_id,
                   .kiln = b->kiln_path,
                   .port = port,
                   .gpu = pos != (size_t)-1 ? b->gpus->gpus[pos].index : -1};
    char field[96];
    snprintf(field, sizeof field, "%s.command", tpl_field);
    if (rc == 0)
        rc = substitute_argv(&sub, field, tpl->command, tpl->n_command, &s->argv, &s->argc, b->err);
    snprintf(field, sizeof field, "%s.env", tpl_field);
    if (rc == 0)
        rc = substitute_env(&sub, field, tpl->env, tpl->n_env, s, b->err);
    if (rc == 0 && tpl->cwd)
        rc = substitute(&sub, tpl_field, tpl->cwd, &s->cwd, b->err);
    kiln_ready_config_t ready = {0};
    if (port > 0)
        ready.target = (char *)template_ready(tpl_field, &ready.kind);
    if (rc == 0)
        rc = substitute_ready(&sub, tpl_field, &ready, s, b->err);
    return rc;
}

/* The capabilities a planned worker advertises: the configured ones, plus
 * the machine's pools and its GPU's memory unless already given. */
static char *worker_capabilities(const builder_t *b, size_t pos)
{
    const kiln_config_t *cfg = b->cfg;
    json_t *caps =
        cfg->worker.capabilities ? json_deep_copy(cfg->worker.capabilities) : json_object();
    if (!caps)
        return NULL;
    if (cfg->machine.n_pools && !json_object_get(caps, "pools")) {
        json_t *pools = json_array();
        for (size_t i = 0; i < cfg->machine.n_pools; i++)
            json_array_append_new(pools, json_string(cfg->machine.pools[i]));
        json_object_set_new(caps, "pools", pools);
    }
    if (pos != (size_t)-1 && b->gpus->gpus[pos].memory_total_mb > 0 &&
        !json_object_get(caps, "gpu_memory_gb"))
        json_object_set_new(caps, "gpu_memory_gb",
                            json_integer((json_int_t)(b->gpus->gpus[pos].memory_total_mb / 1024)));
    char *text = json_object_size(caps) ? json_dumps(caps, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(caps);
    return text;
}

/* A kiln worker serving connectors (a comma list) with concurrency slots;
 * urls (may be empty) points named connectors at their local instances. */
static int add_worker(builder_t *b, const char *name, kiln_service_kind_t kind,
                      const char *connectors, int concurrency, const char *urls, size_t pos)
{
    kiln_plan_service_t *s = add_service(b, name, kind, true);
    if (!s)
        return b->err->code;
    char slots[16];
    snprintf(slots, sizeof slots, "%d", concurrency);
    char *id = printf_alloc("%s-%s", b->plan->machine_id, name);
    char *caps = worker_capabilities(b, pos);
    const char *args[] = {b->kiln_path, "worker", "--connectors",  connectors,
                          "--id",       id,       "--concurrency", slots};
    int rc = id ? 0 : KILN_ENOMEM;
    for (size_t i = 0; rc == 0 && i < sizeof args / sizeof args[0]; i++)
        rc = strv_push(&s->argv, &s->argc, args[i]);
    if (rc == 0 && caps)
        rc = strv_push(&s->argv, &s->argc, "--capabilities") || strv_push(&s->argv, &s->argc, caps);
    /* Absolute, so a worker finds the file whatever its working directory. */
    char *config = b->cfg->source_path ? realpath(b->cfg->source_path, NULL) : NULL;
    if (rc == 0 && b->cfg->source_path)
        rc = strv_push(&s->argv, &s->argc, "--config") ||
             strv_push(&s->argv, &s->argc, config ? config : b->cfg->source_path);
    free(config);
    if (rc == 0 && *urls)
        rc = env_set_owned(s, printf_alloc("KILN_CONNECTOR_URLS=%s", urls));
    /* Ready once a connector's health check passes: the worker says so on
     * fd 3 (kiln_worker_set_ready_fd). */
    s->ready.kind = KILN_READY_FD;
    if (rc == 0)
        rc = env_set_owned(s, strdup("KILN_READY_FD=3"));
    free(id);
    free(caps);
    if (rc != 0)
        return kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
    return pos != (size_t)-1 ? pin_gpu(b, s, pos) : 0;
}

/* Appends ",name=http://127.0.0.1:port" to urls (size bytes). */
static void url_append(char *urls, size_t size, const char *name, int port)
{
    size_t len = strlen(urls);
    snprintf(urls + len, size - len, "%s%s=http://127.0.0.1:%d", len ? "," : "", name, port);
}

static void list_append(char *list, size_t size, const char *name)
{
    size_t len = strlen(list);
    snprintf(list + len, size - len, "%s%s", len ? "," : "", name);
}

/* The classified connector names of worker.connectors, in config order. */
typedef struct conn_sets {
    const char *gpu[64], *local[64], *api[64];
    const kiln_template_config_t *gpu_tpl[64], *local_tpl[64];
    const char *gpu_field[64], *local_field[64];
    size_t n_gpu, n_local, n_api;
} conn_sets_t;

static void classify(const kiln_config_t *cfg, conn_sets_t *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < cfg->worker.n_connectors && i < 64; i++) {
        const char *name = cfg->worker.connectors[i], *field;
        const kiln_template_config_t *tpl;
        switch (connector_class(cfg, name, &tpl, &field)) {
        case CONN_GPU:
            c->gpu_tpl[c->n_gpu] = tpl, c->gpu_field[c->n_gpu] = field;
            c->gpu[c->n_gpu++] = name;
            break;
        case CONN_LOCAL:
            c->local_tpl[c->n_local] = tpl, c->local_field[c->n_local] = field;
            c->local[c->n_local++] = name;
            break;
        default:
            c->api[c->n_api++] = name;
        }
    }
}

/* Decides the machine type and how many GPUs the plan uses, refusing the
 * combinations that cannot run. */
static int resolve_type(builder_t *b, const conn_sets_t *c)
{
    const kiln_config_t *cfg = b->cfg;
    const char *source = b->gpus && *b->gpus->source ? b->gpus->source : "none";
    const char *hidden = cfg->machine.has_gpu ? "" : ", machine.has_gpu is false";
    bool pins_gpu = c->n_gpu > 0;
    for (size_t i = 0; i < cfg->n_services; i++)
        pins_gpu = pins_gpu || cfg->services[i].gpu >= 0;
    kiln_machine_type_t type = cfg->machine.type;
    if (type == KILN_MACHINE_AUTO)
        type = !pins_gpu               ? KILN_MACHINE_API
               : c->n_api + c->n_local ? KILN_MACHINE_HYBRID
                                       : KILN_MACHINE_GPU;
    if (type == KILN_MACHINE_API && c->n_gpu > 0)
        return kiln_err_set(b->err, KILN_EINVAL,
                            "worker.connectors: %s runs one instance per GPU but machine.type is "
                            "api; set machine.type (MACHINE_TYPE) to gpu or hybrid, or remove %s "
                            "from worker.connectors",
                            c->gpu[0], c->gpu[0]);
    if (type == KILN_MACHINE_API)
        b->n_gpus = 0;
    if (c->n_gpu > 0 && b->n_gpus == 0)
        return kiln_err_set(b->err, KILN_EINVAL,
                            "worker.connectors: %s runs one instance per GPU but the machine has "
                            "no GPUs (discovery: %s%s); set machine.gpu_count (MACHINE_GPU_COUNT) "
                            "if discovery missed them, or remove %s from worker.connectors",
                            c->gpu[0], source, hidden, c->gpu[0]);
    if (type == KILN_MACHINE_GPU && b->n_gpus == 0)
        return kiln_err_set(b->err, KILN_EINVAL,
                            "machine.type is gpu but the machine has no GPUs (discovery: %s%s); "
                            "set machine.gpu_count (MACHINE_GPU_COUNT) if discovery missed them, "
                            "or machine.type to api",
                            source, hidden);
    b->plan->machine_type = type;
    b->plan->n_gpus = b->n_gpus;
    return 0;
}

/* The instance suffix: "gpu1", or "gpu1-0", "gpu1-1" with several per GPU. */
static void instance_suffix(char *out, size_t size, size_t gpu, int k, int per_gpu)
{
    if (per_gpu > 1)
        snprintf(out, size, "gpu%zu-%d", gpu, k);
    else
        snprintf(out, size, "gpu%zu", gpu);
}

static int add_gpu_services(builder_t *b, const conn_sets_t *c)
{
    int per_gpu = b->cfg->machine.instances_per_gpu;
    char suffix[INSTANCE_NAME_MAX], name[128];
    if (c->n_gpu == 0)
        return 0; /* GPUs but no GPU connector: nothing is pinned */
    for (size_t g = 0; g < b->n_gpus; g++) {
        for (int k = 0; k < per_gpu; k++) {
            instance_suffix(suffix, sizeof suffix, g, k, per_gpu);
            for (size_t j = 0; j < c->n_gpu; j++) {
                char base_field[64];
                int port, rc;
                snprintf(name, sizeof name, "%s-%s", c->gpu[j], suffix);
                snprintf(base_field, sizeof base_field, "%s.base_port", c->gpu_field[j]);
                if ((rc = kiln_ports_book_offset(&b->ports, c->gpu_tpl[j]->port,
                                                 g * (size_t)per_gpu + (size_t)k, base_field, name,
                                                 &port, b->err)) != 0 ||
                    (rc = add_template_service(b, name, c->gpu_field[j], c->gpu_tpl[j], port, g)) !=
                        0)
                    return rc;
            }
        }
    }
    for (size_t g = 0; g < b->n_gpus; g++) {
        for (int k = 0; k < per_gpu; k++) {
            char connectors[64 * 66] = "", urls[64 * 96] = "";
            instance_suffix(suffix, sizeof suffix, g, k, per_gpu);
            snprintf(name, sizeof name, "worker-%s", suffix);
            kiln_plan_service_t *w = NULL;
            for (size_t j = 0; j < c->n_gpu; j++) {
                char instance[128];
                snprintf(instance, sizeof instance, "%s-%s", c->gpu[j], suffix);
                list_append(connectors, sizeof connectors, c->gpu[j]);
                url_append(urls, sizeof urls, c->gpu[j], find_service(b->plan, instance)->port);
            }
            int rc = add_worker(b, name, KILN_SERVICE_WORKER, connectors, 1, urls, g);
            w = rc == 0 ? &b->plan->services[b->plan->count - 1] : NULL;
            for (size_t j = 0; rc == 0 && j < c->n_gpu; j++) {
                char instance[128];
                snprintf(instance, sizeof instance, "%s-%s", c->gpu[j], suffix);
                if (strv_push(&w->depends_on, &w->n_depends_on, instance) != 0)
                    rc = kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
            }
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

static int add_machine_services(builder_t *b, const conn_sets_t *c)
{
    const kiln_config_t *cfg = b->cfg;
    int rc = kiln_ports_book(&b->ports, cfg->machine.health_port, "machine.health_port", b->err);
    if (rc == 0 && cfg->templates.setup.command) {
        rc = add_template_service(b, "shared-setup", "templates.setup", &cfg->templates.setup, 0,
                                  (size_t)-1);
        if (rc == 0) {
            kiln_plan_service_t *s = find_service(b->plan, "shared-setup");
            s->kind = KILN_SERVICE_SETUP;
            s->restart = KILN_RESTART_NEVER;
            free(s->ready.target);
            s->ready.target = NULL;
            s->ready.kind = KILN_READY_EXIT;
            b->has_setup = true;
        }
    }
    for (size_t j = 0; rc == 0 && j < c->n_local; j++) {
        char port_field[64];
        snprintf(port_field, sizeof port_field, "%s.port", c->local_field[j]);
        int port;
        rc = kiln_ports_book_offset(&b->ports, c->local_tpl[j]->port, 0, port_field, c->local[j],
                                    &port, b->err);
        if (rc == 0)
            rc = add_template_service(b, c->local[j], c->local_field[j], c->local_tpl[j], port,
                                      (size_t)-1);
    }
    return rc;
}

static int add_api_workers(builder_t *b, const conn_sets_t *c)
{
    char connectors[64 * 66] = "", urls[64 * 96] = "", name[64];
    if (c->n_api + c->n_local == 0)
        return 0;
    for (size_t j = 0; j < c->n_api; j++)
        list_append(connectors, sizeof connectors, c->api[j]);
    for (size_t j = 0; j < c->n_local; j++) {
        list_append(connectors, sizeof connectors, c->local[j]);
        url_append(urls, sizeof urls, c->local[j], find_service(b->plan, c->local[j])->port);
    }
    for (int i = 0; i < b->cfg->machine.api_workers; i++) {
        snprintf(name, sizeof name, "worker-api%d", i);
        int rc = add_worker(b, name, KILN_SERVICE_CONNECTOR, connectors, b->cfg->worker.concurrency,
                            urls, (size_t)-1);
        kiln_plan_service_t *w = rc == 0 ? &b->plan->services[b->plan->count - 1] : NULL;
        for (size_t j = 0; rc == 0 && j < c->n_local; j++) {
            if (strv_push(&w->depends_on, &w->n_depends_on, c->local[j]) != 0)
                rc = kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* services.NAME.downloads: a one-shot "NAME-downloads" step that runs
 * `kiln machine download` (it reads the list from the same config file, so
 * no URL, with its credentials, is on a command line) and NAME depending
 * on it. The step is never restarted: kiln_download retries what is worth
 * retrying itself. */
static int add_download_step(builder_t *b, const kiln_service_config_t *u)
{
    char name[96], config[PATH_MAX];
    snprintf(name, sizeof name, "%s-downloads", u->name);
    /* The step runs in the service's folder: relative paths land there. */
    if (!b->cfg->source_path || !realpath(b->cfg->source_path, config))
        return kiln_err_set(b->err, KILN_EINVAL,
                            "services.%s.downloads: the config file %s cannot be found again for "
                            "the download step; load the config from a file",
                            u->name, b->cfg->source_path ? b->cfg->source_path : "(none)");
    kiln_plan_service_t *step = add_service(b, name, KILN_SERVICE_SETUP, false);
    if (!step)
        return b->err->code;
    step->restart = KILN_RESTART_NEVER;
    step->ready.kind = KILN_READY_EXIT;
    const char *argv[] = {b->kiln_path, "machine",   "download", "--config",
                          config,       "--service", u->name};
    /* The list is part of the step's identity: a reload with a changed
     * list runs the step again (its argv alone would not change). */
    int rc = env_set_owned(
        step, printf_alloc("KILN_DOWNLOADS_DIGEST=%08lx", kiln_config_downloads_digest(u)));
    if (rc == 0)
        rc = (step->downloads_for = strdup(u->name)) ? 0 : KILN_ENOMEM;
    for (size_t i = 0; rc == 0 && i < sizeof argv / sizeof argv[0]; i++)
        rc = strv_push(&step->argv, &step->argc, argv[i]);
    kiln_plan_service_t *owner = find_service(b->plan, u->name); /* add_service moved it */
    if (rc == 0 && owner->cwd)
        rc = (step->cwd = strdup(owner->cwd)) ? 0 : KILN_ENOMEM;
    if (rc == 0)
        rc = strv_push(&owner->depends_on, &owner->n_depends_on, name);
    return rc == 0 ? 0 : kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
}

static int add_user_service(builder_t *b, const kiln_service_config_t *u)
{
    char field[128];
    snprintf(field, sizeof field, "services.%s", u->name);
    if (u->gpu >= 0 && (size_t)u->gpu >= b->n_gpus)
        return kiln_err_set(b->err, KILN_EINVAL,
                            "services.%s.gpu: GPU %d does not exist (the plan has %zu GPU%s); "
                            "use 0-%zu or remove gpu:",
                            u->name, u->gpu, b->n_gpus, b->n_gpus == 1 ? "" : "s",
                            b->n_gpus ? b->n_gpus - 1 : 0);
    if (u->port) {
        char owner[128];
        snprintf(owner, sizeof owner, "services.%s.port", u->name);
        int rc = kiln_ports_book(&b->ports, u->port, owner, b->err);
        if (rc != 0)
            return rc;
    }
    kiln_plan_service_t *s = add_service(b, u->name, KILN_SERVICE_USER, true);
    if (!s)
        return b->err->code;
    s->port = u->port;
    s->restart = u->restart;
    s->backoff_ms = u->backoff_ms;
    s->ready_timeout_ms = u->ready_timeout_ms;
    s->stop_timeout_ms = u->stop_timeout_ms;
    s->memory_limit_mb = u->memory_limit_mb;
    int rc = u->gpu >= 0 ? pin_gpu(b, s, (size_t)u->gpu) : 0;
    subst_t sub = {.field = field,
                   .name = u->name,
                   .machine_id = b->plan->machine_id,
                   .kiln = b->kiln_path,
                   .port = u->port,
                   .gpu = u->gpu >= 0 ? b->gpus->gpus[u->gpu].index : -1};
    char sub_field[160];
    snprintf(sub_field, sizeof sub_field, "%s.command", field);
    if (rc == 0)
        rc = substitute_argv(&sub, sub_field, u->command, u->n_command, &s->argv, &s->argc, b->err);
    snprintf(sub_field, sizeof sub_field, "%s.env", field);
    if (rc == 0)
        rc = substitute_env(&sub, sub_field, u->env, u->n_env, s, b->err);
    snprintf(sub_field, sizeof sub_field, "%s.cwd", field);
    if (rc == 0 && u->cwd)
        rc = substitute(&sub, sub_field, u->cwd, &s->cwd, b->err);
    if (rc == 0)
        rc = substitute_ready(&sub, field, &u->ready, s, b->err);
    for (size_t i = 0; rc == 0 && i < u->n_depends_on; i++) {
        if (b->has_setup && strcmp(u->depends_on[i], "shared-setup") == 0)
            continue;
        if (strv_push(&s->depends_on, &s->n_depends_on, u->depends_on[i]) != 0)
            rc = kiln_err_set(b->err, KILN_ENOMEM, "out of memory");
    }
    if (rc == 0 && u->n_downloads)
        rc = add_download_step(b, u);
    return rc;
}

/* ---- public ----------------------------------------------------------------- */

int kiln_plan_build_with(const kiln_config_t *cfg, const kiln_gpu_list_t *gpus,
                         const kiln_plan_options_t *opts, kiln_plan_t *plan, kiln_err_t *err)
{
    builder_t b = {.cfg = cfg, .gpus = gpus, .plan = plan, .err = err};
    kiln_err_t local_err = {0};
    if (!err)
        b.err = &local_err;
    memset(plan, 0, sizeof *plan);
    snprintf(plan->machine_id, sizeof plan->machine_id, "%s",
             cfg->machine_id ? cfg->machine_id : "localhost");
    b.n_gpus = cfg->machine.has_gpu && gpus ? gpus->count : 0;
    if (b.n_gpus > PLAN_MAX_GPUS)
        b.n_gpus = PLAN_MAX_GPUS;
    if (opts && opts->kiln_path) {
        snprintf(b.kiln_path, sizeof b.kiln_path, "%s", opts->kiln_path);
    } else {
        ssize_t n = readlink("/proc/self/exe", b.kiln_path, sizeof b.kiln_path - 1);
        snprintf(b.kiln_path + (n > 0 ? n : 0), sizeof b.kiln_path - (size_t)(n > 0 ? n : 0), "%s",
                 n > 0 ? "" : "kiln");
        /* The agent alone (kiln-machine) runs its workers as the kiln beside it. */
        size_t len = strlen(b.kiln_path), suffix = strlen("/kiln-machine");
        if (len >= suffix && strcmp(b.kiln_path + len - suffix, "/kiln-machine") == 0)
            b.kiln_path[len - strlen("-machine")] = '\0';
    }
    kiln_ports_init(&b.ports);
    conn_sets_t c;
    classify(cfg, &c);
    int rc = resolve_type(&b, &c);
    if (rc == 0)
        rc = add_machine_services(&b, &c);
    if (rc == 0)
        rc = add_gpu_services(&b, &c);
    if (rc == 0)
        rc = add_api_workers(&b, &c);
    for (size_t i = 0; rc == 0 && i < cfg->n_services; i++)
        rc = add_user_service(&b, &cfg->services[i]);
    if (rc == 0)
        rc = kiln_plan_order(plan, b.err);
    kiln_ports_free(&b.ports);
    if (rc != 0)
        kiln_plan_free(plan);
    return rc;
}

int kiln_plan_build(const kiln_config_t *cfg, const kiln_gpu_list_t *gpus, kiln_plan_t *plan,
                    kiln_err_t *err)
{
    return kiln_plan_build_with(cfg, gpus, NULL, plan, err);
}

void kiln_plan_free(kiln_plan_t *plan)
{
    if (!plan)
        return;
    for (size_t i = 0; i < plan->count; i++)
        service_free(&plan->services[i]);
    free(plan->services);
    memset(plan, 0, sizeof *plan);
}
