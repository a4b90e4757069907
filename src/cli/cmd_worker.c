/* kiln worker: claims and runs jobs until SIGTERM/SIGINT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "kiln/log.h"
#include "kiln/worker.h"

static const char usage_text[] =
    "usage: kiln worker [options]\n"
    "\n"
    "Claims jobs its connectors can run and runs them; stops on SIGTERM or SIGINT:\n"
    "no new claims, running jobs get worker.shutdown_grace_ms to finish, the rest\n"
    "go back to the queue without counting an attempt. A second signal hands them\n"
    "back at once.\n"
    "\n"
    "options (each overrides kiln.yaml and the environment):\n"
    "  --connectors A,B       services to serve (worker.connectors, WORKER_CONNECTORS)\n"
    "  --concurrency N        slots: jobs run at once, 1-1024 (worker.concurrency)\n"
    "  --capabilities JSON    capability object matched against job requirements\n"
    "  --id ID                worker id (default <machine id>-<pid>)\n"
    "  --grace-ms MS          shutdown grace period (worker.shutdown_grace_ms)\n"
    "  --config PATH, --redis URL, --log-format json|text, --log-level LEVEL\n"
    "\n"
    "exit codes: 0 stopped cleanly, 2 bad configuration, 3 redis unreachable at start,\n"
    "            1 jobs did not stop in time\n";

static int set_connectors(kiln_config_t *cfg, const char *list)
{
    for (size_t i = 0; i < cfg->worker.n_connectors; i++)
        free(cfg->worker.connectors[i]);
    free(cfg->worker.connectors);
    cfg->worker.connectors = NULL;
    cfg->worker.n_connectors = 0;
    char *copy = strdup(list), *save = NULL;
    size_t cap = strlen(list) / 2 + 1;
    cfg->worker.connectors = calloc(cap, sizeof(char *));
    for (char *tok = strtok_r(copy, ",", &save); tok && cfg->worker.n_connectors < cap;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (*tok)
            cfg->worker.connectors[cfg->worker.n_connectors++] = strdup(tok);
    }
    free(copy);
    return cfg->worker.n_connectors > 0 ? 0 : -1;
}

static int parse_long(const char *flag, const char *text, long min, long max, long *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v < min || v > max) {
        fprintf(stderr, "kiln worker: %s: expected an integer %ld-%ld, got \"%s\"\n", flag, min,
                max, text);
        return KILN_EXIT_USAGE;
    }
    *out = v;
    return 0;
}

static int apply_flag(kiln_config_t *cfg, const char *flag, const char *value)
{
    long n;
    if (!strcmp(flag, "--connectors")) {
        if (set_connectors(cfg, value) != 0) {
            fprintf(stderr, "kiln worker: --connectors: expected a comma list of names\n");
            return KILN_EXIT_USAGE;
        }
    } else if (!strcmp(flag, "--concurrency")) {
        if (parse_long(flag, value, 1, 1024, &n))
            return KILN_EXIT_USAGE;
        cfg->worker.concurrency = (int)n;
    } else if (!strcmp(flag, "--grace-ms")) {
        if (parse_long(flag, value, 0, 3600000, &n))
            return KILN_EXIT_USAGE;
        cfg->worker.shutdown_grace_ms = n;
    } else if (!strcmp(flag, "--id")) {
        free(cfg->worker.id);
        cfg->worker.id = strdup(value);
    } else if (!strcmp(flag, "--capabilities")) {
        json_error_t jerr;
        json_t *caps = json_loads(value, 0, &jerr);
        if (!json_is_object(caps)) {
            fprintf(stderr, "kiln worker: --capabilities: expected a JSON object (%s)\n",
                    caps ? "got another JSON value" : jerr.text);
            json_decref(caps);
            return KILN_EXIT_USAGE;
        }
        json_decref(cfg->worker.capabilities);
        cfg->worker.capabilities = caps;
    } else {
        fprintf(stderr, "kiln worker: unknown option %s (see kiln worker --help)\n", flag);
        return KILN_EXIT_USAGE;
    }
    return 0;
}

int kiln_cmd_worker(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc)
        return rc;
    if (g.help) {
        fputs(usage_text, stdout);
        return KILN_EXIT_OK;
    }
    kiln_config_t cfg;
    rc = kiln_cli_load_config(&g, &cfg);
    for (int i = 1; rc == 0 && i < argc; i++) {
        const char *flag = argv[i], *eq = strchr(flag, '=');
        char name[32];
        const char *value;
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - flag), flag);
            value = eq + 1;
        } else if (i + 1 < argc && strncmp(flag, "--", 2) == 0) {
            snprintf(name, sizeof name, "%s", flag);
            value = argv[++i];
        } else {
            fprintf(stderr, "kiln worker: unexpected argument \"%s\" (see kiln worker --help)\n",
                    flag);
            rc = KILN_EXIT_USAGE;
            break;
        }
        rc = apply_flag(&cfg, name, value);
    }
    if (rc) {
        kiln_config_free(&cfg);
        return rc;
    }
    kiln_worker_t *w = NULL;
    kiln_err_t err = {0};
    if (kiln_worker_new(&cfg, &w, &err) != 0) {
        fprintf(stderr, "kiln worker: %s\n", err.msg);
        kiln_config_free(&cfg);
        return kiln_cli_exit_code(err.code);
    }
    rc = kiln_worker_run(w, &err);
    if (rc)
        fprintf(stderr, "kiln worker: %s\n", err.msg);
    kiln_worker_free(w);
    kiln_config_free(&cfg);
    return rc ? KILN_EXIT_FAILED : KILN_EXIT_OK;
}
