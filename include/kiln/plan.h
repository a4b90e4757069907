/*
 * The service plan: what the machine agent runs, derived only from the
 * configuration and the GPU list, so that `kiln machine plan` shows exactly
 * what `kiln machine` would start. Building a plan starts nothing.
 *
 * Order: shared-setup (when templates.setup.command is set), per-machine
 * inference services (ollama), per-GPU inference instances (comfyui-gpu0..,
 * a1111-gpu0..), their workers (worker-gpu0..), API workers (worker-api0..),
 * then the user's services; a service always comes after the services it
 * depends on. The same inputs give the same plan. See docs/machine.md.
 */
#ifndef KILN_PLAN_H
#define KILN_PLAN_H

#include <jansson.h>
#include <stddef.h>

#include "kiln/config.h"
#include "kiln/err.h"
#include "kiln/gpu.h"

/* At most this many services in one plan (64 GPUs x 16 instances x a few
 * connectors stays below it). */
#define KILN_PLAN_MAX_SERVICES 4096

typedef enum {
    KILN_SERVICE_SETUP,     /* one-shot step before everything else */
    KILN_SERVICE_INFERENCE, /* a local model server: ComfyUI, A1111, Ollama */
    KILN_SERVICE_WORKER,    /* a kiln worker bound to one GPU instance */
    KILN_SERVICE_CONNECTOR, /* a kiln worker for connectors with no GPU instance (APIs) */
    KILN_SERVICE_USER       /* from services: in the config */
} kiln_service_kind_t;

/* A readiness check with every placeholder substituted. */
typedef struct kiln_plan_ready {
    kiln_ready_kind_t kind;
    char *target;   /* http: URL; tcp: "host:port"; owned or NULL */
    char **command; /* command: argv, owned, NULL-terminated, or NULL */
} kiln_plan_ready_t;

typedef struct kiln_plan_service {
    char *name;
    kiln_service_kind_t kind;
    char **argv; /* owned, NULL-terminated; argv[0] is the program */
    size_t argc;
    char **env; /* owned "NAME=value", NULL-terminated: added to the agent's environment */
    size_t n_env;
    char *cwd;         /* owned, or NULL: the agent's working directory */
    int port;          /* 0: none */
    int gpu;           /* index into the GPU list (CUDA_VISIBLE_DEVICES pinned); -1: none */
    char **depends_on; /* owned, NULL-terminated */
    size_t n_depends_on;
    kiln_plan_ready_t ready;
    kiln_restart_t restart;
    long backoff_ms;       /* first restart delay; -1: the supervisor's default */
    long ready_timeout_ms; /* readiness deadline; -1: the supervisor's default */
    long stop_timeout_ms;  /* SIGKILL after; -1: the supervisor's default */
    long memory_limit_mb;  /* restart above this RSS; -1: none */
    char *downloads_for;   /* a "NAME-downloads" step: the service NAME it fetches files for
                              (`kiln machine download`); owned, else NULL */
} kiln_plan_service_t;

typedef struct kiln_plan {
    char machine_id[129];
    kiln_machine_type_t machine_type; /* resolved: never KILN_MACHINE_AUTO */
    size_t n_gpus;                    /* GPUs the plan uses */
    kiln_plan_service_t *services;    /* owned, count entries, in start order */
    size_t count;
} kiln_plan_t;

typedef struct kiln_plan_options {
    const char *kiln_path; /* the program workers run as; NULL: /proc/self/exe */
} kiln_plan_options_t;

/* Builds the plan for cfg on a machine with gpus (NULL: none). GPUs are
 * used only when cfg->machine.has_gpu; the caller applies
 * machine.gpu_count when it discovers (kiln_gpu_options_t.override_count).
 * Fills plan, which the caller releases with kiln_plan_free, and returns 0;
 * or returns KILN_EINVAL (a port collision naming both services, a port
 * outside 1024-65535, a GPU connector without GPUs, an unknown dependency,
 * a cycle, an unknown placeholder) or KILN_ENOMEM with the message in err
 * and plan left empty. */
int kiln_plan_build(const kiln_config_t *cfg, const kiln_gpu_list_t *gpus, kiln_plan_t *plan,
                    kiln_err_t *err);

/* kiln_plan_build with options (opts may be NULL). */
int kiln_plan_build_with(const kiln_config_t *cfg, const kiln_gpu_list_t *gpus,
                         const kiln_plan_options_t *opts, kiln_plan_t *plan, kiln_err_t *err);

/* Checks that every depends_on names a service of plan and sorts the
 * services so each comes after its dependencies, otherwise keeping their
 * order. Returns 0, or KILN_EINVAL naming an unknown dependency or the
 * services of a cycle ("a -> b -> a"), or KILN_ENOMEM; plan is unchanged on
 * error. kiln_plan_build calls it; call it again after editing a plan. */
int kiln_plan_order(kiln_plan_t *plan, kiln_err_t *err);

/* The service named name, or NULL. Owned by plan. */
const kiln_plan_service_t *kiln_plan_find(const kiln_plan_t *plan, const char *name);

/* "setup", "inference", "worker", "connector", "user". */
const char *kiln_plan_kind_name(kiln_service_kind_t kind);

/* "always", "on-failure", "never". */
const char *kiln_plan_restart_name(kiln_restart_t restart);

/* The plan as JSON: {"machine_id", "machine_type", "gpus", "services": [{
 * "name", "kind", "argv", "env" (object), "cwd", "port", "gpu",
 * "depends_on", "ready", "restart"}]}. Passwords in URLs and the values of
 * variables whose names contain KEY, TOKEN, SECRET or PASSWORD are "***".
 * Caller owns the result. */
json_t *kiln_plan_to_json(const kiln_plan_t *plan);

/* Releases what plan owns (not plan itself); plan may be empty. */
void kiln_plan_free(kiln_plan_t *plan);

#endif
