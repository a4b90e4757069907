/*
 * The HTTP layer shared by the API connectors (openai, and later replicate,
 * runpod): JSON requests to one base URL with a bounded response, connect
 * and total timeouts, retries with exponential backoff and jitter that honour
 * Retry-After, cancellation during transfers and waits, server-sent events
 * delivered line by line, and an API key that is read once and never shown.
 *
 * A client is built once per connector instance and is read-only afterwards,
 * so kiln_http_call may run on one client from several threads at once; each
 * thread's calls use that thread's libcurl handles (http_reuse.h), so its
 * connections stay open from one call to the next.
 */
#ifndef KILN_CONNECTORS_HTTP_H
#define KILN_CONNECTORS_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln/connector.h"
#include "kiln/err.h"

#define KILN_HTTP_MAX_RESPONSE_DEFAULT (16u * 1024 * 1024) /* bytes of one response body */
#define KILN_HTTP_MAX_RESPONSE_LIMIT   (1024u * 1024 * 1024)
#define KILN_HTTP_ERROR_BODY_MAX       (64 * 1024) /* bytes of an error body kept */
#define KILN_HTTP_SSE_LINE_MAX         (1024 * 1024)
#define KILN_HTTP_NDJSON_LINE_MAX      (1024 * 1024) /* bytes of one NDJSON line */
#define KILN_HTTP_CONNECT_TIMEOUT_MS   10000
#define KILN_HTTP_RETRIES_MAX          20
#define KILN_HTTP_BACKOFF_BASE_MS      250 /* first retry waits 125-250 ms, then doubles */
#define KILN_HTTP_BACKOFF_MAX_MS       30000
#define KILN_HTTP_RETRY_AFTER_MAX_MS   120000 /* a longer Retry-After is cut to this */
#define KILN_HTTP_API_KEY_MAX          4096
#define KILN_HTTP_URL_MAX              2048

typedef struct kiln_http_client kiln_http_client_t;
struct kiln_ratelimit;

typedef struct kiln_http_client_options {
    const char *base_url;      /* http:// or https://; trailing slashes are dropped */
    const char *api_key;       /* copied; sent as "Authorization: Bearer"; NULL: none */
    const char *name;          /* for messages: "connectors.<name>" */
    long connect_timeout_ms;   /* 0: KILN_HTTP_CONNECT_TIMEOUT_MS */
    long timeout_ms;           /* one attempt, whole transfer; 0: none */
    int max_retries;           /* 0..KILN_HTTP_RETRIES_MAX */
    size_t max_response_bytes; /* 0: KILN_HTTP_MAX_RESPONSE_DEFAULT */
    long backoff_base_ms;      /* 0: KILN_HTTP_BACKOFF_BASE_MS */
    const char *url_option;    /* the option named in a base_url error; NULL: "base_url" */
    /* Borrowed (outlives the client); NULL: none. Each request, retries and
     * polls included, first takes a slot of this fleet-wide budget. */
    struct kiln_ratelimit *ratelimit;
} kiln_http_client_options_t;

/* Called for each server-sent event of a streamed response with the event's
 * data (its "data:" lines joined by '\n', NUL-terminated; "[DONE]" is not
 * passed on). Returns 0 to go on, or a negative KILN_E* code to stop the
 * transfer; kiln_http_call then returns that code with err set by the
 * callback (through its ctx) left untouched. */
typedef int (*kiln_http_sse_cb)(void *ctx, const char *data, size_t len);

/* Called for each line of a streamed NDJSON response (one JSON document a
 * line, as Ollama streams): the line without its ending, NUL-terminated;
 * blank lines are skipped. Returns 0 to go on, or a negative KILN_E* code
 * to stop the transfer, as kiln_http_sse_cb. */
typedef int (*kiln_http_line_cb)(void *ctx, const char *line, size_t len);

