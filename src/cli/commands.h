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
int kiln_cmd_machine_run(int argc, char **argv);    /* kiln machine run */
int kiln_cmd_machine_reload(int argc, char **argv); /* kiln machine reload */
/* kiln machine download (cmd_machine_download.c) */
int kiln_cmd_machine_download(int argc, char **argv);
int kiln_cmd_services(int argc, char **argv);
int kiln_cmd_logs(int argc, char **argv);
int kiln_cmd_restart(int argc, char **argv);
int kiln_cmd_machines(int argc, char **argv); /* cmd_machines.c */
int kiln_cmd_wake(int argc, char **argv);     /* cmd_machines.c */
int kiln_cmd_hub(int argc, char **argv);

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

/* ---- The machine API client (cmd_services.c) ------------------------------ */

struct kiln_cli_globals;
struct json_t;

/* Where the machine API is and the token for its control endpoints. */
typedef struct kiln_cli_api {
    char base_url[512];
    const char *token; /* --token, else KILN_MACHINE_API_TOKEN; may be NULL */
} kiln_cli_api_t;

/* Takes --api URL and --token TOKEN out of argv (in place, updating *argc)
 * and fills api: the URL given, else http://127.0.0.1:<machine.health_port>
 * from the configuration. Prints the problem and returns KILN_EXIT_USAGE
 * on a bad flag or configuration; 0 on success. */
int kiln_cli_api_setup(const char *cmd, int *argc, char **argv, const struct kiln_cli_globals *g,
                       kiln_cli_api_t *api);

/* Called with each line (without its newline) of a streamed reply. */
typedef void (*kiln_cli_api_stream_cb)(void *ctx, char *line);

/* Sends METHOD path (empty body; the bearer token on POST). With stream,
 * the 2xx reply's lines go to stream(stream_ctx, line) as they arrive and
 * there is no overall timeout; else the reply is parsed into *reply
 * (caller frees; reply may be NULL). Prints any error (the agent's message,
 * or why it cannot be reached) and returns the exit code: 0, 1 an error
 * reply, 2 a 400/405/413, 3 unreachable or 503, 4 timed out. */
int kiln_cli_api_call(const char *cmd, const kiln_cli_api_t *api, const char *method,
                      const char *path, kiln_cli_api_stream_cb stream, void *stream_ctx,
                      struct json_t **reply);

#endif
