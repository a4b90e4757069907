/*
 * The configuration schema: one table row per scalar setting (its file path,
 * its environment names, its type and range, where it lives in
 * kiln_config_t), and the code that validates a value against its row,
 * whether the value came from the file or from the environment. Private to
 * config.c.
 */
#ifndef KILN_CONFIG_SCHEMA_H
#define KILN_CONFIG_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include "core/yaml_tree.h"
#include "kiln/config.h"

#define KILN_CONFIG_MAX_WORKER_CONNECTORS 64
#define KILN_CONFIG_MAX_CONNECTORS        256
#define KILN_CONFIG_NAME_MAX              64
#define KILN_CONFIG_ID_MAX                128
#define KILN_CONFIG_WHERE_MAX             400
#define KILN_CONFIG_MAX_POOLS             32
#define KILN_CONFIG_MAX_SERVICES          64
#define KILN_CONFIG_MAX_ARGS              256
#define KILN_CONFIG_MAX_ARG_BYTES         4096
#define KILN_CONFIG_MAX_ENV               256
#define KILN_CONFIG_MAX_DEPENDS           64

typedef enum {
    KILN_FIELD_ID,           /* a name: letters, digits, '.', '_', '-' */
    KILN_FIELD_REDIS_URL,    /* redis://[[user]:password@]host[:port][/db] */
    KILN_FIELD_LOG_FORMAT,   /* json | text */
    KILN_FIELD_LOG_LEVEL,    /* debug | info | warn | error */
    KILN_FIELD_INT,          /* an integer in [min, max], stored as int or long */
    KILN_FIELD_NAMES,        /* names: a list, or a comma list */
    KILN_FIELD_OBJECT,       /* a mapping; a JSON object in the environment */
    KILN_FIELD_BOOL,         /* true | false; also 1/0, yes/no, on/off in the environment */
    KILN_FIELD_SECRET,       /* a token: never echoed in a problem, shown as "***" */
    KILN_FIELD_MACHINE_TYPE, /* auto | gpu | api | hybrid */
    KILN_FIELD_WINDOWS       /* active windows "22:00-06:00,..." (kiln/windows.h), or a list */
} kiln_field_kind_t;

typedef struct kiln_config_field {
    const char *path;       /* "worker.concurrency" */
    const char *env;        /* "KILN_WORKER_CONCURRENCY" */
    const char *legacy_env; /* "WORKER_CONNECTORS", or NULL */
    kiln_field_kind_t kind;
    long min, max;           /* KILN_FIELD_INT only */
    size_t offset;           /* of the member in kiln_config_t */
    size_t size;             /* KILN_FIELD_INT: sizeof the member (int or long) */
    size_t count_offset;     /* KILN_FIELD_NAMES: of the size_t count beside the list */
    const char *legacy_env2; /* a second, older legacy name ("PM2_INSTANCES_PER_GPU"), or NULL */
} kiln_config_field_t;

#define KILN_CONFIG_N_FIELDS 32

extern const kiln_config_field_t kiln_config_fields[KILN_CONFIG_N_FIELDS];

/* "auto", "gpu", "api", "hybrid", indexed by kiln_machine_type_t. */
extern const char *const kiln_config_machine_type_names[4];

/* One load in progress: the config being filled, the problems found so far,
 * and where each field was last set (NULL: still the default), so that a
 * check across two fields can point at the one the user wrote. */
typedef struct kiln_config_ctx {
    kiln_config_t *cfg;
    kiln_problems_t *problems;
    char *set_at[KILN_CONFIG_N_FIELDS]; /* owned */
} kiln_config_ctx_t;

/* Where a value came from: a file (with its parsed document, for lines) or
 * the environment variable named env. */
typedef struct kiln_config_origin {
    const char *file;
    const kiln_yaml_doc_t *doc;
    const char *env;
    const char *flag; /* a command-line flag (kiln_config_set_flag) */
} kiln_config_origin_t;

/* The row for a file path such as "broker.lease_ms", or NULL. */
const kiln_config_field_t *kiln_config_field_find(const char *path);

/* Formats the prefix of a problem about path into buf:
 * "kiln.yaml:12: worker.concurrency" or "environment KILN_WORKER_CONCURRENCY". */
void kiln_config_where(const kiln_config_origin_t *o, const char *path, char *buf, size_t size);

/* Describes a value for "got ..." in a message: strings quoted and escaped
 * (control and non-ASCII bytes as \xNN, long ones shortened), numbers as
 * written, containers as "a mapping" / "a list". */
void kiln_config_describe(const json_t *value, char *buf, size_t size);