typedef struct kiln_http_call {
    const char *method;        /* "GET" or "POST" */
    const char *path;          /* appended to the base URL, e.g. "/chat/completions" */
    const char *body_json;     /* the POST body (serialized JSON); NULL: GET, or an empty POST */
    const char *job_id;        /* for log records; may be NULL */
    const atomic_int *cancel;  /* non-zero: stop at once; may be NULL */
    int cancel_fd;             /* readable once cancelled; -1: none */
    int64_t deadline_ms;       /* CLOCK_MONOTONIC ms covering every attempt and wait; 0: none */
    kiln_http_sse_cb on_event; /* set: a text/event-stream response goes here */
    void *event_ctx;
    /* Set: a 2xx application/x-ndjson response (any 2xx one with
     * lines_always) goes here line by line, each at most
     * KILN_HTTP_NDJSON_LINE_MAX bytes. */
    kiln_http_line_cb on_line;
    void *line_ctx;
    bool lines_always;
    /* Extra request header lines ("Prefer: wait=5"), NULL-terminated; may be NULL. */
    const char *const *headers;
} kiln_http_call_t;

typedef struct kiln_http_result {
    long status; /* the last response's HTTP status; 0 when none came */
    char *body;  /* owned, NUL-terminated; the body of a non-streamed response */
    size_t body_len;
    bool streamed;    /* the response was an event stream or NDJSON, delivered to its callback */
    bool stream_done; /* the stream ended with "data: [DONE]" */
    int attempts;     /* requests made */
    bool retryable;   /* on failure: whether another try may succeed */
} kiln_http_result_t;

/* Builds a client from opts (copied; opts may be freed afterwards). Returns 0,
 * or KILN_EINVAL (the message names connectors.<name>.base_url and the fix)
 * or KILN_ENOMEM. *out is owned by the caller: kiln_http_client_free. */
int kiln_http_client_new(const kiln_http_client_options_t *opts, kiln_http_client_t **out,
                         kiln_err_t *err);

/* Frees the client and wipes its copy of the API key. NULL is a no-op. */
void kiln_http_client_free(kiln_http_client_t *client);

/* The base URL without userinfo, query or fragment: safe to show. */
const char *kiln_http_client_url_shown(const kiln_http_client_t *client);

/* Makes the request, retrying on 408, 429, 5xx, timeouts and connection
 * failures (until max_retries or the deadline), and fills res (owned by the
 * caller: kiln_http_result_clear; it must hold nothing on entry). Blocking;
 * returns early on cancellation. Returns 0 when a 2xx response arrived
 * whole; otherwise a negative code with a message in err and res->retryable
 * set: KILN_ECANCELLED, KILN_ETIMEOUT (the deadline or a per-attempt
 * timeout), KILN_ETOOBIG (a body over max_response_bytes; not retryable),
 * KILN_EIO (an HTTP error status, with the server's own message, or a
 * network failure), the code of the client's rate limit (KILN_EREDIS, or
 * KILN_ETIMEOUT when no slot frees before the deadline), or the code an
 * on_event callback returned. After an HTTP error status res->body holds
 * that response's body (its first KILN_HTTP_ERROR_BODY_MAX bytes), NULL
 * when it had none. A streamed
 * response is never retried once an event was delivered. Messages never
 * hold the API key. */
int kiln_http_call(const kiln_http_client_t *client, const kiln_http_call_t *call,
                   kiln_http_result_t *res, kiln_err_t *err);

/* Frees what res owns and zeroes it. */
void kiln_http_result_clear(kiln_http_result_t *res);

/* Replaces each occurrence of the client's API key in s (NUL-terminated,
 * edited in place) by "[redacted]" when it fits, else by '*'s. For text a
 * server sent back that goes into a message or a result. */
void kiln_http_redact(const kiln_http_client_t *client, char *s);

