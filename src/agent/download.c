/*
 * HTTP downloads with resume, sha256 verification and retries
 * (docs/downloads.md).
 *
 * One call owns dest + ".part" for its whole life: it opens it once, holds an
 * flock on it (a second download of the same file fails fast instead of
 * interleaving writes), and every attempt continues from the part's size with
 * a Range request. Bytes are written with pwrite at explicit offsets, so
 * restarting from zero is an ftruncate and nothing else. The sha256 is
 * computed while the bytes arrive; when resuming, the existing part is hashed
 * first, before the request, so a slow disk never stalls a transfer.
 *
 * libcurl's easy API runs one attempt; this file decides what its outcome
 * means (done, retry after a wait, or fail) from the last response's status
 * and curl's result code. URLs are shown only in redacted form: userinfo
 * dropped, the query and fragment replaced, because signed URLs carry their
 * credentials there.
 */
#include "kiln/download.h"
#include "kiln/log.h"

#include <curl/curl.h>

#include "core/curl_util.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DL_LOG           "download"
#define DL_PART_SUFFIX   ".part"
#define DL_URL_SHOWN_MAX 512           /* a redacted URL in a message */
#define DL_HASH_CHUNK    (1024 * 1024) /* read size when hashing files */
#define DL_DISCARD_MAX   (64 * 1024)   /* error-page bytes read before giving up */
#define DL_WAIT_SLICE_MS 50            /* cancel is checked this often while waiting */
#define SHA256_HEX_LEN   64

typedef struct dl_job {
    const kiln_download_options_t *opts;
    char url_shown[DL_URL_SHOWN_MAX];
    char part_path[PATH_MAX];
    char want_hex[SHA256_HEX_LEN + 1]; /* lower case; "" when not checked */
    uint64_t max_bytes;
    int64_t deadline_ms; /* monotonic; 0: none */
    int max_retries;
    int fd;            /* the part, read-write, flocked */
    bool restart_next; /* the next attempt starts from zero */
    uint32_t rng;
    bool reported;
    uint64_t last_done, last_total;
} dl_job_t;

/* One request and the response it ends with (after redirects). */
typedef struct dl_attempt {
    dl_job_t *job;
    EVP_MD_CTX *sha; /* NULL when no sha256 was given */
    uint64_t offset; /* bytes already in the part before this response's body */
    uint64_t written;
    uint64_t total; /* the whole file's size; 0 unknown */
    uint64_t discarded;
    long status;
    long retry_after_s; /* -1: none */
    bool have_length, have_range;
    bool headers_done; /* the final response's headers were acted on */
    bool accepting;    /* its body goes into the part */
    bool cancelled, verified;
    uint64_t content_length, range_start, range_total;
    int fail_code; /* set by a callback that aborted the transfer */
    bool fail_retryable;
    char fail_msg[512];
} dl_attempt_t;

/* ---- small helpers --------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hex_encode(const unsigned char *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

static bool cancel_requested(const dl_job_t *job)
{
    return job->opts->cancel && atomic_load(job->opts->cancel) != 0;
}

static void report_progress(dl_job_t *job, uint64_t done, uint64_t total)
{
    if (!job->opts->progress)
        return;
    if (job->reported && done == job->last_done && total == job->last_total)
        return;
    job->reported = true;
    job->last_done = done;
    job->last_total = total;
    job->opts->progress(job->opts->progress_ctx, done, total);
}

/* Feeds bytes [0, length) of fd into sha (fd may be NULL-length). Returns 0,
 * KILN_EIO or KILN_ECANCELLED. */
