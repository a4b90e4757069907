/* Helpers every subcommand shares: global flags, config loading, connecting. */
#ifndef KILN_CLI_COMMON_H
#define KILN_CLI_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#include "kiln/broker.h"
#include "kiln/config.h"

typedef struct kiln_cli_globals {
    const char *config_path; /* --config PATH | -c PATH */
    const char *redis_url;   /* --redis URL */
    const char *log_format;  /* --log-format json|text */
    const char *log_level;   /* --log-level debug|info|warn|error */
    bool json;               /* --json: machine-readable output */
    bool help;               /* --help | -h */
} kiln_cli_globals_t;

/* Removes the global flags above from argv (in place, updating *argc) and
 * records them in g. Returns 0, or KILN_EXIT_USAGE after printing what is
 * wrong (a flag missing its value). argv[0] is the subcommand name. */
int kiln_cli_parse_globals(int *argc, char **argv, kiln_cli_globals_t *g);

/* Loads the config (file, environment) and applies the flags in g. Prints
 * every problem to stderr and returns KILN_EXIT_USAGE on a bad config; 0 on
 * success, with the process log format and level configured. */
int kiln_cli_load_config(const kiln_cli_globals_t *g, kiln_config_t *cfg);

/* Connects to the configured Redis. Prints the error and returns
 * KILN_EXIT_UNAVAILABLE when it cannot (KILN_EXIT_USAGE for a malformed
 * URL); 0 on success. */
int kiln_cli_connect(const kiln_config_t *cfg, kiln_broker_t **broker);

/* A command's option and the config path it sets. */
typedef struct kiln_cli_flag {
    const char *flag, *path;
} kiln_cli_flag_t;

/* Sets the config path of flag (one of the n in flags) to value. Prints
 * what is wrong as "kiln COMMAND: ..." and returns KILN_EXIT_USAGE for a
 * bad value or an option not in flags; 0 on success. */
int kiln_cli_apply_flag(kiln_config_t *cfg, const char *command, const kiln_cli_flag_t *flags,
                        size_t n, const char *flag, const char *value);

/* Maps a KILN_E* code to the CLI exit code (commands.h). */
int kiln_cli_exit_code(int kiln_code);

#endif
