/*
 * A service's captured output. Bytes arrive in arbitrary chunks from the
 * service's pipes; they are split into lines here, each line made valid
 * UTF-8 (so that the machine API can always serve it as JSON), stamped,
 * appended to <dir>/<name>.log and kept in a bounded ring. Every buffer has
 * a size fixed at open: a held partial line never grows past
 * line_max_bytes, the ring never past ring_lines entries, and the files
 * never past file_keep + 1 of about file_max_bytes each.
 *
 * The file is a convenience, not a dependency: when it cannot be written
 * (disk full, directory gone or unwritable) the failure is counted, noted
 * once in the ring and the agent's own log, and lines keep flowing to the
 * ring and to followers.
 */
#include "agent/svclog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "kiln/log.h"

#define DEFAULT_RING_LINES 1000
/* Ring entries allocated with the first line; doubled as lines come. */
#define RING_INITIAL_LINES     16
#define DEFAULT_FILE_MAX_BYTES (10u * 1024 * 1024)
#define DEFAULT_FILE_KEEP      5
#define DEFAULT_LINE_MAX_BYTES (16u * 1024)
#define NAME_MAX_CHARS         64
/* Streams with their own held partial line; stdout and stderr need two. */
#define PENDING_SLOTS 4
/* "2026-11-22T06:00:00.123Z" */
#define TIME_CHARS 24
/* TIME SP STREAM SP */
#define HEADER_MAX (TIME_CHARS + 1 + KILN_SVCLOG_STREAM_NAME_MAX + 1)
/* While the file cannot be opened, try again at most this often. */
#define REOPEN_INTERVAL_MS 5000

typedef struct pending_line {
    char stream[KILN_SVCLOG_STREAM_NAME_MAX + 1]; /* "" while the slot is free */
    char *buf;                                    /* line_max_bytes, allocated on first use */
    size_t len;
    bool cr_held;    /* a '\r' ended the last chunk: dropped if '\n' follows */
    bool discarding; /* the line was cut: drop bytes up to its newline */
} pending_line_t;

typedef struct ring_entry {
    char time[TIME_CHARS + 1];
    char stream[KILN_SVCLOG_STREAM_NAME_MAX + 1];
    char *line; /* NULL: slot unused */
    size_t len;
} ring_entry_t;

typedef struct follower {
    kiln_svclog_follow_cb cb; /* NULL: removed while a dispatch was running */
    void *ctx;
} follower_t;

struct kiln_svclog {
    char name[NAME_MAX_CHARS + 1];
    kiln_svclog_options_t opts; /* defaults applied; opts.dir is not used */
    char *dir;                  /* NULL: ring only */
    char *path;                 /* <dir>/<name>.log */
    int fd;                     /* -1 while closed or unopenable */
    size_t file_bytes;
    int64_t last_open_ms;

    size_t write_errors;
    bool failing; /* inside an episode of failures, already noted */
    /* A note about the file, made while a line is being written (which
     * holds linebuf) and emitted right after that line. */
    char deferred_note[PATH_MAX + 320];
    bool deferred_pending;
    bool deferred_to_file;

    pending_line_t pending[PENDING_SLOTS];

    /* Formatted file line: header, sanitized text (up to 3 bytes per input
     * byte), cut mark, newline. */
    char *linebuf;
    size_t linebuf_size;

    /* Grown on demand (doubling up to opts.ring_lines), so an idle
     * service's log costs a few hundred bytes, not the whole ring. */
    ring_entry_t *ring;
    size_t ring_cap;
    size_t ring_head; /* index of the oldest entry */
    size_t ring_count;

    follower_t followers[KILN_SVCLOG_FOLLOWERS_MAX];
    size_t follower_count;
    int dispatch_depth;
    bool followers_removed;
};

