/* Internal to the HTTP layer: the growable buffers and the attempt (one
 * request and its response) that http.c drives and http_stream.c feeds. */
#ifndef KILN_HTTP_INTERNAL_H
#define KILN_HTTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"

/* One request and its response. */
typedef struct kiln_http_attempt {
    const kiln_http_client_t *client;
    const kiln_http_call_t *call;
    long status;
    long retry_after_ms; /* -1: none */
    bool cancelled;
    bool is_stream; /* decided at the first body byte */
    bool body_started;
    bool too_big;
    bool sse_too_long;  /* an event or line over KILN_HTTP_SSE_LINE_MAX */
    bool is_lines;      /* NDJSON, delivered to on_line (is_stream is set too) */
    bool line_too_long; /* an NDJSON line over KILN_HTTP_NDJSON_LINE_MAX */
    int events;         /* delivered to on_event */
    int callback_rc;    /* non-zero: on_event stopped the transfer */
    bool stream_done;
    kiln_http_buf_t body;
    kiln_http_buf_t line;  /* SSE: the line being read */
    kiln_http_buf_t event; /* SSE: the event's data so far */
} kiln_http_attempt_t;

/* Feeds len body bytes of a streamed response (a->is_lines: NDJSON lines to
 * call->on_line; else server-sent events to call->on_event). 0, or
 * KILN_ETOOBIG for a line or event over its bound (a->sse_too_long or
 * a->line_too_long set), or what a callback returned to stop the transfer. */
int kiln_http_stream_feed(kiln_http_attempt_t *a, const char *data, size_t len);

/* Delivers what a stream that ended well left unterminated (a last line
 * without its newline, a last event without its blank line). 0, or what a
 * callback returned; an SSE event over its bound sets a->too_big. */
int kiln_http_stream_end(kiln_http_attempt_t *a);

#endif
