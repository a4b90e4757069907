/*
 * The HTTP layer of the API connectors (contract in http.h).
 *
 * Each call builds its own easy handle and runs it on a private multi
 * handle, so the wait for network activity can include the job's cancel_fd:
 * a cancel interrupts a stalled transfer at once instead of at curl's next
 * progress tick. The progress callback checks the cancel flag as well, for
 * callers that have only the flag.
 *
 * One attempt ends in one of: a whole 2xx response (done), a failure worth
 * retrying (408, 429, 5xx, a timeout, a refused or reset connection), or a
 * final failure. Retries wait an exponential backoff with jitter, or the
 * server's Retry-After when that is longer, in poll(2) on the cancel fd.
 *
 * The API key lives in one malloc'd header string, is never logged, and is
 * wiped when the client is freed; text that comes back from a server is
 * passed through kiln_http_redact before it reaches a message.
 */
#include "http.h"
#include "ratelimit.h"

#include "kiln/log.h"

#include <curl/curl.h>

#include "core/curl_util.h"
#include "http_internal.h"
#include "http_reuse.h"
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HTTP_LOG           "http"
#define HTTP_URL_SHOWN_MAX 512
#define HTTP_ERR_TEXT_MAX  300 /* characters of a server's error message quoted */
#define HTTP_POLL_MAX_MS   1000
#define REDACTED           "[redacted]"

