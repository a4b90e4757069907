/*
 * Test support for the playwright connector: the page server
 * (tests/helpers/pw_pages.c) and kiln's browser-automation service
 * (services/playwright/server.mjs) with Debian's chromium, each a real
 * process on a loopback port of its own choosing.
 */
#ifndef KILN_PW_SERVICE_H
#define KILN_PW_SERVICE_H

#include <stdbool.h>
#include <sys/types.h>

#define KILN_TEST_NODE     "/usr/bin/node"
#define KILN_TEST_CHROMIUM "/usr/bin/chromium"
#define KILN_TEST_PW_DIR   KILN_SOURCE_DIR "/services/playwright"

typedef struct kiln_test_pw {
    pid_t pages_pid, service_pid;
    int pages_port, service_port;
    char pages_url[64];   /* http://127.0.0.1:PORT */
    char service_url[64]; /* http://127.0.0.1:PORT */
    char pages_log[320], service_log[320];
} kiln_test_pw_t;

/* NULL when node, chromium and playwright-core are all installed; else
 * what is missing and how to install it (`make test` does). */
const char *kiln_test_pw_missing(void);

/* Starts only the page server (logs under dir) and waits for its port;
 * fails the test when it does not start. */
void kiln_test_pw_start_pages(kiln_test_pw_t *pw, const char *dir);

/* Starts the page server and the service, logs under dir, and waits until
 * the service's GET /health answers 200 (its browser is up). Fails the
 * test, dumping the logs, when either does not start. */
void kiln_test_pw_start(kiln_test_pw_t *pw, const char *dir);

/* Stops both (SIGTERM, then SIGKILL). */
void kiln_test_pw_stop(kiln_test_pw_t *pw);

/* A number from the service's GET /health by a dotted path
 * ("pages_open", "counters.cancelled"); -1 when it cannot be read. */
long kiln_test_pw_health(const kiln_test_pw_t *pw, const char *path);

#endif
