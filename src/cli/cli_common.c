#include "cli/cli_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "kiln/log.h"

static int take_value(int *i, int argc, char **argv, const char **out)
{
    const char *flag = argv[*i];
    const char *eq = strchr(flag, '=');
    if (eq) {
        *out = eq + 1;
        return 0;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "kiln %s: %s needs a value\n", argv[0], flag);
        return KILN_EXIT_USAGE;
    }
    *out = argv[++*i];
    return 0;
}

static bool flag_is(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

int kiln_cli_parse_globals(int *argc, char **argv, kiln_cli_globals_t *g)
{
    memset(g, 0, sizeof *g);
    int kept = 1;
    for (int i = 1; i < *argc; i++) {
        const char *arg = argv[i];
        int rc = 0;
        if (strcmp(arg, "--") == 0) {
            while (i < *argc)
                argv[kept++] = argv[i++];
            break;
        } else if (flag_is(arg, "--config") || strcmp(arg, "-c") == 0) {
            rc = take_value(&i, *argc, argv, &g->config_path);
        } else if (flag_is(arg, "--redis")) {
            rc = take_value(&i, *argc, argv, &g->redis_url);
        } else if (flag_is(arg, "--log-format")) {
            rc = take_value(&i, *argc, argv, &g->log_format);
        } else if (flag_is(arg, "--log-level")) {
            rc = take_value(&i, *argc, argv, &g->log_level);
        } else if (strcmp(arg, "--json") == 0) {
            g->json = true;
        } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            g->help = true;
        } else {
            argv[kept++] = argv[i];
        }
        if (rc)
            return rc;
    }
    *argc = kept;
    argv[kept] = NULL;
    return 0;
}

int kiln_cli_load_config(const kiln_cli_globals_t *g, kiln_config_t *cfg)
{
    kiln_problems_t problems = {0};
    int rc = kiln_config_load(cfg, g->config_path, NULL, &problems);
    if (g->redis_url) {
        free(cfg->redis_url);
        cfg->redis_url = strdup(g->redis_url);
    }
    if (g->log_format && kiln_log_format_parse(g->log_format, &cfg->log_format) != 0)
        kiln_problems_add(&problems, "--log-format: expected json or text, got \"%s\"",
                          g->log_format);
    if (g->log_level && kiln_log_level_parse(g->log_level, &cfg->log_level) != 0)
        kiln_problems_add(&problems, "--log-level: expected debug, info, warn or error, got \"%s\"",
                          g->log_level);
    if (rc != 0 || problems.count > 0) {
        fprintf(stderr, "kiln: the configuration has %zu problem%s:\n", problems.count,
                problems.count == 1 ? "" : "s");
        for (size_t i = 0; i < problems.count; i++)
            fprintf(stderr, "  %s\n", problems.items[i]);
        kiln_problems_clear(&problems);
        return KILN_EXIT_USAGE;
    }
    kiln_log_configure(cfg->log_format, cfg->log_level);
    return 0;
}

int kiln_cli_connect(const kiln_config_t *cfg, kiln_broker_t **broker)
{
    kiln_broker_options_t opts;
    kiln_broker_options_from_config(&opts, cfg);
    kiln_err_t err = {0};
    if (kiln_broker_connect(&opts, broker, &err) != 0) {
        fprintf(stderr, "kiln: %s\n", err.msg);
        return kiln_cli_exit_code(err.code);
    }
    return 0;
}

int kiln_cli_exit_code(int kiln_code)
{
    switch (kiln_code) {
    case KILN_OK:
        return KILN_EXIT_OK;
    case KILN_EINVAL:
    case KILN_ETOOBIG:
        return KILN_EXIT_USAGE;
    case KILN_EREDIS:
        return KILN_EXIT_UNAVAILABLE;
    case KILN_ETIMEOUT:
        return KILN_EXIT_TIMEOUT;
    default:
        return KILN_EXIT_FAILED;
    }
}

int kiln_cli_apply_flag(kiln_config_t *cfg, const char *command, const kiln_cli_flag_t *flags,
                        size_t n, const char *flag, const char *value)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(flag, flags[i].flag) != 0)
            continue;
        kiln_problems_t problems = {0};
        int rc = kiln_config_set_flag(cfg, flags[i].path, flag, value, &problems);
        for (size_t k = 0; k < problems.count; k++)
            fprintf(stderr, "kiln %s: %s\n", command, problems.items[k]);
        kiln_problems_clear(&problems);
        return rc ? KILN_EXIT_USAGE : 0;
    }
    fprintf(stderr, "kiln %s: unknown option %s (see kiln %s --help)\n", command, flag, command);
    return KILN_EXIT_USAGE;
}