/* Reads an API key for an API connector from cfg's options, once, at init:
 * options.api_key_file (a file whose first line is the key) or
 * options.api_key_env (the name of an environment variable; default
 * default_env). Giving both is refused. With neither option given and
 * default_env unset, *key is NULL and 0 is returned when required is false;
 * otherwise the error names the option and the fix, never the key. A key
 * with characters outside printable ASCII is refused. *key is malloc'd;
 * free it with kiln_http_free_secret. */
int kiln_http_read_api_key(const kiln_connector_config_t *cfg, const char *default_env,
                           bool required, char **key, kiln_err_t *err);

/* A connector's defaults for the transfer options (kiln_http_option_transfer). */
typedef struct kiln_http_option_defaults {
    int64_t timeout_ms;         /* timeout_ms when not given */
    int64_t timeout_max_ms;     /* the most timeout_ms and connect_timeout_ms take */
    int64_t max_retries;        /* max_retries when not given */
    int64_t max_response_bytes; /* max_response_bytes when not given */
} kiln_http_option_defaults_t;

/* Reads the transfer options every HTTP connector takes into opts:
 * timeout_ms and connect_timeout_ms (1-d->timeout_max_ms; the latter
 * defaults to KILN_HTTP_CONNECT_TIMEOUT_MS), max_retries
 * (0-KILN_HTTP_RETRIES_MAX) and max_response_bytes
 * (1024-KILN_HTTP_MAX_RESPONSE_LIMIT). Returns 0 or KILN_EINVAL with a
 * message naming the option and the range. */
int kiln_http_option_transfer(const kiln_connector_config_t *cfg,
                              const kiln_http_option_defaults_t *d,
                              kiln_http_client_options_t *opts, kiln_err_t *err);

/* Reads the server's URL of a local-service connector into opts: option
 * base_url (what KILN_CONNECTOR_URLS sets, so it wins), else url, else
 * default_url; opts->url_option names the option used, for messages. The
 * string is borrowed from cfg. Returns 0 or KILN_EINVAL (not a string). */
int kiln_http_option_base_url(const kiln_connector_config_t *cfg, const char *default_url,
                              kiln_http_client_options_t *opts, kiln_err_t *err);

/* Builds an API connector's client from cfg once opts holds the base URL,
 * the name and the transfer options: reads the API key
 * (kiln_http_read_api_key with default_env and key_required) and the
 * fleet-wide rate limit (kiln_ratelimit_from_config) and makes the client
 * with both. Returns 0 with *out set (owned: kiln_http_client_free), or the
 * first failing step's code and message. *ratelimit is owned by the caller
 * (kiln_ratelimit_free; NULL when none), also after a failure. The key is
 * wiped before returning; opts->api_key is left NULL. */
int kiln_http_client_from_config(const kiln_connector_config_t *cfg,
                                 kiln_http_client_options_t *opts, const char *default_env,
                                 bool key_required, struct kiln_ratelimit **ratelimit,
                                 kiln_http_client_t **out, kiln_err_t *err);

/* Whether the client sends an API key. */
bool kiln_http_client_has_key(const kiln_http_client_t *client);

/* A growable buffer with a maximum size fixed at init. */
typedef struct kiln_http_buf {
    char *data;
    size_t len, cap, max;
} kiln_http_buf_t;

/* Empties b and sets its maximum size (bytes, not counting the NUL kept after them). */
void kiln_http_buf_init(kiln_http_buf_t *b, size_t max);

/* Appends len bytes, keeping a NUL after them. Returns 0, KILN_ETOOBIG
 * (past max; b unchanged) or KILN_ENOMEM. */
int kiln_http_buf_append(kiln_http_buf_t *b, const char *data, size_t len);

/* Empties b, keeping its memory. */
void kiln_http_buf_reset(kiln_http_buf_t *b);

/* Frees b's memory and empties it. */
void kiln_http_buf_free(kiln_http_buf_t *b);

/* Wipes and frees a secret (NULL is a no-op). */
void kiln_http_free_secret(char *secret);

#endif