static int hash_fd(dl_job_t *job, int fd, uint64_t length, EVP_MD_CTX *sha, const char *path,
                   kiln_err_t *err)
{
    unsigned char *buf = malloc(DL_HASH_CHUNK);
    if (!buf)
        return kiln_err_set(err, KILN_ENOMEM, "download: no memory for a %d-byte hash buffer",
                            DL_HASH_CHUNK);
    int rc = 0;
    for (uint64_t pos = 0; pos < length && rc == 0;) {
        if (cancel_requested(job)) {
            rc = kiln_err_set(err, KILN_ECANCELLED, "download %s: cancelled", job->url_shown);
            break;
        }
        size_t want = length - pos < DL_HASH_CHUNK ? (size_t)(length - pos) : DL_HASH_CHUNK;
        ssize_t n = pread(fd, buf, want, (off_t)pos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = kiln_err_set(err, KILN_EIO, "download: reading %s to hash it: %s", path,
                              n < 0 ? strerror(errno) : "file shorter than expected");
        else if (EVP_DigestUpdate(sha, buf, (size_t)n) != 1)
            rc = kiln_err_set(err, KILN_EIO, "download: sha256 update failed (OpenSSL)");
        else
            pos += (uint64_t)n;
    }
    free(buf);
    return rc;
}

static int sha_final_hex(EVP_MD_CTX *sha, char out[SHA256_HEX_LEN + 1], kiln_err_t *err)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(sha, digest, &len) != 1 || len * 2 != SHA256_HEX_LEN)
        return kiln_err_set(err, KILN_EIO, "download: sha256 finalisation failed (OpenSSL)");
    hex_encode(digest, len, out);
    return 0;
}

