/*
 * Test support for the supervisor's tests (test_supervisor*.c): each test
 * gets a libuv loop and a supervisor on a fresh state file and log folder
 * (svfx_setup / svfx_teardown as cmocka setup and teardown), its events
 * recorded in fx->events, and waits that run the loop until a condition
 * holds (never a fixed sleep). The loop must drain and close cleanly at
 * teardown, so a leaked handle fails the test.
 */
#ifndef KILN_SV_FIXTURE_H
#define KILN_SV_FIXTURE_H

#include <jansson.h>
#include <sys/types.h>
#include <uv.h>

#include "kiln/supervisor.h"
#include "kiln_test.h"

#define HELPER(name) KILN_TEST_HELPERS_DIR "/" name
#define WAIT_MS      15000

typedef struct svfx {
    uv_loop_t loop;
    kiln_supervisor_t *sv;
    char dir[256];
    char state_file[320];
    json_t *events; /* [{service, event, t, ...fields}] */
    bool shut_down;
} svfx_t;

/* What svfx_wait_state waits for (also for tests' own conditions). */
typedef struct svfx_svc_wait {
    svfx_t *fx;
    const char *name;
    const char *state;
} svfx_svc_wait_t;

/* cmocka setup/teardown: *state becomes the fixture. */
int svfx_setup(void **state);
int svfx_teardown(void **state);

/* Runs the loop until cond(ctx) holds or timeout_ms passes; cond's result. */
bool svfx_run_until(svfx_t *fx, bool (*cond)(void *), void *ctx, long timeout_ms);

/* A supervisor on fx's state file and folder, its events into fx->events. */
kiln_supervisor_t *svfx_new_supervisor(svfx_t *fx);

/* Shuts fx->sv down gracefully, frees it and drains the loop. */
void svfx_close_supervisor(svfx_t *fx);

/* A spec with quick test timings; argv is copied. Clear it after use. */
kiln_svc_spec_t svfx_make_spec(const char *name, const char *const *argv);

/* A NULL-terminated copy of {a, b} (b may be NULL); the spec owns it. */
char **svfx_strv(const char *a, const char *b);

/* Applies specs; fails the test (printing why) if apply refuses them. */
void svfx_apply_ok(svfx_t *fx, kiln_svc_spec_t *specs, size_t n);
void svfx_clear_specs(kiln_svc_spec_t *specs, size_t n);

/* The service's status (caller decrefs) or one integer field of it. */
json_t *svfx_status_of(svfx_t *fx, const char *name);
json_int_t svfx_status_int(svfx_t *fx, const char *name, const char *field);

/* Waits until the service is in state (fails the test, dumping events). */
void svfx_wait_state(svfx_t *fx, const char *name, const char *state);

/* True while pid is a live process (not a zombie). */
bool svfx_pid_alive(pid_t pid);
void svfx_wait_gone(svfx_t *fx, pid_t pid);

/* Pids listed in a file, one a line; how many (at most max). */
size_t svfx_read_pids(const char *path, pid_t *pids, size_t max);
/* Waits until the file lists at least `lines` pids. */
void svfx_wait_pids(svfx_t *fx, const char *path, size_t lines);

/* The events of service (and of kind `event`, and to state `to`; NULL =
 * any): fills out[0..max) and returns how many there are in all. */
size_t svfx_find_events(svfx_t *fx, const char *service, const char *event, const char *to,
                        json_t **out, size_t max);
json_int_t svfx_event_time(json_t *e);

/* A TCP port on 127.0.0.1 that nothing listens on (just now). */
int svfx_free_port(void);

/* out = fx->dir/file. */
void svfx_text_path(char *out, size_t size, const svfx_t *fx, const char *file);

#endif
