/*
 * The HTTP layer's buffers and streaming parsers (contract in
 * http_internal.h): server-sent events (OpenAI-style "data:" lines ending
 * in "[DONE]") and NDJSON (one JSON value a line, as Ollama streams), each
 * bounded per line and per event.
 */
#include <string.h>
#include <stdlib.h>

#include "http_internal.h"
#include "kiln/err.h"

/* ---- buffers --------------------------------------------------------------- */

void kiln_http_buf_init(kiln_http_buf_t *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

/* Appends len bytes (contract in http.h). */
int kiln_http_buf_append(kiln_http_buf_t *b, const char *data, size_t len)
{
    if (len > b->max - b->len)
        return KILN_ETOOBIG;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + len + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return KILN_ENOMEM;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

void kiln_http_buf_reset(kiln_http_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void kiln_http_buf_free(kiln_http_buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- server-sent events ---------------------------------------------------- */

/* Delivers the event gathered so far, if any. */
static int sse_dispatch(kiln_http_attempt_t *a)
{
    if (a->event.len == 0)
        return 0; /* no data line since the last event */
    /* Each data line was stored with a '\n' after it; the last one goes. */
    a->event.data[--a->event.len] = '\0';
    int rc = 0;
    if (strcmp(a->event.data, "[DONE]") == 0) {
        a->stream_done = true;
    } else if (a->event.len > 0) {
        a->events++;
        rc = a->call->on_event(a->call->event_ctx, a->event.data, a->event.len);
    }
    kiln_http_buf_reset(&a->event);
    return rc;
}

/* Handles one line of the stream (without its line ending). */
static int sse_line(kiln_http_attempt_t *a, char *line, size_t len)
{
    if (len == 0)
        return sse_dispatch(a);
    if (line[0] == ':')
        return 0; /* a comment, used as a keep-alive */
    if (len < 5 || strncmp(line, "data:", 5) != 0)
        return 0; /* event:, id:, retry: and unknown fields carry nothing we use */
    const char *value = line + 5;
    size_t value_len = len - 5;
    if (value_len > 0 && value[0] == ' ')
        value++, value_len--;
    if (kiln_http_buf_append(&a->event, value, value_len) < 0 ||
        kiln_http_buf_append(&a->event, "\n", 1) < 0) {
        a->sse_too_long = true;
        return KILN_ETOOBIG;
    }
    /* Some servers end "[DONE]" without a blank line before closing. */
    if (strcmp(a->event.data, "[DONE]\n") == 0)
        return sse_dispatch(a);
    return 0;
}

static int sse_feed(kiln_http_attempt_t *a, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char ch = data[i];
        if (ch == '\n') {
            size_t n = a->line.len;
            if (n > 0 && a->line.data[n - 1] == '\r')
                n--;
            int rc = sse_line(a, a->line.data ? a->line.data : (char *)"", n);
            kiln_http_buf_reset(&a->line);
            if (rc != 0)
                return rc;
        } else if (kiln_http_buf_append(&a->line, &ch, 1) < 0) {
            a->sse_too_long = true;
            return KILN_ETOOBIG;
        }
    }
    return 0;
}

/* ---- NDJSON ---------------------------------------------------------------- */

/* Delivers the line gathered in a->line, unless it is blank. */
static int ndjson_dispatch(kiln_http_attempt_t *a)
{
    size_t n = a->line.len;
    if (n > 0 && a->line.data[n - 1] == '\r')
        a->line.data[--n] = '\0';
    int rc = 0;
    if (n > 0 && a->line.data[strspn(a->line.data, " \t")] != '\0') {
        a->events++;
        rc = a->call->on_line(a->call->line_ctx, a->line.data, n);
    }
    kiln_http_buf_reset(&a->line);
    return rc;
}

static int ndjson_feed(kiln_http_attempt_t *a, const char *data, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (kiln_http_buf_append(&a->line, data, take) < 0) {
            a->line_too_long = true;
            return KILN_ETOOBIG;
        }
        if (!nl)
            break;
        int rc = ndjson_dispatch(a);
        if (rc != 0)
            return rc;
        data += take + 1;
        len -= take + 1;
    }
    return 0;
}

int kiln_http_stream_feed(kiln_http_attempt_t *a, const char *data, size_t len)
{
    return a->is_lines ? ndjson_feed(a, data, len) : sse_feed(a, data, len);
}

int kiln_http_stream_end(kiln_http_attempt_t *a)
{
    if (a->is_lines)
        return ndjson_dispatch(a); /* a last line without its newline still counts */
    /* A last event without its blank line still counts. */
    int rc = a->line.len > 0 ? sse_line(a, a->line.data, a->line.len) : 0;
    if (rc == 0)
        rc = sse_dispatch(a);
    if (rc == KILN_ETOOBIG) {
        a->too_big = true;
        rc = 0;
    }
    return rc;
}