struct kiln_http_client {
    char *base_url; /* without trailing '/' */
    char url_shown[HTTP_URL_SHOWN_MAX];
    char *auth_header; /* "Authorization: Bearer KEY", or NULL */
    char *api_key;     /* points into auth_header */
    char name[128];
    long connect_timeout_ms;
    long timeout_ms;
    int max_retries;
    size_t max_response_bytes;
    long backoff_base_ms;
    kiln_ratelimit_t *ratelimit;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool cancel_requested(const kiln_http_call_t *call)
{
    return call->cancel && atomic_load_explicit(call->cancel, memory_order_acquire) != 0;
}

/* ---- URLs and secrets ------------------------------------------------------ */

/* Replaces each occurrence of the client's API key in s (contract in http.h). */
void kiln_http_redact(const kiln_http_client_t *client, char *s)
{
    if (!client || !client->api_key || !s)
        return;
    size_t key_len = strlen(client->api_key);
    if (key_len == 0)
        return;
    for (char *hit; (hit = strstr(s, client->api_key));) {
        if (key_len >= sizeof REDACTED - 1) {
            memcpy(hit, REDACTED, sizeof REDACTED - 1);
            memmove(hit + sizeof REDACTED - 1, hit + key_len, strlen(hit + key_len) + 1);
        } else {
            memset(hit, '*', key_len);
        }
    }
}

/* ---- the client ------------------------------------------------------------ */

/* Builds a client (contract in http.h). */
int kiln_http_client_new(const kiln_http_client_options_t *opts, kiln_http_client_t **out,
                         kiln_err_t *err)
{
    *out = NULL;
    const char *name = opts->name ? opts->name : "http";
    const char *url = opts->base_url ? opts->base_url : "";
    size_t url_len = strlen(url);
    while (url_len > 0 && url[url_len - 1] == '/')
        url_len--;
    const char *host = strstr(url, "://");
    if (url_len == 0 || url_len > KILN_HTTP_URL_MAX || !kiln_url_is_http(url) ||
        strpbrk(url, " \t\r\n?#") || !host || (size_t)(host + 3 - url) >= url_len ||
        host[3] == '/') {
        char shown[HTTP_URL_SHOWN_MAX]; /* a password in the URL stays out of the message */
        kiln_url_redact(url, shown, sizeof shown);
        return kiln_err_set(err, KILN_EINVAL,
                            "connectors.%s.%s: expected an http:// or https:// URL without "
                            "query or spaces (at most %d characters), got \"%.80s\"",
                            name, opts->url_option ? opts->url_option : "base_url",
                            KILN_HTTP_URL_MAX, shown);
    }
    CURLcode curl_init = kiln_curl_global_init();
    if (curl_init != CURLE_OK)
        return kiln_err_set(err, KILN_EIO, "connectors.%s: curl_global_init failed: %s", name,
                            curl_easy_strerror(curl_init));

    kiln_http_client_t *c = calloc(1, sizeof *c);
    if (!c || !(c->base_url = strndup(url, url_len)))
        goto nomem;
    kiln_url_redact(c->base_url, c->url_shown, sizeof c->url_shown);
    snprintf(c->name, sizeof c->name, "%s", name);
    if (opts->api_key) {
        static const char prefix[] = "Authorization: Bearer ";
        if (asprintf(&c->auth_header, "%s%s", prefix, opts->api_key) < 0) {
            c->auth_header = NULL;
            goto nomem;
        }
        c->api_key = c->auth_header + sizeof prefix - 1;
    }
    c->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : KILN_HTTP_CONNECT_TIMEOUT_MS;
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 0;
    c->max_retries = opts->max_retries < 0                       ? 0
                     : opts->max_retries > KILN_HTTP_RETRIES_MAX ? KILN_HTTP_RETRIES_MAX
                                                                 : opts->max_retries;
    c->max_response_bytes =
        opts->max_response_bytes ? opts->max_response_bytes : KILN_HTTP_MAX_RESPONSE_DEFAULT;
    c->backoff_base_ms =
        opts->backoff_base_ms > 0 ? opts->backoff_base_ms : KILN_HTTP_BACKOFF_BASE_MS;
    c->ratelimit = opts->ratelimit;
    *out = c;
    return 0;
nomem:
    kiln_http_client_free(c);
    return kiln_err_set(err, KILN_ENOMEM, "connectors.%s: out of memory", name);
}

/* Frees the client and wipes the key (contract in http.h). */
void kiln_http_client_free(kiln_http_client_t *client)
{
    if (!client)
        return;
    kiln_http_free_secret(client->auth_header);
    free(client->base_url);
    free(client);
}

/* The base URL in a form safe to show (contract in http.h). */
const char *kiln_http_client_url_shown(const kiln_http_client_t *client)
{
    return client->url_shown;
}

/* Whether the client sends an API key (contract in http.h). */
bool kiln_http_client_has_key(const kiln_http_client_t *client)
{
    return client->api_key != NULL;
}

/* Frees what res owns (contract in http.h). */
void kiln_http_result_clear(kiln_http_result_t *res)
{
    free(res->body);
    memset(res, 0, sizeof *res);
}

/* ---- curl callbacks -------------------------------------------------------- */

/* Retry-After as seconds or an HTTP date, in ms from now (-1 when unreadable). */
static long parse_retry_after(const char *value)
{
    char *end;
    errno = 0;
    if (value[0] >= '0' && value[0] <= '9') {
        long long s = strtoll(value, &end, 10);
        if (errno || end == value)
            return -1;
        return s > KILN_HTTP_RETRY_AFTER_MAX_MS / 1000 ? KILN_HTTP_RETRY_AFTER_MAX_MS
                                                       : (long)s * 1000;
    }
    time_t when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return -1;
    time_t now = time(NULL);
    if (when <= now)
        return 0;
    long long ms = ((long long)when - (long long)now) * 1000;
    return ms > KILN_HTTP_RETRY_AFTER_MAX_MS ? KILN_HTTP_RETRY_AFTER_MAX_MS : (long)ms;
}

static size_t on_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
    kiln_http_attempt_t *a = userdata;
    size_t len = size * nitems;
    char line[256]; /* the headers read here are short; longer ones are not ours */
    size_t keep = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, buffer, keep);
    line[keep] = '\0';
    if (kiln_http_header_is(line, keep, "HTTP/")) {
        const char *sp = strchr(line, ' ');
        a->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        a->retry_after_ms = -1;
    } else if (kiln_http_header_is(line, keep, "Retry-After:")) {
        char *v = line + 12;
        v += strspn(v, " \t");
        v[strcspn(v, "\r\n")] = '\0';
        a->retry_after_ms = parse_retry_after(v);
    }
    return len;
}

