/*
 * The kiln subcommands. Each lives in its own cmd_<name>.c and uses only
 * libkiln's public API plus the helpers in cli_common.h.
 * Each returns the process exit code (see docs/cli.md):
 *   0 success, 1 operation failed (job failed, not found, ...),
 *   2 usage or input error, 3 Redis unreachable, 4 timed out.
 */
#ifndef KILN_CLI_COMMANDS_H
#define KILN_CLI_COMMANDS_H

#define KILN_EXIT_OK 0
#define KILN_EXIT_FAILED 1
#define KILN_EXIT_USAGE 2
#define KILN_EXIT_UNAVAILABLE 3
#define KILN_EXIT_TIMEOUT 4

typedef struct kiln_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} kiln_command_t;

int kiln_cmd_config(int argc, char **argv);
int kiln_cmd_worker(int argc, char **argv);

#endif