/* Quotes and escapes text like kiln_config_describe does for strings. */
void kiln_config_quote(const char *text, char *buf, size_t size);

/* Whether name is a connector name: [a-z0-9][a-z0-9_-]{0,63}. */
bool kiln_config_valid_name(const char *name);

/* Validates value (from the file at o) against f and stores it in ctx->cfg.
 * Records each problem in ctx->problems. Returns true when stored. */
/* Sets f from text as its environment variable would be parsed and
 * checked; false when it recorded a problem (the field is unchanged). */
bool kiln_config_field_set_text(kiln_config_ctx_t *ctx, const kiln_config_field_t *f,
                                const char *text, const kiln_config_origin_t *o);

bool kiln_config_field_set_json(kiln_config_ctx_t *ctx, const kiln_config_field_t *f,
                                const json_t *value, const kiln_config_origin_t *o);

/* Applies every KILN_* (and legacy) variable of the schema found in envp. */
void kiln_config_apply_env(kiln_config_ctx_t *ctx, char **envp);

/* Checks the rules that tie two fields together (heartbeat below the lease,
 * backoff base below its maximum). */
void kiln_config_check_across(kiln_config_ctx_t *ctx);

/* Replaces the password of a URL's user information with "***"; other
 * strings are copied. Caller frees. */
char *kiln_config_redact_url(const char *url);

/* ---- services and templates (config_services.c) ---------------------------- */

/* Fills cfg->templates with the built-in defaults (ports, commands). */
void kiln_config_templates_defaults(kiln_config_t *cfg);

/* Loads the services: section (a mapping of names) into ctx->cfg->services,
 * recording each problem with its file and line. */
void kiln_config_load_services(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                               const json_t *section);

/* Loads the templates: section over the defaults. */
void kiln_config_load_templates(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                                const json_t *section);

/* The services and templates sections as JSON, unredacted (the caller
 * redacts). Caller owns the results. */
json_t *kiln_config_services_to_json(const kiln_config_t *cfg);
json_t *kiln_config_templates_to_json(const kiln_config_t *cfg);

/* services.NAME.downloads (config_downloads.c): a list of at most
 * KILN_CONFIG_MAX_DOWNLOADS {url, sha256, path} mappings into s. Records
 * each problem; false when it recorded one. */
#define KILN_CONFIG_MAX_DOWNLOADS 64
bool kiln_config_load_downloads(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                                const char *path, const json_t *value, kiln_service_config_t *s);

/* s's downloads as JSON, URLs without user information or query
 * (kiln_url_redact); NULL when it has none. */
json_t *kiln_config_downloads_to_json(const kiln_service_config_t *s);

/* Releases s's downloads. */
void kiln_config_downloads_free(kiln_service_config_t *s);

/* Releases cfg->services and cfg->templates. */
void kiln_config_services_free(kiln_config_t *cfg);

/* ---- the hub section (config_hub.c) ----------------------------------------- */

void kiln_config_hub_defaults(kiln_config_t *cfg);

/* Loads the hub: section, recording each problem with its file and line. */
void kiln_config_load_hub(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                          const json_t *section);

/* Applies KILN_HUB_LISTEN, _THREADS, _MAX_BODY_BYTES, _TOKENS, _CORS_ORIGINS. */
void kiln_config_hub_apply_env(kiln_config_ctx_t *ctx, char **envp);

/* Sets hub.listen, hub.threads or hub.max_body_bytes from a flag's text. */
bool kiln_config_hub_set_text(kiln_config_ctx_t *ctx, const char *path, const char *flag,
                              const char *text);

/* The hub section as JSON with every token replaced by "***". Caller owns. */
json_t *kiln_config_hub_to_json(const kiln_config_t *cfg);

void kiln_config_hub_free(kiln_config_t *cfg);

/* ---- hub.webhooks (config_webhooks.c) ----------------------------------------- */

/* Loads hub.webhooks (default_url, max_attempts, secret_file; a secret
 * written in the file itself is refused). */
void kiln_config_load_hub_webhooks(kiln_config_ctx_t *ctx, const kiln_config_origin_t *o,
                                   const json_t *section);

/* Applies KILN_HUB_WEBHOOKS_SECRET, _SECRET_FILE, _DEFAULT_URL, _MAX_ATTEMPTS. */
void kiln_config_hub_webhooks_apply_env(kiln_config_ctx_t *ctx, char **envp);

/* hub.webhooks as JSON, the secret shown as "***". Caller owns. */
json_t *kiln_config_hub_webhooks_to_json(const kiln_config_t *cfg);

/* Releases hub.webhooks, wiping the secret. */
void kiln_config_hub_webhooks_free(kiln_config_t *cfg);

#endif