static void emit_line(kiln_svclog_t *log, const char *stream, const char *bytes, size_t len,
                      bool cut, bool to_file);

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool name_is_valid(const char *name)
{
    if (!name || !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
        return false;
    size_t i = 1;
    for (; name[i]; i++) {
        char c = name[i];
        if (i >= NAME_MAX_CHARS)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* A printable, bounded copy of an untrusted name for an error message. */
static void printable(char *out, size_t size, const char *text)
{
    size_t n = 0;
    for (; text && text[n] && n + 1 < size; n++)
        out[n] = (text[n] >= 0x20 && text[n] < 0x7f) ? text[n] : '?';
    out[n] = '\0';
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0. */
static size_t utf8_sequence(const unsigned char *p, size_t n)
{
    unsigned char b = p[0];
    size_t want;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (b < 0x80)
        return b ? 1 : 0; /* NUL would end the line in C and in the file */
    if (b >= 0xc2 && b <= 0xdf)
        want = 2;
    else if (b >= 0xe0 && b <= 0xef) {
        want = 3;
        if (b == 0xe0)
            lo = 0xa0; /* overlong */
        else if (b == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        want = 4;
        if (b == 0xf0)
            lo = 0x90; /* overlong */
        else if (b == 0xf4)
            hi = 0x8f; /* past U+10FFFF */
    } else
        return 0;
    if (n < want || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < want; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    }
    return want;
}

/* Copies len bytes to out as valid UTF-8, each invalid byte (and NUL)
 * replaced by U+FFFD. out must hold 3 * len bytes. Returns the length. */
static size_t sanitize(char *out, const char *in, size_t len)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence(p + i, len - i);
        if (n) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    return o;
}

/* Drops a multi-byte character that a cut at len split, so a cut line does
 * not end in a replacement character. */
static size_t cut_at_character(const char *bytes, size_t len)
{
    const unsigned char *p = (const unsigned char *)bytes;
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char b = p[len - back];
        if ((b & 0xc0) == 0x80)
            continue; /* continuation byte: keep looking for the lead */
        size_t want = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
        return want > back ? len - back : len;
    }
    return len;
}

static int make_dirs(const char *dir)
{
    char path[PATH_MAX];
    size_t len = strlen(dir);
    if (len >= sizeof path)
        return ENAMETOOLONG;
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char saved = path[i];
        path[i] = '\0';
        if (mkdir(path, 0750) < 0 && errno != EEXIST)
            return errno;
        path[i] = saved;
    }
    return 0;
}

static void emit_deferred_note(kiln_svclog_t *log)
{
    if (!log->deferred_pending)
        return;
    log->deferred_pending = false;
    /* emit_line reads the note before it could write another one. */
    emit_line(log, "agent", log->deferred_note, strlen(log->deferred_note), false,
              log->deferred_to_file);
}

/* Records a failed file operation; the first of an episode is noted in the
 * ring (not the file, which is what fails) and in the agent's log. */
static void file_failed(kiln_svclog_t *log, const char *what, int errnum)
{
    log->write_errors++;
    if (log->failing)
        return;
    log->failing = true;
    KILN_LOG_WARN_("svclog", "service %s: cannot %s %s: %s; its output is kept in memory only",
                   log->name, what, log->path, strerror(errnum));
    snprintf(log->deferred_note, sizeof log->deferred_note,
             "cannot %s %s: %s; output is kept in memory only (the last %zu lines) until it "
             "works again: check that the directory can be created and written and that its disk "
             "has space",
             what, log->path, strerror(errnum), log->opts.ring_lines);
    log->deferred_pending = true;
    log->deferred_to_file = false;
}

static void file_recovered(kiln_svclog_t *log)
{
    if (!log->failing)
        return;
    log->failing = false;
    snprintf(log->deferred_note, sizeof log->deferred_note,
             "%s is writable again; %zu file operations had failed", log->path, log->write_errors);
    log->deferred_pending = true;
    log->deferred_to_file = true;
}

static int open_file(kiln_svclog_t *log)
{
    log->last_open_ms = monotonic_ms();
    int rc = make_dirs(log->dir);
    if (rc)
        return rc;
    /* O_NOFOLLOW: a planted symlink must not redirect the agent's writes. */
    int fd = open(log->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (fd < 0)
        return errno;
    struct stat st;
    log->file_bytes = fstat(fd, &st) == 0 ? (size_t)st.st_size : 0;
    log->fd = fd;
    return 0;
}

/* Shifts name.log.(keep-1) .. .1 up by one (the oldest is replaced) and
 * name.log to .1, then opens a fresh name.log. */
static void rotate(kiln_svclog_t *log)
{
    char from[PATH_MAX], to[PATH_MAX];
    close(log->fd);
    log->fd = -1;
    int keep = log->opts.file_keep;
    snprintf(to, sizeof to, "%s.%d", log->path, keep);
    unlink(to);
    for (int i = keep - 1; i >= 1; i--) {
        snprintf(from, sizeof from, "%s.%d", log->path, i);
        snprintf(to, sizeof to, "%s.%d", log->path, i + 1);
        if (rename(from, to) < 0 && errno != ENOENT)
            file_failed(log, "rotate", errno);
    }
    snprintf(to, sizeof to, "%s.1", log->path);
    if (rename(log->path, to) < 0 && errno != ENOENT)
        file_failed(log, "rotate", errno);
    int rc = open_file(log);
    if (rc)
        file_failed(log, "open", rc);
    /* When the rename failed the old file is reopened: counting from zero
     * keeps a failing rename from being retried on every line. */
    log->file_bytes = 0;
}

static void file_append(kiln_svclog_t *log, const char *line, size_t len)
{
    if (log->fd < 0) {
        if (monotonic_ms() - log->last_open_ms < REOPEN_INTERVAL_MS) {
            log->write_errors++;
            return;
        }
        int rc = open_file(log);
        if (rc) {
            file_failed(log, "open", rc);
            return;
        }
    }
    if (log->file_bytes > 0 && log->file_bytes + len > log->opts.file_max_bytes) {
        rotate(log);
        if (log->fd < 0)
            return;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(log->fd, line + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            file_failed(log, "write", n < 0 ? errno : ENOSPC);
            log->file_bytes += done;
            return;
        }
        done += (size_t)n;
    }
    log->file_bytes += done;
    file_recovered(log);
}

static json_t *entry_json(const char *time, const char *stream, const char *line, size_t len)
{
    return json_pack("{s:s, s:s, s:s%}", "time", time, "stream", stream, "line", line, len);
}

/* Doubles the ring (up to ring_lines), keeping entries oldest first. */
static int ring_grow(kiln_svclog_t *log)
{
    size_t cap = log->ring_cap ? log->ring_cap * 2 : RING_INITIAL_LINES;
    if (cap > log->opts.ring_lines)
        cap = log->opts.ring_lines;
    ring_entry_t *grown = calloc(cap, sizeof *grown);
    if (!grown)
        return KILN_ENOMEM;
    for (size_t i = 0; i < log->ring_count; i++)
        grown[i] = log->ring[(log->ring_head + i) % log->ring_cap];
    free(log->ring);
    log->ring = grown;
    log->ring_cap = cap;
    log->ring_head = 0;
    return 0;
}

/* Entries the ring has room for now (for tests). */
size_t kiln_svclog_ring_capacity(const kiln_svclog_t *log)
{
    return log->ring_cap;
}

static void ring_push(kiln_svclog_t *log, const char *time, const char *stream, const char *line,
                      size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy)
        return; /* the line is still in the file; the ring just misses it */
    memcpy(copy, line, len);
    copy[len] = '\0';
    if (log->ring_count == log->ring_cap && log->ring_cap < log->opts.ring_lines &&
        ring_grow(log) != 0) {
        free(copy);
        return;
    }
    size_t cap = log->ring_cap;
    ring_entry_t *e;
    if (log->ring_count < cap) {
        e = &log->ring[(log->ring_head + log->ring_count) % cap];
        log->ring_count++;
    } else {
        e = &log->ring[log->ring_head];
        log->ring_head = (log->ring_head + 1) % cap;
        free(e->line);
    }
    memcpy(e->time, time, sizeof e->time);
    snprintf(e->stream, sizeof e->stream, "%s", stream);
    e->line = copy;
    e->len = len;
}

static void compact_followers(kiln_svclog_t *log)
{
    size_t kept = 0;
    for (size_t i = 0; i < log->follower_count; i++) {
        if (log->followers[i].cb)
            log->followers[kept++] = log->followers[i];
    }
    log->follower_count = kept;
    log->followers_removed = false;
}

static void dispatch(kiln_svclog_t *log, const char *time, const char *stream, const char *line,
                     size_t len)
{
    if (log->follower_count == 0)
        return;
    json_t *entry = entry_json(time, stream, line, len);
    if (!entry)
        return;
    /* Followers added by a callback start with the next line. */
    size_t count = log->follower_count;
    log->dispatch_depth++;
    for (size_t i = 0; i < count; i++) {
        follower_t f = log->followers[i];
        if (f.cb)
            f.cb(f.ctx, entry);
    }
    log->dispatch_depth--;
    if (log->dispatch_depth == 0 && log->followers_removed)
        compact_followers(log);
    json_decref(entry);
}

/* The one way a line enters the log: bytes (any content, at most
 * line_max_bytes) become a valid UTF-8 line with the cut mark if cut. */
static void emit_line(kiln_svclog_t *log, const char *stream, const char *bytes, size_t len,
                      bool cut, bool to_file)
{
    char time[TIME_CHARS + 1];
    char stream_name[KILN_SVCLOG_STREAM_NAME_MAX + 1];
    kiln_log_format_time(time, sizeof time);
    snprintf(stream_name, sizeof stream_name, "%s", stream);
    if (len > log->opts.line_max_bytes) {
        len = log->opts.line_max_bytes;
        cut = true;
    }
    if (cut)
        len = cut_at_character(bytes, len);

    /* linebuf is free again once the file write is done: the ring and the
     * followers get copies, so a callback may append a line of its own. */
    if (!log->linebuf && !(log->linebuf = malloc(log->linebuf_size)))
        return; /* out of memory: the line is lost, the service goes on */
    char *buf = log->linebuf;
    int header = snprintf(buf, HEADER_MAX + 1, "%s %s ", time, stream_name);
    char *text = buf + header;
    size_t text_len = sanitize(text, bytes, len);
    if (cut) {
        memcpy(text + text_len, KILN_SVCLOG_CUT_MARK, sizeof KILN_SVCLOG_CUT_MARK - 1);
        text_len += sizeof KILN_SVCLOG_CUT_MARK - 1;
    }
    text[text_len] = '\n';

    if (to_file && log->dir)
        file_append(log, buf, (size_t)header + text_len + 1);
    text[text_len] = '\0';
    ring_push(log, time, stream_name, text, text_len);
    dispatch(log, time, stream_name, text, text_len);
    emit_deferred_note(log);
}

static pending_line_t *pending_for(kiln_svclog_t *log, const char *stream)
{
    pending_line_t *free_slot = NULL;
    for (size_t i = 0; i < PENDING_SLOTS; i++) {
        pending_line_t *p = &log->pending[i];
        if (p->stream[0] == '\0') {
            if (!free_slot)
                free_slot = p;
        } else if (strncmp(p->stream, stream, KILN_SVCLOG_STREAM_NAME_MAX) == 0) {
            return p;
        }
    }
    if (!free_slot) {
        /* More streams than slots: the last slot's held line ends early. */
        free_slot = &log->pending[PENDING_SLOTS - 1];
        if (free_slot->len > 0 && !free_slot->discarding)
            emit_line(log, free_slot->stream, free_slot->buf, free_slot->len, false, true);
        free_slot->len = 0;
        free_slot->cr_held = false;
        free_slot->discarding = false;
    }
    snprintf(free_slot->stream, sizeof free_slot->stream, "%s", stream);
    return free_slot;
}

static void pending_append(kiln_svclog_t *log, pending_line_t *p, const char *bytes, size_t n)
{
    if (p->discarding || n == 0)
        return;
    if (!p->buf) {
        p->buf = malloc(log->opts.line_max_bytes);
        if (!p->buf)
            return;
    }
    size_t room = log->opts.line_max_bytes - p->len;
    if (n <= room) {
        memcpy(p->buf + p->len, bytes, n);
        p->len += n;
        return;
    }
    /* Emitted now rather than at its newline: a line that never ends (a
     * progress bar redrawn with '\r') still shows up, and memory stays
     * bounded. */
    memcpy(p->buf + p->len, bytes, room);
    emit_line(log, p->stream, p->buf, log->opts.line_max_bytes, true, true);
    p->len = 0;
    p->discarding = true;
}

/* Adds bytes with no '\n' among them to the held line. */
static void pending_segment(kiln_svclog_t *log, pending_line_t *p, const char *bytes, size_t n)
{
    if (n == 0)
        return;
    if (p->cr_held) {
        p->cr_held = false;
        pending_append(log, p, "\r", 1);
    }
    if (bytes[n - 1] == '\r') {
        p->cr_held = true;
        n--;
    }
    pending_append(log, p, bytes, n);
}

static void pending_end_line(kiln_svclog_t *log, pending_line_t *p)
{
    p->cr_held = false;
    if (p->discarding)
        p->discarding = false; /* its cut head was emitted already */
    else
        emit_line(log, p->stream, p->buf ? p->buf : "", p->len, false, true);
    p->len = 0;
}

static int check_options(const char *name, kiln_svclog_options_t *o, kiln_err_t *err)
{
    if (o->ring_lines == 0)
        o->ring_lines = DEFAULT_RING_LINES;
    if (o->file_max_bytes == 0)
        o->file_max_bytes = DEFAULT_FILE_MAX_BYTES;
    if (o->file_keep == 0)
        o->file_keep = DEFAULT_FILE_KEEP;
    if (o->line_max_bytes == 0)
        o->line_max_bytes = DEFAULT_LINE_MAX_BYTES;
    if (o->ring_lines > KILN_SVCLOG_RING_LINES_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "service %s log: ring_lines %zu is over the limit %d; lower it", name,
                            o->ring_lines, KILN_SVCLOG_RING_LINES_MAX);
    if (o->file_keep < 0 || o->file_keep > KILN_SVCLOG_FILE_KEEP_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "service %s log: file_keep %d is outside 1-%d; choose a count in "
                            "that range",
                            name, o->file_keep, KILN_SVCLOG_FILE_KEEP_MAX);
    if (o->line_max_bytes > KILN_SVCLOG_LINE_MAX_BYTES)
        return kiln_err_set(err, KILN_EINVAL,
                            "service %s log: line_max_bytes %zu is over the limit %d; lower it",
                            name, o->line_max_bytes, KILN_SVCLOG_LINE_MAX_BYTES);
    if (o->dir && (o->dir[0] == '\0' || strlen(o->dir) + NAME_MAX_CHARS + 16 >= PATH_MAX))
        return kiln_err_set(err, KILN_EINVAL,
                            "service %s log: dir \"%.64s\" is empty or too long; give a path "
                            "under %d characters",
                            name, o->dir, PATH_MAX - NAME_MAX_CHARS - 16);
    return 0;
}

int kiln_svclog_open(const char *name, const kiln_svclog_options_t *opts, kiln_svclog_t **out,
                     kiln_err_t *err)
{
    *out = NULL;
    if (!name_is_valid(name)) {
        char shown[NAME_MAX_CHARS + 2];
        printable(shown, sizeof shown, name);
        return kiln_err_set(err, KILN_EINVAL,
                            "service log name \"%s\" is not valid: use 1-%d characters a-z, 0-9, "
                            "'_' and '-', starting with a letter or digit",
                            shown, NAME_MAX_CHARS);
    }
    kiln_svclog_options_t o = opts ? *opts : (kiln_svclog_options_t){0};
    int rc = check_options(name, &o, err);
    if (rc)
        return rc;

    kiln_svclog_t *log = calloc(1, sizeof *log);
    if (!log)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory opening the log of %s", name);
    log->fd = -1;
    log->opts = o;
    log->opts.dir = NULL;
    snprintf(log->name, sizeof log->name, "%s", name);
    log->linebuf_size = HEADER_MAX + 1 + 3 * o.line_max_bytes + sizeof KILN_SVCLOG_CUT_MARK + 1;
    /* linebuf and the ring are allocated with the first line. */
    if (o.dir) {
        log->dir = strdup(o.dir);
        log->path = malloc(strlen(o.dir) + strlen(name) + 6);
        if (!log->dir || !log->path)
            goto nomem;
        snprintf(log->path, strlen(o.dir) + strlen(name) + 6, "%s/%s.log", o.dir, name);
        rc = open_file(log);
        if (rc) {
            file_failed(log, "open", rc);
            emit_deferred_note(log);
        }
    }
    *out = log;
    return 0;

nomem:
    kiln_svclog_close(log);
    return kiln_err_set(err, KILN_ENOMEM, "out of memory opening the log of %s", name);
}

void kiln_svclog_write(kiln_svclog_t *log, const char *stream, const char *data, size_t len)
{
    pending_line_t *p = pending_for(log, stream ? stream : "stdout");
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t seg = nl ? (size_t)(nl - data) : len;
        pending_segment(log, p, data, seg);
        if (!nl)
            break;
        pending_end_line(log, p);
        data += seg + 1;
        len -= seg + 1;
    }
}

void kiln_svclog_note(kiln_svclog_t *log, const char *fmt, ...)
{
    char stack[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char *text = stack;
    size_t full = (size_t)n;
    size_t len = full < sizeof stack ? full : sizeof stack - 1;
    if (full >= sizeof stack) {
        /* Bounded: a note past line_max_bytes is cut like any other line. */
        size_t size = (full < log->opts.line_max_bytes ? full : log->opts.line_max_bytes) + 1;
        char *heap = malloc(size);
        if (heap) {
            va_start(ap, fmt);
            vsnprintf(heap, size, fmt, ap);
            va_end(ap);
            text = heap;
            len = size - 1;
        }
    }
    /* One note is one line, whatever the formatted values contain. */
    for (size_t i = 0; i < len && text[i]; i++) {
        if (text[i] == '\n' || text[i] == '\r')
            text[i] = ' ';
    }
    emit_line(log, "agent", text, len, full > len, true);
    if (text != stack)
        free(text);
}

json_t *kiln_svclog_tail(kiln_svclog_t *log, size_t n)
{
    json_t *lines = json_array();
    if (!lines)
        return NULL;
    size_t count = n < log->ring_count ? n : log->ring_count;
    size_t first = log->ring_count - count;
    for (size_t i = first; i < log->ring_count; i++) {
        const ring_entry_t *e = &log->ring[(log->ring_head + i) % log->ring_cap];
        json_t *entry = entry_json(e->time, e->stream, e->line, e->len);
        if (!entry || json_array_append_new(lines, entry) < 0) {
            json_decref(lines);
            return NULL;
        }
    }
    return lines;
}

int kiln_svclog_follow(kiln_svclog_t *log, kiln_svclog_follow_cb cb, void *ctx)
{
    if (!cb)
        return KILN_EINVAL;
    for (size_t i = 0; i < log->follower_count; i++) {
        if (log->followers[i].cb == cb && log->followers[i].ctx == ctx)
            return KILN_ECONFLICT;
    }
    if (log->follower_count == KILN_SVCLOG_FOLLOWERS_MAX && log->dispatch_depth == 0)
        compact_followers(log);
    if (log->follower_count == KILN_SVCLOG_FOLLOWERS_MAX)
        return KILN_ETOOBIG;
    log->followers[log->follower_count++] = (follower_t){.cb = cb, .ctx = ctx};
    return 0;
}

void kiln_svclog_unfollow(kiln_svclog_t *log, kiln_svclog_follow_cb cb, void *ctx)
{
    for (size_t i = 0; i < log->follower_count; i++) {
        if (log->followers[i].cb == cb && log->followers[i].ctx == ctx) {
            /* A dispatch may be walking the array: mark now, compact after. */
            log->followers[i].cb = NULL;
            log->followers_removed = true;
            break;
        }
    }
    if (log->dispatch_depth == 0 && log->followers_removed)
        compact_followers(log);
}

size_t kiln_svclog_write_errors(const kiln_svclog_t *log)
{
    return log->write_errors;
}

void kiln_svclog_close(kiln_svclog_t *log)
{
    if (!log)
        return;
    for (size_t i = 0; i < PENDING_SLOTS; i++) {
        pending_line_t *p = &log->pending[i];
        if (p->stream[0] && !p->discarding && (p->len > 0 || p->cr_held))
            emit_line(log, p->stream, p->buf ? p->buf : "", p->len, false, true);
        free(p->buf);
    }
    if (log->fd >= 0)
        close(log->fd);
    if (log->ring) {
        for (size_t i = 0; i < log->ring_cap; i++)
            free(log->ring[i].line);
    }
    free(log->ring);
    free(log->linebuf);
    free(log->path);
    free(log->dir);
    free(log);
}
