/*
 * Internal: a service's captured output: size-rotated files (bounded count)
 * and an in-memory ring of recent lines for the machine API. Loop thread
 * only.
 */
#ifndef KILN_AGENT_SVCLOG_H
#define KILN_AGENT_SVCLOG_H

#include <jansson.h>
#include <stddef.h>

#include "kiln/err.h"

typedef struct kiln_svclog kiln_svclog_t;

/* Limits on the options (0 in an option means its default). */
#define KILN_SVCLOG_RING_LINES_MAX  100000
#define KILN_SVCLOG_FILE_KEEP_MAX   100
#define KILN_SVCLOG_LINE_MAX_BYTES  (1024 * 1024)
#define KILN_SVCLOG_FOLLOWERS_MAX   64
#define KILN_SVCLOG_STREAM_NAME_MAX 15
/* Appended to a line cut at line_max_bytes (the rest of it is dropped). */
#define KILN_SVCLOG_CUT_MARK "\xe2\x80\xa6 [cut]"

typedef struct kiln_svclog_options {
    const char *dir;       /* NULL: no files, ring only */
    size_t ring_lines;     /* default 1000 */
    size_t file_max_bytes; /* rotate past this; default 10 MiB */
    int file_keep;         /* <name>.log.1 .. .N kept; default 5 */
    size_t line_max_bytes; /* longer lines are cut and marked; default 16 KiB */
} kiln_svclog_options_t;

/* Opens the log of service name (a validated service name: it becomes a
 * file name). opts may be NULL (all defaults). Returns 0 with *out set (the
 * caller closes it), KILN_EINVAL for a name that is not
 * [a-z0-9][a-z0-9_-]{0,63} or an option past its limit, or KILN_ENOMEM.
 * A directory that cannot be created or a file that cannot be opened is not
 * an error here: it is noted in the ring and the agent's log, counted (see
 * kiln_svclog_write_errors), and opening is retried every few seconds. */
int kiln_svclog_open(const char *name, const kiln_svclog_options_t *opts, kiln_svclog_t **out,
                     kiln_err_t *err);

/* Appends output bytes of stream ("stdout" or "stderr"): split into lines
 * (a partial last line is held until its newline or close), each stamped
 * with the time, written to the file (rotating as needed) and the ring.
 * "\r\n" ends a line like "\n"; bytes that are not valid UTF-8 (and NUL)
 * become U+FFFD; a line past line_max_bytes is emitted at once, cut and
 * marked with KILN_SVCLOG_CUT_MARK, and its rest is dropped. */
void kiln_svclog_write(kiln_svclog_t *log, const char *stream, const char *data, size_t len);

/* Appends a line written by the agent itself (stream "agent"), e.g.
 * "exited with code 3; restarting in 400 ms". */
void kiln_svclog_note(kiln_svclog_t *log, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The last lines (at most n) as [{"time","stream","line"}]; caller owns. */
json_t *kiln_svclog_tail(kiln_svclog_t *log, size_t n);

/* Calls cb(ctx, entry) for every line appended from now on, until
 * kiln_svclog_unfollow with the same cb and ctx. entry is borrowed.
 * follow returns 0, KILN_ECONFLICT when cb and ctx already follow, or
 * KILN_ETOOBIG past KILN_SVCLOG_FOLLOWERS_MAX. A callback may unfollow
 * itself or another follower (which then misses the current line); it must
 * not close the log. Unfollowing an unknown pair does nothing. */
typedef void (*kiln_svclog_follow_cb)(void *ctx, json_t *entry);
int kiln_svclog_follow(kiln_svclog_t *log, kiln_svclog_follow_cb cb, void *ctx);
void kiln_svclog_unfollow(kiln_svclog_t *log, kiln_svclog_follow_cb cb, void *ctx);

/* How many file operations (open, write, rotate) have failed since open.
 * Lines are still kept in the ring while the file cannot be written. */
size_t kiln_svclog_write_errors(const kiln_svclog_t *log);

/* How many lines the ring has room for now: 0 before the first line, then
 * doubling as lines come, never past ring_lines (for tests). */
size_t kiln_svclog_ring_capacity(const kiln_svclog_t *log);

/* Flushes a held partial line and closes the file. */
void kiln_svclog_close(kiln_svclog_t *log);

#endif
