/*
 * The kiln subcommands. Each lives in its own cmd_<name>.c and uses only
 * libkiln's public API plus the helpers in cli_common.h.
 * Each returns the process exit code (see docs/cli.md):
 *   0 success, 1 operation failed (job failed, not found, ...),
 *   2 usage or input error, 3 Redis unreachable, 4 timed out.
 */
#ifndef KILN_CLI_COMMANDS_H
#define KILN_CLI_COMMANDS_H

#include <stdbool.h>

#define KILN_EXIT_OK          0
#define KILN_EXIT_FAILED      1
#define KILN_EXIT_USAGE       2
#define KILN_EXIT_UNAVAILABLE 3
#define KILN_EXIT_TIMEOUT     4

typedef struct kiln_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} kiln_command_t;

int kiln_cmd_config(int argc, char **argv);
int kiln_cmd_worker(int argc, char **argv);
int kiln_cmd_submit(int argc, char **argv);
int kiln_cmd_job(int argc, char **argv);
int kiln_cmd_jobs(int argc, char **argv);
int kiln_cmd_cancel(int argc, char **argv);
int kiln_cmd_retry(int argc, char **argv);
int kiln_cmd_queues(int argc, char **argv);
int kiln_cmd_workers(int argc, char **argv);
int kiln_cmd_machine(int argc, char **argv);

/* ---- Shared between commands ---------------------------------------------- */

struct kiln_broker;
struct kiln_err;

/* Checks that id can be a job id (1..KILN_JOB_ID_MAX-1 bytes, printable, no
 * blanks) before it goes to Redis. Prints "kiln CMD: ..." and returns
 * KILN_EXIT_USAGE when not; 0 when it can. (cmd_job.c) */
int kiln_cli_check_job_id(const char *cmd, const char *id);

/* Parses a --timeout style value in seconds (decimals allowed, 0..one
 * year) into *ms. Prints "kiln CMD: FLAG: ..." and returns KILN_EXIT_USAGE
 * on a bad value. (cmd_job.c) */
int kiln_cli_parse_seconds(const char *cmd, const char *flag, const char *text, long *ms);

/* Follows job id until it is final or timeout_ms passes (<= 0: forever),
 * printing a live progress bar on a terminal, one line per event otherwise,
 * or (json) only the final job object. Returns the exit code: 0 completed,
 * 1 failed, dead, cancelled or not found, 3 Redis lost, 4 timed out.
 * (cmd_job.c) */
int kiln_cli_job_wait(struct kiln_broker *broker, const char *id, long timeout_ms, bool json);

/* A per-job command (cancel, retry): its name, help text, the word printed
 * on success, and the broker call. */
typedef struct kiln_cli_job_op {
    const char *name;
    const char *usage;
    const char *done_verb;
    int (*call)(struct kiln_broker *broker, const char *id, struct kiln_err *err);
} kiln_cli_job_op_t;

/* Runs op on each job id in argv[1..], printing "<done_verb> ID" or the
 * error for each (with --json one array of {"id","ok","error"}). Returns 0
 * when all succeeded, 3 when Redis failed, 1 when any other failed, 2 on a
 * usage error. (cmd_cancel.c) */
int kiln_cli_run_job_op(int argc, char **argv, const kiln_cli_job_op_t *op);

#endif