/* True when dest exists and its sha256 is job->want_hex. */
static bool dest_already_verified(dl_job_t *job, uint64_t *size_out)
{
    int fd = open(job->opts->dest, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    bool ok = false;
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    char got[SHA256_HEX_LEN + 1];
    if (sha && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        EVP_DigestInit_ex(sha, EVP_sha256(), NULL) == 1 &&
        hash_fd(job, fd, (uint64_t)st.st_size, sha, job->opts->dest, NULL) == 0 &&
        sha_final_hex(sha, got, NULL) == 0) {
        ok = strcmp(got, job->want_hex) == 0;
        *size_out = (uint64_t)st.st_size;
    }
    EVP_MD_CTX_free(sha);
    close(fd);
    return ok;
}

/* ---- options --------------------------------------------------------------- */

static int check_options(const kiln_download_options_t *opts, dl_job_t *job, kiln_err_t *err)
{
    if (!opts || !opts->url || !opts->url[0])
        return kiln_err_set(err, KILN_EINVAL, "download: url is empty; give an http(s):// URL");
    size_t url_len = strnlen(opts->url, KILN_DOWNLOAD_URL_MAX + 1);
    if (url_len > KILN_DOWNLOAD_URL_MAX)
        return kiln_err_set(err, KILN_EINVAL, "download: url is longer than %d bytes; shorten it",
                            KILN_DOWNLOAD_URL_MAX);
    kiln_url_redact(opts->url, job->url_shown, sizeof job->url_shown);
    if (!kiln_url_is_http(opts->url))
        return kiln_err_set(err, KILN_EINVAL,
                            "download %s: only http:// and https:// URLs are allowed",
                            job->url_shown);
    if (!opts->dest || !opts->dest[0])
        return kiln_err_set(err, KILN_EINVAL, "download %s: dest is empty; give a file path",
                            job->url_shown);
    if (strlen(opts->dest) + sizeof DL_PART_SUFFIX > sizeof job->part_path)
        return kiln_err_set(err, KILN_EINVAL, "download %s: dest is longer than %d bytes",
                            job->url_shown, PATH_MAX - (int)sizeof DL_PART_SUFFIX);
    snprintf(job->part_path, sizeof job->part_path, "%s" DL_PART_SUFFIX, opts->dest);
    if (opts->sha256) {
        size_t n = strlen(opts->sha256);
        size_t hex = strspn(opts->sha256, "0123456789abcdefABCDEF");
        if (n != SHA256_HEX_LEN || hex != n)
            return kiln_err_set(err, KILN_EINVAL,
                                "download %s: sha256 must be 64 hex digits, got %zu characters%s",
                                job->url_shown, n, hex != n ? " with non-hex ones" : "");
        for (size_t i = 0; i < n; i++)
            job->want_hex[i] = (char)((opts->sha256[i] >= 'A' && opts->sha256[i] <= 'F')
                                          ? opts->sha256[i] - 'A' + 'a'
                                          : opts->sha256[i]);
        job->want_hex[n] = '\0';
    }
    if (opts->timeout_ms < 0 || opts->connect_timeout_ms < 0)
        return kiln_err_set(err, KILN_EINVAL,
                            "download %s: timeout_ms and connect_timeout_ms must be >= 0 (0: "
                            "default), got %ld and %ld",
                            job->url_shown, opts->timeout_ms, opts->connect_timeout_ms);
    if (opts->max_retries > KILN_DOWNLOAD_RETRIES_MAX)
        return kiln_err_set(err, KILN_EINVAL, "download %s: max_retries is %d; the limit is %d",
                            job->url_shown, opts->max_retries, KILN_DOWNLOAD_RETRIES_MAX);
    job->max_retries = opts->max_retries == 0  ? KILN_DOWNLOAD_RETRIES_DEFAULT
                       : opts->max_retries < 0 ? 0
                                               : opts->max_retries;
    job->max_bytes = opts->max_bytes ? opts->max_bytes : KILN_DOWNLOAD_MAX_BYTES;
    job->deadline_ms = opts->timeout_ms ? now_ms() + opts->timeout_ms : 0;
    job->rng = (uint32_t)now_ms() ^ (uint32_t)(uintptr_t)job ^ 0x9e3779b9u;
    return 0;
}

/* ---- curl callbacks -------------------------------------------------------- */

static size_t abort_with(dl_attempt_t *a, int code, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records why a callback stops the transfer; returns 0, which makes curl abort. */
static size_t abort_with(dl_attempt_t *a, int code, bool retryable, const char *fmt, ...)
{
    if (!a->fail_code) {
        a->fail_code = code;
        a->fail_retryable = retryable;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(a->fail_msg, sizeof a->fail_msg, fmt, ap);
        va_end(ap);
    }
    return 0;
}

static int restart_from_zero(dl_attempt_t *a)
{
    if (ftruncate(a->job->fd, 0) < 0)
        return -1;
    a->offset = 0;
    a->written = 0;
    if (a->sha && EVP_DigestInit_ex(a->sha, EVP_sha256(), NULL) != 1)
        return -1;
    report_progress(a->job, 0, a->total);
    return 0;
}

/* The final response's headers are all in: decide where its body goes. */
static size_t on_final_headers(dl_attempt_t *a)
{
    dl_job_t *job = a->job;
    if (a->status == 206) {
        if (!a->have_range || a->range_start != a->offset) {
            job->restart_next = true;
            return abort_with(a, KILN_EIO, true,
                              "download %s: asked for bytes from %" PRIu64
                              ", the server sent a range from %" PRIu64 "; restarting from zero",
                              job->url_shown, a->offset, a->have_range ? a->range_start : 0);
        }
        a->total = a->range_total   ? a->range_total
                   : a->have_length ? a->offset + a->content_length
                                    : 0;
    } else if (a->status == 200) {
        a->total = a->have_length ? a->content_length : 0;
        if (a->offset > 0) {
            KILN_LOG_INFO_(DL_LOG, "%s: the server ignored the range request; restarting from zero",
                           job->url_shown);
            if (restart_from_zero(a) < 0)
                return abort_with(a, KILN_EIO, false, "download: truncating %s: %s", job->part_path,
                                  strerror(errno));
        }
    } else {
        return 1; /* an error status: handled once the transfer ends */
    }
    if (a->total > job->max_bytes)
        return abort_with(a, KILN_ETOOBIG, false,
                          "download %s: the file is %" PRIu64 " bytes, over the limit of %" PRIu64
                          "; raise max_bytes if it is expected",
                          job->url_shown, a->total, job->max_bytes);
    a->accepting = true;
    return 1;
}

static uint64_t parse_u64(const char *s, const char **end)
{
    char *stop = (char *)s;
    unsigned long long v = 0;
    errno = 0;
    if (*s >= '0' && *s <= '9') /* strtoull would accept a sign */
        v = strtoull(s, &stop, 10);
    if (end)
        *end = stop;
    return (stop == s || errno) ? 0 : (uint64_t)v;
}

static size_t on_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
    dl_attempt_t *a = userdata;
    size_t len = size * nitems;
    char line[256]; /* the headers we read fit; longer ones are not ours */
    size_t keep = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, buffer, keep);
    line[keep] = '\0';

    if (kiln_http_header_is(line, keep, "HTTP/")) {
        /* A new response (a redirect hop, 100 Continue, or the final one). */
        const char *sp = strchr(line, ' ');
        a->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        a->retry_after_s = -1;
        a->have_length = a->have_range = a->headers_done = a->accepting = false;
        a->range_start = a->range_total = 0;
    } else if (kiln_http_header_is(line, keep, "Content-Length:")) {
        const char *v = line + 15 + strspn(line + 15, " \t"), *end;
        a->content_length = parse_u64(v, &end);
        a->have_length = end != v;
    } else if (kiln_http_header_is(line, keep, "Content-Range:")) {
        /* "bytes 100-199/1000", or with a 416 an asterisk for the range */
        const char *v = line + 14 + strspn(line + 14, " \t");
        if (strncasecmp(v, "bytes ", 6) == 0) {
            const char *p = v + 6, *end;
            a->range_start = parse_u64(p, &end);
            a->have_range = end != p;
            const char *slash = strchr(p, '/');
            a->range_total = slash ? parse_u64(slash + 1, NULL) : 0;
        }
    } else if (kiln_http_header_is(line, keep, "Retry-After:")) {
        const char *v = line + 12 + strspn(line + 12, " \t"), *end;
        uint64_t s = parse_u64(v, &end);
        if (end != v) /* seconds; the HTTP-date form is left to our own backoff */
            a->retry_after_s =
                s > KILN_DOWNLOAD_RETRY_AFTER_MAX_S ? KILN_DOWNLOAD_RETRY_AFTER_MAX_S : (long)s;
    } else if (strcmp(line, "\r\n") == 0 || strcmp(line, "\n") == 0) {
        /* The end of a header block; trailers after a chunked body end with
         * one too, and must not be acted on twice. */
        bool interim = a->status < 200 || (a->status >= 300 && a->status < 400);
        if (!interim && !a->headers_done) {
            a->headers_done = true;
            if (on_final_headers(a) == 0)
                return 0;
        }
    }
    return len;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    dl_attempt_t *a = userdata;
    dl_job_t *job = a->job;
    size_t len = size * nmemb;
    if (!a->accepting) {
        a->discarded += len; /* an error page: read a little so the connection ends cleanly */
        return a->discarded > DL_DISCARD_MAX ? 0 : len;
    }
    uint64_t pos = a->offset + a->written;
    if (pos + len > job->max_bytes)
        return abort_with(a, KILN_ETOOBIG, false,
                          "download %s: more than %" PRIu64
                          " bytes arrived; raise max_bytes if the file is expected to be larger",
                          job->url_shown, job->max_bytes);
    for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(job->fd, ptr + done, len - done, (off_t)(pos + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return abort_with(a, KILN_EIO, false, "download: writing %s: %s; free some space",
                              job->part_path, strerror(errno));
        done += (size_t)n;
    }
    if (a->sha && EVP_DigestUpdate(a->sha, ptr, len) != 1)
        return abort_with(a, KILN_EIO, false, "download: sha256 update failed (OpenSSL)");
    a->written += len;
    return len;
}

static int on_xferinfo(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    dl_attempt_t *a = clientp;
    if (cancel_requested(a->job)) {
        a->cancelled = true;
        return 1;
    }
    if (a->accepting) {
        uint64_t total = a->total ? a->total : dltotal > 0 ? a->offset + (uint64_t)dltotal : 0;
        report_progress(a->job, a->offset + a->written, total);
    }
    return 0;
}

/* ---- one attempt ----------------------------------------------------------- */

static int setup_easy(CURL *curl, dl_attempt_t *a, char *errbuf, kiln_err_t *err)
{
    const kiln_download_options_t *opts = a->job->opts;
    long connect_ms =
        opts->connect_timeout_ms ? opts->connect_timeout_ms : KILN_DOWNLOAD_CONNECT_TIMEOUT_MS;
    long timeout_ms = 0;
    if (a->job->deadline_ms) {
        int64_t left = a->job->deadline_ms - now_ms();
        if (left <= 0)
            return kiln_err_set(err, KILN_ETIMEOUT,
                                "download %s: not finished within timeout_ms=%ld; raise it",
                                a->job->url_shown, opts->timeout_ms);
        timeout_ms = (long)left;
    }
    char range[48];
    snprintf(range, sizeof range, "%" PRIu64 "-", a->offset);
    CURLcode c = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (c == CURLE_OK)                                                                             \
    c = curl_easy_setopt(curl, opt, val)
    SET(CURLOPT_URL, opts->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 1L);
    SET(CURLOPT_MAXREDIRS, (long)KILN_DOWNLOAD_MAX_REDIRECTS);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_USERAGENT, "kiln-agent");
    SET(CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    SET(CURLOPT_TIMEOUT_MS, timeout_ms);
    SET(CURLOPT_LOW_SPEED_LIMIT, (long)KILN_DOWNLOAD_STALL_BYTES_PER_S);
    SET(CURLOPT_LOW_SPEED_TIME, (long)KILN_DOWNLOAD_STALL_S);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, a);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, a);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, on_xferinfo);
    SET(CURLOPT_XFERINFODATA, a);
    if (a->offset > 0)
        SET(CURLOPT_RANGE, range);