/* Decides, at the first body byte, whether the body is an event stream. */
static void on_body_start(kiln_http_attempt_t *a, CURL *curl)
{
    a->body_started = true;
    char *type = NULL;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &type);
    bool ok = a->status >= 200 && a->status < 300;
    a->is_stream = ok && a->call->on_event && type &&
                   strncasecmp(type, "text/event-stream", strlen("text/event-stream")) == 0;
    a->is_lines =
        ok && !a->is_stream && a->call->on_line &&
        (a->call->lines_always ||
         (type && strncasecmp(type, "application/x-ndjson", strlen("application/x-ndjson")) == 0));
    if (a->is_lines) {
        a->is_stream = true;
        a->line.max = KILN_HTTP_NDJSON_LINE_MAX;
    }
    size_t max = ok ? a->client->max_response_bytes : KILN_HTTP_ERROR_BODY_MAX;
    kiln_http_buf_init(&a->body, max);
}

typedef struct body_ctx {
    kiln_http_attempt_t *a;
    CURL *curl;
} body_ctx_t;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    body_ctx_t *ctx = userdata;
    kiln_http_attempt_t *a = ctx->a;
    size_t len = size * nmemb;
    if (!a->body_started)
        on_body_start(a, ctx->curl);
    if (a->is_stream) {
        int rc = kiln_http_stream_feed(a, ptr, len);
        if (rc == KILN_ETOOBIG) {
            a->too_big = true;
            return 0;
        }
        if (rc != 0) {
            a->callback_rc = rc;
            return 0;
        }
        return len;
    }
    if (kiln_http_buf_append(&a->body, ptr, len) < 0) {
        bool ok = a->status >= 200 && a->status < 300;
        if (ok) {
            a->too_big = true;
            return 0;
        }
        /* An error page: keep its start, read the rest so the connection ends cleanly. */
    }
    return len;
}

static int on_xferinfo(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    kiln_http_attempt_t *a = clientp;
    if (cancel_requested(a->call)) {
        a->cancelled = true;
        return 1;
    }
    return 0;
}

/* ---- one attempt ----------------------------------------------------------- */

static int setup_easy(CURL *curl, bool primed, kiln_http_attempt_t *a, body_ctx_t *body,
                      struct curl_slist **headers, char *errbuf, const char *url, long timeout_ms)
{
    const kiln_http_client_t *c = a->client;
    struct curl_slist *h = NULL, *next;
#define ADD_HEADER(text)                                                                           \
    do {                                                                                           \
        if (!(next = curl_slist_append(h, text)))                                                  \
            goto nomem;                                                                            \
        h = next;                                                                                  \
    } while (0)
    ADD_HEADER("Accept: application/json, text/event-stream, application/x-ndjson");
    if (a->call->body_json)
        ADD_HEADER("Content-Type: application/json");
    ADD_HEADER("Expect:"); /* no 100-continue round trip for large bodies */
    if (c->auth_header)
        ADD_HEADER(c->auth_header);
    for (const char *const *extra = a->call->headers; extra && *extra; extra++)
        ADD_HEADER(*extra);
#undef ADD_HEADER
    *headers = h;

    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(curl, opt, val)
    if (!primed) { /* the same for every call: a kept handle has them already */
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_FOLLOWLOCATION, 0L); /* never forward the key to another host */
        SET(CURLOPT_NOSIGNAL, 1L);
        SET(CURLOPT_USERAGENT, "kiln");
        SET(CURLOPT_TCP_KEEPALIVE, 1L);
        SET(CURLOPT_ACCEPT_ENCODING, "");
        SET(CURLOPT_HEADERFUNCTION, on_header);
        SET(CURLOPT_WRITEFUNCTION, on_body);
        SET(CURLOPT_NOPROGRESS, 0L);
        SET(CURLOPT_XFERINFOFUNCTION, on_xferinfo);
    }
    SET(CURLOPT_URL, url);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_HTTPHEADER, h);
    SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, timeout_ms);
    SET(CURLOPT_HEADERDATA, a);
    SET(CURLOPT_WRITEDATA, body);
    SET(CURLOPT_XFERINFODATA, a);
    bool post = a->call->body_json || (a->call->method && strcmp(a->call->method, "POST") == 0);
    if (post) {
        const char *fields = a->call->body_json ? a->call->body_json : "";
        SET(CURLOPT_POSTFIELDS, fields);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(fields));
    } else {
        SET(CURLOPT_HTTPGET, 1L);
    }
#undef SET
    return rc == CURLE_OK ? 0 : KILN_EINVAL;
nomem:
    curl_slist_free_all(h);
    return KILN_ENOMEM;
}

