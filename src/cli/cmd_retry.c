/*
 * kiln retry ID...: puts failed, dead or cancelled jobs back to pending.
 */
#include "cli/cli_common.h"
#include "cli/commands.h"

static const char retry_usage[] =
    "usage: kiln retry ID... [global options]\n"
    "\n"
    "Puts each failed, dead or cancelled job back to pending with its attempts\n"
    "reset. A pending, delayed, running or completed job is refused. Prints\n"
    "\"retried ID\" for each, or the reason it could not be.\n"
    "\n"
    "options:\n"
    "  --json   print [{\"id\":...,\"ok\":bool,\"error\":...}, ...]\n"
    "  --redis URL, -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  every job was put back to pending\n"
    "  1  at least one could not be (wrong state, not found)\n"
    "  2  usage error (no id, invalid id): nothing was retried\n"
    "  3  Redis unreachable\n";

static int retry_call(struct kiln_broker *broker, const char *id, struct kiln_err *err)
{
    return kiln_broker_retry(broker, id, err);
}

int kiln_cmd_retry(int argc, char **argv)
{
    static const kiln_cli_job_op_t op = {"retry", retry_usage, "retried", retry_call};
    return kiln_cli_run_job_op(argc, argv, &op);
}