#undef SET
    if (c != CURLE_OK)
        return kiln_err_set(err, KILN_EIO, "download %s: libcurl refused an option: %s",
                            a->job->url_shown, curl_easy_strerror(c));
    return 0;
}

/* Turns a failed transfer (no usable 2xx) into a code, a message and whether to retry. */
static int classify_failure(dl_attempt_t *a, CURLcode c, const char *errbuf, bool *retryable,
                            kiln_err_t *err)
{
    dl_job_t *job = a->job;
    long s = a->status;
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(c);
    *retryable = false;
    if (c == CURLE_UNSUPPORTED_PROTOCOL || c == CURLE_URL_MALFORMAT)
        return kiln_err_set(err, KILN_EINVAL,
                            "download %s: %s; only http:// and https:// URLs (and redirects "
                            "to them) are allowed",
                            job->url_shown, why);
    if (c == CURLE_TOO_MANY_REDIRECTS)
        return kiln_err_set(err, KILN_EIO,
                            "download %s: more than %d redirects; use the file's final URL",
                            job->url_shown, KILN_DOWNLOAD_MAX_REDIRECTS);
    if (s >= 300) {
        *retryable = s == 408 || s == 429 || s >= 500;
        if (s == 404 || s == 410)
            return kiln_err_set(err, KILN_ENOTFOUND,
                                "download %s: the server answered HTTP %ld; check the URL",
                                job->url_shown, s);
        return kiln_err_set(err, KILN_EIO, "download %s: the server answered HTTP %ld%s",
                            job->url_shown, s,
                            *retryable ? ""
                            : s < 400  ? " without a Location to follow"
                                       : "; check the URL and its credentials");
    }
    if (c == CURLE_OPERATION_TIMEDOUT && job->deadline_ms && now_ms() >= job->deadline_ms)
        return kiln_err_set(err, KILN_ETIMEOUT,
                            "download %s: not finished within timeout_ms=%ld; raise it",
                            job->url_shown, job->opts->timeout_ms);
    *retryable = kiln_curl_code_retryable(c);
    if (c == CURLE_OK) /* a 2xx ended without our callbacks accepting it */
        return kiln_err_set(err, KILN_EIO, "download %s: unexpected HTTP %ld", job->url_shown, s);
    return kiln_err_set(err, c == CURLE_OPERATION_TIMEDOUT ? KILN_ETIMEOUT : KILN_EIO,
                        "download %s: %s", job->url_shown, why);
}

