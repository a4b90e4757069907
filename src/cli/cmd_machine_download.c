/*
 * kiln machine download --service NAME: fetches services.NAME.downloads.
 * The machine agent runs it as the "NAME-downloads" step before NAME and
 * reads its progress lines; it can also be run by hand to prefetch.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "kiln/download.h"

static const char download_help[] =
    "usage: kiln machine download --service NAME [global options]\n"
    "\n"
    "Fetches the files of services.NAME.downloads in order (resumed, checked\n"
    "against their sha256), printing a progress line about every 200 ms.\n"
    "Exits 0 once every file is there, 1 on a failure (named on stderr).\n"
    "See docs/downloads.md.\n";

static atomic_int cancel_requested;

/* SIGTERM/SIGINT (the agent stopping the step): stop soon and keep the
 * .part file for the next run to resume. */
static void on_stop_signal(int sig)
{
    (void)sig;
    atomic_store(&cancel_requested, 1);
}

int kiln_cmd_machine_download(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    if (g.help) {
        fputs(download_help, stdout);
        return KILN_EXIT_OK;
    }
    const char *service = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--service") == 0 && i + 1 < argc) {
            service = argv[++i];
        } else {
            fprintf(stderr, "kiln machine download: unexpected argument '%s'\n", argv[i]);
            fputs(download_help, stderr);
            return KILN_EXIT_USAGE;
        }
    }
    if (!service) {
        fputs("kiln machine download: --service NAME is required\n", stderr);
        fputs(download_help, stderr);
        return KILN_EXIT_USAGE;
    }
    kiln_config_t cfg;
    if ((rc = kiln_cli_load_config(&g, &cfg)) != 0)
        return rc;
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    kiln_err_t err = {0};
    rc = kiln_download_service(&cfg, service, stdout, &cancel_requested, &err);
    if (rc != 0)
        fprintf(stderr, "kiln machine download: %s\n", err.msg);
    kiln_config_free(&cfg);
    return rc == 0 ? KILN_EXIT_OK : KILN_EXIT_FAILED;
}