/* Runs the transfer on the thread's multi handle, waking on the cancel fd. */
static CURLcode perform(CURL *curl, CURLM *multi, kiln_http_attempt_t *a)
{
    if (curl_multi_add_handle(multi, curl) != CURLM_OK)
        return CURLE_OUT_OF_MEMORY;
    int cancel_fd = a->call->cancel_fd;
    CURLcode result = CURLE_OK;
    for (int running = 1; running;) {
        if (curl_multi_perform(multi, &running) != CURLM_OK) {
            result = CURLE_FAILED_INIT;
            break;
        }
        if (!running)
            break;
        if (cancel_requested(a->call)) {
            a->cancelled = true;
            result = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
        struct curl_waitfd wait = {.fd = cancel_fd, .events = CURL_WAIT_POLLIN};
        if (curl_multi_poll(multi, cancel_fd >= 0 ? &wait : NULL, cancel_fd >= 0 ? 1 : 0,
                            HTTP_POLL_MAX_MS, NULL) != CURLM_OK) {
            result = CURLE_FAILED_INIT;
            break;
        }
        if (wait.revents && !cancel_requested(a->call))
            cancel_fd = -1; /* readable without a cancel: not ours to watch */
    }
    if (!a->cancelled) {
        int left;
        for (CURLMsg *msg; (msg = curl_multi_info_read(multi, &left));)
            if (msg->msg == CURLMSG_DONE)
                result = msg->data.result;
    }
    curl_multi_remove_handle(multi, curl);
    return result;
}

static bool status_retryable(long status)
{
    return status == 408 || status == 429 || status >= 500;
}

/* The server's own words from an error body: OpenAI's {"error":{"message"}},
 * {"error":"..."}, {"message":"..."} or {"detail":"..."}, else the text. */
static void server_message(const kiln_http_client_t *client, const kiln_http_buf_t *body, char *out,
                           size_t size)
{
    out[0] = '\0';
    if (!body->data || body->len == 0)
        return;
    json_t *doc = json_loadb(body->data, body->len, 0, NULL);
    const char *text = NULL;
    if (json_is_object(doc)) {
        json_t *e = json_object_get(doc, "error");
        text = json_string_value(json_is_object(e) ? json_object_get(e, "message") : e);
        if (!text)
            text = json_string_value(json_object_get(doc, "message"));
        if (!text)
            text = json_string_value(json_object_get(doc, "detail"));
    }
    snprintf(out, size, "%.*s", HTTP_ERR_TEXT_MAX, text ? text : body->data);
    json_decref(doc);
    kiln_connector_sanitize_text(out, strlen(out));
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    kiln_http_redact(client, out);
}

/* Turns the end of an attempt into the call's return code. */
static int classify(kiln_http_attempt_t *a, CURLcode cc, const char *errbuf,
                    kiln_http_result_t *res, kiln_err_t *err)
{
    const kiln_http_call_t *call = a->call;
    const char *what = call->path;
    const char *method = call->method ? call->method : "GET";
    res->retryable = false;
    if (a->cancelled)
        return kiln_err_set(err, KILN_ECANCELLED, "%s %s: cancelled", method, what);
    if (a->callback_rc)
        return a->callback_rc;
    if (a->too_big && a->line_too_long)
        return kiln_err_set(err, KILN_ETOOBIG,
                            "%s %s: a streamed line is longer than %d bytes; the server is not "
                            "sending NDJSON as expected",
                            method, what, KILN_HTTP_NDJSON_LINE_MAX);
    if (a->too_big && a->sse_too_long)
        return kiln_err_set(err, KILN_ETOOBIG,
                            "%s %s: a stream event is longer than %d bytes; the server is not "
                            "sending server-sent events as expected",
                            method, what, KILN_HTTP_SSE_LINE_MAX);
    if (a->too_big)
        return kiln_err_set(err, KILN_ETOOBIG,
                            "%s %s: the response is larger than %zu bytes (max_response_bytes); "
                            "raise it if that is expected",
                            method, what, a->client->max_response_bytes);
    if (cc == CURLE_OK && a->status >= 200 && a->status < 300)
        return 0;
    if (cc == CURLE_OK || (a->status >= 300 && cc == CURLE_WRITE_ERROR)) {
        char said[HTTP_ERR_TEXT_MAX + 8];
        server_message(a->client, &a->body, said, sizeof said);
        res->retryable = status_retryable(a->status);
        return kiln_err_set(err, KILN_EIO, "%s %s: HTTP %ld%s%s%s", method, what, a->status,
                            said[0] ? ": " : "", said,
                            a->status == 401 || a->status == 403
                                ? "; check the API key (api_key_env / api_key_file)"
                                : "");
    }
    res->retryable = kiln_curl_code_retryable(cc);
    char why[CURL_ERROR_SIZE + 1];
    snprintf(why, sizeof why, "%s", errbuf[0] ? errbuf : curl_easy_strerror(cc));
    kiln_http_redact(a->client, why);
    if (cc == CURLE_OPERATION_TIMEDOUT)
        return kiln_err_set(err, KILN_ETIMEOUT, "%s %s: timed out: %s", method, what, why);
    return kiln_err_set(err, KILN_EIO, "%s %s: %s (%s)", method, what, why, a->client->url_shown);
}

/* Runs one request into res. */
static int attempt_once(kiln_http_attempt_t *a, long timeout_ms, kiln_http_result_t *res,
                        kiln_err_t *err)
{
    const kiln_http_client_t *c = a->client;
    char url[KILN_HTTP_URL_MAX * 2];
    if ((size_t)snprintf(url, sizeof url, "%s%s", c->base_url, a->call->path) >= sizeof url)
        return kiln_err_set(err, KILN_EINVAL, "%s: the URL is too long", a->call->path);
    /* The thread's handles keep its connections open between calls; a
     * call made inside another's callback gets handles of its own. */
    kiln_http_handles_t *reused = kiln_http_handles_take();
    CURL *curl = reused ? reused->easy : curl_easy_init();
    CURLM *multi = reused ? reused->multi : curl_multi_init();
    if (!curl || !multi) {
        if (!reused && curl)
            curl_easy_cleanup(curl);
        if (!reused && multi)
            curl_multi_cleanup(multi);
        return kiln_err_set(err, KILN_ENOMEM, "%s: curl_easy_init failed", a->call->path);
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    body_ctx_t body = {.a = a, .curl = curl};
    int rc =
        setup_easy(curl, reused && reused->primed, a, &body, &headers, errbuf, url, timeout_ms);
    if (reused && rc == 0)
        reused->primed = 1;
    if (rc < 0) {
        rc = kiln_err_set(err, rc, "%s: libcurl refused an option", a->call->path);
    } else {
        CURLcode cc = perform(curl, multi, a);
        if (a->is_stream && cc == CURLE_OK && a->callback_rc == 0)
            a->callback_rc = kiln_http_stream_end(a);
        rc = classify(a, cc, errbuf, res, err);
    }
    res->status = a->status;
    res->streamed = a->is_stream;
    res->stream_done = a->stream_done;
    curl_slist_free_all(headers);
    if (reused) {
        kiln_http_handles_give(reused);
    } else {
        curl_multi_cleanup(multi);
        curl_easy_cleanup(curl);
    }
    return rc;
}

/* Waits before the next attempt in poll(2) on the cancel fd. Returns 0,
 * or KILN_ECANCELLED. */
static int wait_before_retry(const kiln_http_call_t *call, int64_t delay_ms, kiln_err_t *err)
{
    int64_t until = now_ms() + delay_ms;
    struct pollfd cancel = {.fd = call->cancel_fd, .events = POLLIN};
    for (int64_t left; (left = until - now_ms()) > 0;) {
        if (cancel_requested(call))
            return kiln_err_set(err, KILN_ECANCELLED, "%s: cancelled", call->path);
        int n = poll(&cancel, 1, left > HTTP_POLL_MAX_MS ? HTTP_POLL_MAX_MS : (int)left);
        if (n > 0 && !cancel_requested(call))
            cancel.fd = -1; /* not a cancel fd after all: rely on the flag */
    }
    return cancel_requested(call) ? kiln_err_set(err, KILN_ECANCELLED, "%s: cancelled", call->path)
                                  : 0;
}

static int64_t backoff_ms(const kiln_http_client_t *c, int retry, uint32_t *rng)
{
    int64_t backoff = c->backoff_base_ms;
    for (int i = 0; i < retry && backoff < KILN_HTTP_BACKOFF_MAX_MS; i++)
        backoff *= 2;
    if (backoff > KILN_HTTP_BACKOFF_MAX_MS)
        backoff = KILN_HTTP_BACKOFF_MAX_MS;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 17;
    *rng ^= *rng << 5;
    return backoff / 2 + (int64_t)(*rng % (uint32_t)(backoff / 2 + 1));
}

/* Makes the request with retries (contract in http.h). */
int kiln_http_call(const kiln_http_client_t *client, const kiln_http_call_t *call,
                   kiln_http_result_t *res, kiln_err_t *err)
{
    kiln_err_t local_err; /* the retry loop reads the message of each failure */
    if (!err)
        err = &local_err;
    memset(res, 0, sizeof *res);
    kiln_err_clear(err);
    uint32_t rng = (uint32_t)now_ms() ^ (uint32_t)(uintptr_t)res ^ 0x9e3779b9u;
    for (int retry = 0;; retry++) {
        if (cancel_requested(call))
            return kiln_err_set(err, KILN_ECANCELLED, "%s: cancelled", call->path);
        long timeout_ms = client->timeout_ms;
        if (call->deadline_ms) {
            int64_t left = call->deadline_ms - now_ms();
            if (left <= 0) {
                res->retryable = true;
                return kiln_err_set(err, KILN_ETIMEOUT, "%s: the job's deadline passed",
                                    call->path);
            }
            if (timeout_ms == 0 || left < timeout_ms)
                timeout_ms = (long)left;
        }
        int limit_rc = kiln_ratelimit_acquire(client->ratelimit, call->cancel, call->cancel_fd,
                                              call->deadline_ms, err);
        if (limit_rc < 0) {
            res->retryable = limit_rc != KILN_ECANCELLED;
            return limit_rc;
        }
        kiln_http_attempt_t a = {.client = client, .call = call, .retry_after_ms = -1};
        kiln_http_buf_init(&a.line, KILN_HTTP_SSE_LINE_MAX);
        kiln_http_buf_init(&a.event, KILN_HTTP_SSE_LINE_MAX);
        kiln_http_buf_init(&a.body, client->max_response_bytes);
        res->attempts++;
        int rc = attempt_once(&a, timeout_ms, res, err);
        kiln_http_buf_free(&a.line);
        kiln_http_buf_free(&a.event);
        if (rc == 0 && !a.is_stream) {
            free(res->body); /* an earlier attempt's error body */
            res->body = a.body.data ? a.body.data : strdup("");
            res->body_len = a.body.len;
            if (!res->body)
                return kiln_err_set(err, KILN_ENOMEM, "%s: out of memory", call->path);
            return 0;
        }
        if (rc < 0 && a.status >= 300 && a.body.data) {
            /* The last error body stays for callers that read a service's
             * details from it (ComfyUI's node_errors); bounded by
             * KILN_HTTP_ERROR_BODY_MAX. */
            free(res->body);
            res->body = a.body.data;
            res->body_len = a.body.len;
            a.body.data = NULL;
        }
        kiln_http_buf_free(&a.body);
        if (rc == 0) { /* a stream: no body, not even an earlier attempt's error */
            free(res->body);
            res->body = NULL;
            res->body_len = 0;
            return 0;
        }
        if (rc == KILN_ETIMEOUT)
            res->retryable = true; /* the deadline's or an attempt's: another run may be faster */
        if (!res->retryable || a.events > 0 || retry >= client->max_retries)
            return rc;
        int64_t delay = backoff_ms(client, retry, &rng);
        if (a.retry_after_ms >= 0 && a.retry_after_ms > delay)
            delay = a.retry_after_ms;
        char reason[KILN_ERR_MSG_MAX];
        snprintf(reason, sizeof reason, "%s", err->msg);
        if (call->deadline_ms && now_ms() + delay >= call->deadline_ms)
            return kiln_err_set(err, KILN_ETIMEOUT,
                                "%s; the next retry (in %" PRId64
                                " ms) would pass the job's deadline",
                                reason, delay);
        kiln_log(KILN_LOG_WARN, HTTP_LOG, call->job_id, NULL,
                 "%s (attempt %d of %d); retrying in %" PRId64 " ms", reason, retry + 1,
                 client->max_retries + 1, delay);
        int wait_rc = wait_before_retry(call, delay, err);
        if (wait_rc < 0)
            return wait_rc;
    }
}