/* The attempt ended with 416: the part already holds the whole file, or it is
 * not a prefix of it (an older version, say). Only a sha256 can tell; without
 * one, or when it does not match, start again from zero. */
static int handle_416(dl_attempt_t *a, bool *retryable, kiln_err_t *err)
{
    dl_job_t *job = a->job;
    *retryable = true;
    if (a->offset > 0 && a->sha) {
        char got[SHA256_HEX_LEN + 1];
        int rc = sha_final_hex(a->sha, got, err);
        if (rc < 0)
            return rc;
        if (strcmp(got, job->want_hex) == 0) {
            a->verified = true; /* the part is the file */
            return 0;
        }
    }
    job->restart_next = true;
    return kiln_err_set(err, KILN_EIO,
                        "download %s: the server refused the range from byte %" PRIu64
                        " (HTTP 416); restarting from zero",
                        job->url_shown, a->offset);
}

/* Runs one request. Returns 0 when the part holds the complete body. */
static int attempt_once(dl_attempt_t *a, bool *retryable, kiln_err_t *err)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    *retryable = false;
    CURL *curl = curl_easy_init();
    if (!curl)
        return kiln_err_set(err, KILN_ENOMEM, "download %s: curl_easy_init failed",
                            a->job->url_shown);
    int rc = setup_easy(curl, a, errbuf, err);
    if (rc == 0) {
        CURLcode c = curl_easy_perform(curl);
        if (a->cancelled)
            rc = kiln_err_set(err, KILN_ECANCELLED,
                              "download %s: cancelled; the .part is kept for a later resume",
                              a->job->url_shown);
        else if (a->fail_code) {
            *retryable = a->fail_retryable;
            rc = kiln_err_set(err, a->fail_code, "%s", a->fail_msg);
        } else if (a->status == 416)
            rc = handle_416(a, retryable, err);
        else if (c == CURLE_OK && a->accepting) {
            uint64_t have = a->offset + a->written;
            if (a->total && have != a->total) {
                *retryable = true;
                rc = kiln_err_set(err, KILN_EIO,
                                  "download %s: the transfer ended at byte %" PRIu64 " of %" PRIu64,
                                  a->job->url_shown, have, a->total);
            }
        } else
            rc = classify_failure(a, c, errbuf, retryable, err);
    }
    curl_easy_cleanup(curl);
    return rc;
}

