/*
 * kiln logs SERVICE [-n N] [-f]: a service's recent output from the
 * machine agent, and with -f every new line as it is written.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"
#include "kiln/machine_api.h"

#define LINE_SHOWN_MAX (64 * 1024) /* a longer line is cut on a terminal */

static const char logs_usage[] =
    "usage: kiln logs SERVICE [-n N] [-f] [--json] [--api URL] [global options]\n"
    "\n"
    "Prints the last lines of a service's output (stdout, stderr and the agent's\n"
    "own notes about it), from the machine agent on this machine.\n"
    "\n"
    "options:\n"
    "  -n N, --lines N   how many lines, 1-10000 (default 100)\n"
    "  -f, --follow      keep printing new lines until interrupted (Ctrl-C)\n"
    "  --json            print the entries as JSON ({\"time\", \"stream\", \"line\"}):\n"
    "                    an array, or with -f one object per line\n"
    "  --api URL         the machine API (default http://127.0.0.1:<machine.health_port>)\n"
    "  -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "On a terminal, control characters in the output are shown as '?'.\n"
    "\n"
    "exit codes:\n"
    "  0  printed (with -f: the agent ended the stream)\n"
    "  1  no such service, or the agent answered with an error\n"
    "  2  usage error\n"
    "  3  the machine API is unreachable or unavailable\n"
    "  4  timed out\n";

typedef struct logs_out {
    bool json;
    bool tty; /* sanitise what reaches a terminal */
} logs_out_t;

static void print_line(const logs_out_t *out, const char *line)
{
    if (!out->tty) {
        fputs(line, stdout);
        fputc('\n', stdout);
        return;
    }
    static char safe[LINE_SHOWN_MAX];
    kiln_cli_sanitize(line, safe, sizeof safe);
    puts(safe);
}

static void print_entry(const logs_out_t *out, const json_t *entry)
{
    if (out->json) {
        kiln_cli_print_json(entry);
        return;
    }
    const char *line = json_string_value(json_object_get(entry, "line"));
    print_line(out, line ? line : "");
}

/* One NDJSON line of a followed log. */
static void on_stream_line(void *ctx, char *line)
{
    logs_out_t *out = ctx;
    if (!*line)
        return;
    json_t *entry = json_loads(line, 0, NULL);
    if (entry)
        print_entry(out, entry);
    else
        print_line(out, line);
    json_decref(entry);
    fflush(stdout);
}

static int parse_lines(const char *text, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (!*text || *end || errno || n < 1 || n > KILN_MACHINE_API_LINES_MAX) {
        char safe[64];
        kiln_cli_sanitize(text, safe, sizeof safe);
        fprintf(stderr, "kiln logs: -n: expected an integer 1-%d, got \"%s\"\n",
                KILN_MACHINE_API_LINES_MAX, safe);
        return KILN_EXIT_USAGE;
    }
    *out = n;
    return 0;
}

typedef struct logs_opts {
    const char *service;
    long lines;
    bool follow;
} logs_opts_t;

static int parse_logs_opts(int argc, char **argv, logs_opts_t *o)
{
    o->lines = KILN_MACHINE_API_LINES_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int rc = 0;
        if (strcmp(arg, "-f") == 0 || strcmp(arg, "--follow") == 0) {
            o->follow = true;
        } else if (strcmp(arg, "-n") == 0 || strcmp(arg, "--lines") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln logs: %s needs a value\n", arg);
                return KILN_EXIT_USAGE;
            }
            rc = parse_lines(argv[++i], &o->lines);
        } else if (strncmp(arg, "--lines=", 8) == 0) {
            rc = parse_lines(arg + 8, &o->lines);
        } else if (strncmp(arg, "-n", 2) == 0 && arg[2]) {
            rc = parse_lines(arg + 2, &o->lines);
        } else if (arg[0] == '-' || o->service) {
            fprintf(stderr, "kiln logs: %s '%s' (see kiln logs --help)\n",
                    arg[0] == '-' ? "unknown option" : "unexpected argument", arg);
            return KILN_EXIT_USAGE;
        } else {
            o->service = arg;
        }
        if (rc)
            return rc;
    }
    if (!o->service) {
        fprintf(stderr, "kiln logs: which service? (kiln services lists them)\n");
        return KILN_EXIT_USAGE;
    }
    if (!kiln_machine_api_valid_service_name(o->service)) {
        char safe[80];
        kiln_cli_sanitize(o->service, safe, sizeof safe);
        fprintf(stderr,
                "kiln logs: service \"%s\": a service name is 1-64 characters of a-z, 0-9, '_' "
                "and '-', starting with a letter or digit\n",
                safe);
        return KILN_EXIT_USAGE;
    }
    return 0;
}

int kiln_cmd_logs(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc)
        return rc;
    if (g.help) {
        fputs(logs_usage, stdout);
        return KILN_EXIT_OK;
    }
    kiln_cli_api_t api;
    if ((rc = kiln_cli_api_setup("logs", &argc, argv, &g, &api)) != 0)
        return rc;
    logs_opts_t o = {0};
    if ((rc = parse_logs_opts(argc, argv, &o)) != 0)
        return rc;
    logs_out_t out = {.json = g.json, .tty = isatty(STDOUT_FILENO) == 1};
    char path[256];
    snprintf(path, sizeof path, "/logs?service=%s&lines=%ld%s", o.service, o.lines,
             o.follow ? "&follow=1&format=ndjson" : "");
    if (o.follow)
        return kiln_cli_api_call("logs", &api, "GET", path, on_stream_line, &out, NULL);

    json_t *reply = NULL;
    rc = kiln_cli_api_call("logs", &api, "GET", path, NULL, NULL, &reply);
    if (rc == 0) {
        json_t *lines = json_object_get(reply, "lines");
        if (out.json) {
            kiln_cli_print_json(lines);
        } else {
            size_t i;
            json_t *entry;
            json_array_foreach(lines, i, entry)
            {
                print_entry(&out, entry);
            }
        }
    }
    json_decref(reply);
    return rc;
}
