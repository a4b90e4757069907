/*
 * Configuration: defaults < file (kiln.yaml, YAML or JSON) < environment
 * (KILN_* and the legacy names HUB_REDIS_URL, MACHINE_ID, WORKER_CONNECTORS,
 * MACHINE_TYPE, ... listed in docs/config.md)
 * < command-line flags (applied by the CLI after kiln_config_load).
 *
 * Every value is validated against one schema table; a bad config reports
 * every problem at once, each naming file, line, field, expected and actual.
 */
#ifndef KILN_CONFIG_H
#define KILN_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "kiln/log.h"
#include "kiln/service_types.h"

/* A list of human-readable problems, e.g.
 * "kiln.yaml:12: worker.concurrency: expected an integer 1-1024, got \"abc\"". */
typedef struct kiln_problems {
    char **items;
    size_t count;
} kiln_problems_t;

void kiln_problems_add(kiln_problems_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kiln_problems_clear(kiln_problems_t *p);

/* One named connector instance. The name is the service (queue) jobs ask for;
 * type picks the C module ("simulation", "exec", ...); options is the
 * type-specific object, validated by the connector itself. */
typedef struct kiln_connector_config {
    char *name;
    char *type;
    json_t *options; /* owned; an object, possibly empty */
    /* Borrowed; the Redis the running worker uses (set by the worker, NULL
     * elsewhere), for connectors that share state across the fleet, such as
     * the rate limit of the API connectors. */
    const char *redis_url;
} kiln_connector_config_t;

/* machine.type: what the machine runs. AUTO is decided by the plan from the
 * connectors listed and the GPUs found (docs/machine.md). */
typedef enum {
    KILN_MACHINE_AUTO,
    KILN_MACHINE_GPU,
    KILN_MACHINE_API,
    KILN_MACHINE_HYBRID
} kiln_machine_type_t;

/* A readiness check as configured; strings may hold {port}-style
 * placeholders, substituted by the plan. */
typedef struct kiln_ready_config {
    kiln_ready_kind_t kind;
    char *target;   /* KILN_READY_HTTP / KILN_READY_TCP; owned */
    char **command; /* KILN_READY_COMMAND: argv, owned, n_command entries + NULL */
    size_t n_command;
} kiln_ready_config_t;

/* A file fetched before its service starts: services.NAME.downloads[i]. */
typedef struct kiln_download_config {
    char *url;    /* http:// or https://; owned */
    char *sha256; /* 64 lowercase hex digits, or NULL: no check; owned */
    char *path;   /* where it goes; relative to the service's cwd when set; owned */
} kiln_download_config_t;

/* One user-defined service: services: { NAME: {...} }. */
typedef struct kiln_service_config {
    char *name;
    char **command; /* argv, owned, n_command entries + NULL */
    size_t n_command;
    char **env; /* "NAME=value", owned, n_env entries + NULL */
    size_t n_env;
    char *cwd; /* NULL: the agent's working directory */
    char **depends_on;
    size_t n_depends_on;
    kiln_ready_config_t ready;
    kiln_restart_t restart; /* default always */
    long backoff_ms;        /* first restart delay, 0-3600000; -1: the supervisor's default */
    long ready_timeout_ms;  /* readiness deadline, 100-86400000; -1: the supervisor's default */
    long stop_timeout_ms;   /* SIGKILL after, 0-3600000; -1: the supervisor's default */
    long memory_limit_mb;   /* restart above this RSS, 1-1048576; -1: no limit */
    int port;               /* 0: none */
    int gpu;                /* -1: none; else pins CUDA_VISIBLE_DEVICES to that GPU */
    kiln_download_config_t *downloads; /* fetched, in order, before the service starts */
    size_t n_downloads;
} kiln_service_config_t;

/* A 32-bit digest of s's downloads (URLs, checksums, paths): it changes
 * when the list does. */
unsigned long kiln_config_downloads_digest(const kiln_service_config_t *s);

/* The settings of a service the plan generates (templates.<name>). */
typedef struct kiln_template_config {
    int port;       /* comfyui/a1111: base_port (+ instance index); ollama: port; setup: 0 */
    char **command; /* argv, owned; NULL (setup only): no such service */
    size_t n_command;
    char *cwd;
    char **env; /* "NAME=value", owned */
    size_t n_env;
} kiln_template_config_t;

/* hub.tokens: a bearer token of the hub's API and what it may do. */
typedef enum { KILN_HUB_ROLE_ADMIN, KILN_HUB_ROLE_SUBMIT, KILN_HUB_ROLE_READ } kiln_hub_role_t;

typedef struct kiln_hub_token_config {
    char *name;  /* shown in logs and job ownership; never the token */
    char *token; /* owned; 16-256 printable characters */
    kiln_hub_role_t role;
} kiln_hub_token_config_t;

#define KILN_CONFIG_HUB_LISTEN_DEFAULT "127.0.0.1:8080"
#define KILN_CONFIG_HUB_TOKENS_MAX     64

typedef struct kiln_config {
    char *source_path; /* the file loaded, or NULL when none */

    char
        *redis_url; /* redis.url | KILN_REDIS_URL | HUB_REDIS_URL; default redis://127.0.0.1:6379 */
    char *machine_id; /* machine.id | KILN_MACHINE_ID | MACHINE_ID; default: host name */

    kiln_log_format_t log_format; /* log.format | KILN_LOG_FORMAT; default json */
    kiln_log_level_t log_level;   /* log.level | KILN_LOG_LEVEL; default info */

    struct {
        long max_payload_bytes;   /* broker.max_payload_bytes; default 1048576, 1024-67108864 */
        long stream_max_len;      /* broker.stream_max_len; default 100000, 100-10000000 */
        long retention_age_s;     /* broker.retention_age_s; default 604800, 1-31536000 */
        long retention_count;     /* broker.retention_count; default 10000, 0-10000000 */
        int default_max_attempts; /* broker.default_max_attempts; default 3, 1-100 */
        long backoff_base_ms;     /* broker.backoff_base_ms; default 1000, 0-3600000 */
        long backoff_max_ms;      /* broker.backoff_max_ms; default 300000, 0-86400000 */
        long lease_ms;            /* broker.lease_ms; default 30000, 100-3600000 */
    } broker;

    struct {
        char *id; /* worker.id | KILN_WORKER_ID; default "<machine_id>-<pid>" at run time (NULL
                     here) */
        char **connectors; /* worker.connectors | KILN_WORKER_CONNECTORS | WORKER_CONNECTORS (comma
                              list) */
        size_t n_connectors;
        json_t
            *capabilities; /* worker.capabilities | KILN_WORKER_CAPABILITIES (JSON object); owned */
        int concurrency;   /* worker.concurrency | KILN_WORKER_CONCURRENCY; default 1, 1-1024 */
        long heartbeat_ms; /* worker.heartbeat_ms; default 0 = lease_ms / 3 */
        long shutdown_grace_ms; /* worker.shutdown_grace_ms; default 30000, 0-3600000 */
        long registry_ttl_ms;   /* worker.registry_ttl_ms; default 15000, 1000-3600000 */
        int prefetch;           /* worker.prefetch: jobs claimed ahead while jobs are short;
                                   default 1, 0-1024 */
        char *active_windows;   /* worker.active_windows | KILN_WORKER_ACTIVE_WINDOWS: claim only
                                   inside these local-time windows ("22:00-06:00,12:00-13:00",
                                   canonical); NULL or "" = always; owned */
        /* worker.health_interval_ms: how often connectors' health is checked;
         * default 10000, 100-3600000 */
        long health_interval_ms;
    } worker;

    /* connectors: { NAME: { type: TYPE, ...options } }. A name listed in
     * worker.connectors but not defined here is a connector of the type of the
     * same name with empty options (so WORKER_CONNECTORS=simulation works). */
    kiln_connector_config_t *connectors;
    size_t n_connectors;

    /* The machine agent's view of this machine (docs/machine.md). Each has a
     * KILN_MACHINE_* variable and the legacy name shown. */
    struct {
        kiln_machine_type_t type; /* machine.type | MACHINE_TYPE; default auto */
        int gpu_count;            /* machine.gpu_count | MACHINE_GPU_COUNT; -1 = discover, 0-64 */
        bool has_gpu;             /* machine.has_gpu | MACHINE_HAS_GPU; false forces 0 GPUs */
        int ram_gb;               /* machine.ram_gb | MACHINE_RAM_GB; 0 = read /proc/meminfo */
        int instances_per_gpu;    /* machine.instances_per_gpu | INSTANCES_PER_GPU,
                                     PM2_INSTANCES_PER_GPU;    default 1, 1-16 */
        int api_workers;          /* machine.api_workers; default 1, 1-64 */
        int health_port;          /* machine.health_port | MACHINE_HEALTH_PORT; default 9090 */
        int install_timeout_s; /* machine.install_timeout_s | SERVICE_INSTALL_TIMEOUT; default 300
                                */
        char **pools;          /* machine.pools | MACHINE_POOLS (comma list) */
        size_t n_pools;
        /* machine.api_token | KILN_MACHINE_API_TOKEN: the bearer token of the
         * machine API's control endpoints; NULL turns them off. A secret:
         * never logged, shown as "***", never in /status. */
        char *api_token;
    } machine;

    /* services: { NAME: {...} }, in file order. */
    kiln_service_config_t *services;
    size_t n_services;

    /* templates: settings of the generated services. */
    struct {
        kiln_template_config_t setup;   /* service shared-setup; no command by default */
        kiln_template_config_t comfyui; /* base_port 8188 */
        kiln_template_config_t a1111;   /* base_port 7860 */
        kiln_template_config_t ollama;  /* port 11434 */
        /* port 3100; cwd: the service's folder */
        kiln_template_config_t playwright;
    } templates;

    /* kiln hub (docs/hub.md); each has a KILN_HUB_* variable. */
    struct {
        char *listen;         /* hub.listen | KILN_HUB_LISTEN; default 127.0.0.1:8080 */
        int threads;          /* hub.threads | KILN_HUB_THREADS; default 64, 4-1024 */
        long max_body_bytes;  /* hub.max_body_bytes | KILN_HUB_MAX_BODY_BYTES; default 2 MiB */
        int rate_limit_per_s; /* hub.rate_limit_per_s | KILN_HUB_RATE_LIMIT_PER_S: requests per
                                 second per token and hub, bursts of as many; 0 (default): none */
        kiln_hub_token_config_t *tokens; /* hub.tokens | KILN_HUB_TOKENS (NAME:ROLE:TOKEN,...) */
        size_t n_tokens;
        char **cors_origins; /* hub.cors_origins | KILN_HUB_CORS_ORIGINS (comma list) */
        size_t n_cors_origins;
        /* Webhook delivery (docs/hub.md); off while secret is NULL. */
        struct {
            char *secret;      /* KILN_HUB_WEBHOOKS_SECRET, or the file hub.webhooks.secret_file |
                                  KILN_HUB_WEBHOOKS_SECRET_FILE names; never logged */
            char *secret_file; /* the file it was read from (NULL: from the environment) */
            char *default_url; /* hub.webhooks.default_url | KILN_HUB_WEBHOOKS_DEFAULT_URL */
            int max_attempts;  /* hub.webhooks.max_attempts | KILN_HUB_WEBHOOKS_MAX_ATTEMPTS;
                                  default 5, 1-20 */
        } webhooks;
    } hub;
} kiln_config_t;

/* Fills cfg with the defaults. Never fails. */
void kiln_config_init_defaults(kiln_config_t *cfg);

/* Loads defaults, then path (NULL: ./kiln.yaml if it exists, else none; a
 * path that does not exist is a problem), then the environment envp (NULL:
 * the process environment). On any problem returns KILN_EINVAL with every
 * problem in problems and cfg left in a valid but unspecified state that
 * kiln_config_free releases. */
int kiln_config_load(kiln_config_t *cfg, const char *path, char **envp, kiln_problems_t *problems);

/* Sets the setting at path (e.g. "worker.concurrency") from a command-line
 * flag's text, parsed and checked as its environment variable would be
 * (KILN_WORKER_CONCURRENCY), and re-applies the rule that a listed
 * connector without a definition is of the type of its name. Returns 0,
 * or KILN_EINVAL with the problem, naming flag, in problems; the setting
 * then keeps its earlier value. */
int kiln_config_set_flag(kiln_config_t *cfg, const char *path, const char *flag, const char *text,
                         kiln_problems_t *problems);

/* Looks up a connector instance by name, resolving the implicit
 * "name = type" rule. Returns NULL when unknown. The returned pointer is
 * owned by cfg. */
const kiln_connector_config_t *kiln_config_connector(const kiln_config_t *cfg, const char *name);

/* The effective configuration as a JSON object, secrets (passwords in URLs,
 * option keys naming a key, token, secret or password) replaced by "***".
 * Caller owns the result. */
json_t *kiln_config_to_json_redacted(const kiln_config_t *cfg);

/* Releases everything cfg owns (not cfg itself). */
void kiln_config_free(kiln_config_t *cfg);

#endif