/* ---- the download ---------------------------------------------------------- */

/* Sets up an attempt from the part as it is now, hashing it when resuming. */
static int begin_attempt(dl_job_t *job, dl_attempt_t *a, EVP_MD_CTX *sha, kiln_err_t *err)
{
    memset(a, 0, sizeof *a);
    a->job = job;
    a->sha = sha;
    a->retry_after_s = -1;
    if (job->restart_next && ftruncate(job->fd, 0) < 0)
        return kiln_err_set(err, KILN_EIO, "download: truncating %s: %s", job->part_path,
                            strerror(errno));
    job->restart_next = false;
    struct stat st;
    if (fstat(job->fd, &st) < 0)
        return kiln_err_set(err, KILN_EIO, "download: stat %s: %s", job->part_path,
                            strerror(errno));
    a->offset = (uint64_t)st.st_size;
    if (a->offset > job->max_bytes) {
        if (ftruncate(job->fd, 0) < 0)
            return kiln_err_set(err, KILN_EIO, "download: truncating %s: %s", job->part_path,
                                strerror(errno));
        a->offset = 0;
    }
    if (sha) {
        if (EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1)
            return kiln_err_set(err, KILN_EIO, "download: sha256 init failed (OpenSSL)");
        int rc = hash_fd(job, job->fd, a->offset, sha, job->part_path, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Checks the hash, then makes the part the dest: fsync, rename, fsync the folder. */
static int finish(dl_job_t *job, dl_attempt_t *a, kiln_err_t *err)
{
    if (a->sha && !a->verified) {
        char got[SHA256_HEX_LEN + 1];
        int rc = sha_final_hex(a->sha, got, err);
        if (rc < 0)
            return rc;
        if (strcmp(got, job->want_hex) != 0) {
            unlink(job->part_path);
            return kiln_err_set(err, KILN_EIO,
                                "download %s: sha256 mismatch: expected %s, got %s; the file was "
                                "deleted; check the checksum and the URL",
                                job->url_shown, job->want_hex, got);
        }
    }
    if (fsync(job->fd) < 0)
        return kiln_err_set(err, KILN_EIO, "download: fsync %s: %s", job->part_path,
                            strerror(errno));
    if (rename(job->part_path, job->opts->dest) < 0)
        return kiln_err_set(err, KILN_EIO, "download: rename %s to %s: %s", job->part_path,
                            job->opts->dest, strerror(errno));
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", job->opts->dest);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd); /* durability of the rename; the file itself is already safe */
        close(dfd);
    }
    uint64_t size = a->offset + a->written;
    report_progress(job, size, size);
    return 0;
}

/* Waits before the next attempt: exponential backoff with jitter, or the
 * server's Retry-After when that is longer. Returns 0, or KILN_ECANCELLED /
 * KILN_ETIMEOUT (the wait would pass the deadline). */
static int wait_before_retry(dl_job_t *job, int attempt, long retry_after_s, kiln_err_t *err)
{
    int64_t backoff = KILN_DOWNLOAD_BACKOFF_BASE_MS;
    for (int i = 0; i < attempt && backoff < KILN_DOWNLOAD_BACKOFF_MAX_MS; i++)
        backoff *= 2;
    if (backoff > KILN_DOWNLOAD_BACKOFF_MAX_MS)
        backoff = KILN_DOWNLOAD_BACKOFF_MAX_MS;
    job->rng ^= job->rng << 13;
    job->rng ^= job->rng >> 17;
    job->rng ^= job->rng << 5;
    int64_t delay = backoff / 2 + (int64_t)(job->rng % (uint32_t)(backoff / 2 + 1));
    if (retry_after_s >= 0 && retry_after_s * 1000 > delay)
        delay = retry_after_s * 1000;
    int64_t until = now_ms() + delay;
    if (job->deadline_ms && until >= job->deadline_ms)
        return kiln_err_set(err, KILN_ETIMEOUT,
                            "download %s: the next retry (in %" PRId64
                            " ms) would pass timeout_ms=%ld; raise it",
                            job->url_shown, delay, job->opts->timeout_ms);
    for (int64_t left; (left = until - now_ms()) > 0;) {
        if (cancel_requested(job))
            return kiln_err_set(err, KILN_ECANCELLED, "download %s: cancelled", job->url_shown);
        long slice = left < DL_WAIT_SLICE_MS ? (long)left : DL_WAIT_SLICE_MS;
        struct timespec ts = {0, slice * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int run_attempts(dl_job_t *job, EVP_MD_CTX *sha, kiln_err_t *err)
{
    for (int attempt = 0;; attempt++) {
        if (cancel_requested(job))
            return kiln_err_set(err, KILN_ECANCELLED,
                                "download %s: cancelled; the .part is kept for a later resume",
                                job->url_shown);
        dl_attempt_t a;
        bool retryable = false;
        int rc = begin_attempt(job, &a, sha, err);
        if (rc == 0)
            rc = attempt_once(&a, &retryable, err);
        if (rc == 0)
            return finish(job, &a, err);
        if (rc == KILN_ETOOBIG)
            unlink(job->part_path); /* never worth resuming */
        if (!retryable || attempt >= job->max_retries)
            return rc;
        KILN_LOG_WARN_(DL_LOG, "%s (attempt %d of %d); retrying", err->msg, attempt + 1,
                       job->max_retries + 1);
        rc = wait_before_retry(job, attempt, a.retry_after_s, err);
        if (rc < 0)
            return rc;
    }
}

/* ---- public API ------------------------------------------------------------ */

/* Downloads opts->url to opts->dest (contract in include/kiln/download.h):
 * 0 once dest is complete and verified, else a negative KILN_E* with err set.
 * Owns nothing of the caller's; the .part is kept on cancel and timeout. */
int kiln_download(const kiln_download_options_t *opts, kiln_err_t *err)
{
    dl_job_t job = {.opts = opts, .fd = -1};
    kiln_err_t local_err; /* run_attempts logs the message of each retried failure */
    if (!err)
        err = &local_err;
    kiln_err_clear(err);
    int rc = check_options(opts, &job, err);
    if (rc < 0)
        return rc;
    CURLcode curl_init = kiln_curl_global_init();
    if (curl_init != CURLE_OK)
        return kiln_err_set(err, KILN_EIO, "download: curl_global_init failed: %s",
                            curl_easy_strerror(curl_init));
    if (cancel_requested(&job))
        return kiln_err_set(err, KILN_ECANCELLED, "download %s: cancelled", job.url_shown);

    uint64_t size = 0;
    if (job.want_hex[0] && dest_already_verified(&job, &size)) {
        report_progress(&job, size, size);
        return 0;
    }
    job.fd = open(job.part_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (job.fd < 0)
        return kiln_err_set(err, errno == ENOENT ? KILN_ENOTFOUND : KILN_EIO,
                            "download: cannot open %s: %s; check that its folder exists and is "
                            "writable",
                            job.part_path, strerror(errno));
    if (flock(job.fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(job.fd);
        return kiln_err_set(err, e == EWOULDBLOCK ? KILN_ECONFLICT : KILN_EIO,
                            "download: %s is %s; wait for the other download of %s", job.part_path,
                            e == EWOULDBLOCK ? "locked by another download" : strerror(e),
                            opts->dest);
    }
    EVP_MD_CTX *sha = NULL;
    if (job.want_hex[0] && !(sha = EVP_MD_CTX_new()))
        rc = kiln_err_set(err, KILN_ENOMEM, "download: no memory for a sha256 context");
    else
        rc = run_attempts(&job, sha, err);
    EVP_MD_CTX_free(sha);
    close(job.fd);
    return rc;
}
