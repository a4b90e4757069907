/*
 * Test support: a private redis-server on a free loopback port, child
 * processes with captured logs, and waiting for conditions (never sleeps of
 * a fixed length standing in for a condition).
 */
#ifndef KILN_TEST_H
#define KILN_TEST_H

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/types.h>
#include <cmocka.h>

#include "kiln/broker.h"

typedef struct kiln_test_redis {
    int port;
    pid_t pid;
    bool aof;
    char dir[256];
    char url[64];
    char log_path[320];
} kiln_test_redis_t;

/* Starts redis-server on a free 127.0.0.1 port with its data in a fresh
 * temporary folder (AOF with appendfsync always when aof is true) and waits
 * until it answers PING. Fails the test (dumping the log) when it does not. */
void kiln_test_redis_start(kiln_test_redis_t *r, bool aof);

/* Stops it with SIGTERM (a clean shutdown that flushes the AOF) and waits. */
void kiln_test_redis_stop(kiln_test_redis_t *r);

/* Starts it again on the same port and folder (data reloaded). */
void kiln_test_redis_restart(kiln_test_redis_t *r);

/* Stops it and removes its folder. */
void kiln_test_redis_destroy(kiln_test_redis_t *r);

/* Empties every database of r (FLUSHALL), for a clean slate between tests. */
void kiln_test_redis_flush(const kiln_test_redis_t *r);

/* A broker connection to r with the tests' usual small limits (1 MiB
 * payloads, 3 attempts, 50-200 ms backoff) and lease_ms leases; the test
 * fails when it cannot connect. Free with kiln_broker_free. */
kiln_broker_t *kiln_test_broker_connect(const kiln_test_redis_t *r, int64_t lease_ms);

/* A new synchronous connection to r (the test fails on error). */
redisContext *kiln_test_redis_connect(const kiln_test_redis_t *r);

/* Spawns argv[0] (a path) with the current environment plus env_extra
 * ("NAME=value" strings, NULL-terminated, may be NULL), stdout and stderr
 * appended to log_path (NULL: inherited). Returns the pid. */
pid_t kiln_test_spawn(char *const argv[], char *const env_extra[], const char *log_path);

/* Waits for pid to exit within timeout_ms; returns its wait status, or -1 on
 * timeout (the process is left running). */
int kiln_test_wait_exit(pid_t pid, long timeout_ms);

/* Sends sig to pid and waits for it to exit (SIGKILL after timeout_ms). */
void kiln_test_kill(pid_t pid, int sig, long timeout_ms);

/* Calls cond(ctx) until it returns true or timeout_ms passes, waiting a few
 * milliseconds between calls. Returns the last result. */
bool kiln_test_wait_until(bool (*cond)(void *ctx), void *ctx, long timeout_ms);

/* Prints the file to stderr with a header (for failure diagnostics). */
void kiln_test_dump_file(const char *title, const char *path);

/* A fresh temporary folder (mkdtemp) whose path is written into out. */
void kiln_test_tmpdir(char *out, size_t size);

/* Runs a command (argv, no shell) to completion, capturing up to out_size-1
 * bytes of stdout into out (NUL-terminated; may be NULL) and returning its
 * exit status (or -1). stdin_text (may be NULL) is written to its stdin. */
int kiln_test_run(char *const argv[], const char *stdin_text, char *out, size_t out_size);

/* Milliseconds on a monotonic clock. */
int64_t kiln_test_now_ms(void);

#endif
