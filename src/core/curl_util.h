/* Internal: what kiln's libcurl users share (downloads, API connectors). */
#ifndef KILN_CORE_CURL_UTIL_H
#define KILN_CORE_CURL_UTIL_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>

/* curl_global_init, once per process (thread-safe); its result every call. */
CURLcode kiln_curl_global_init(void);

/* Whether a transfer that failed with c may succeed if tried again
 * (name resolution, connect, timeout, reset, partial or empty reply). */
bool kiln_curl_code_retryable(CURLcode c);

/* Whether the header line (len bytes) is the header name ("Retry-After:"),
 * compared case-insensitively, with a value after it. */
bool kiln_http_header_is(const char *line, size_t len, const char *name);

/* Whether url is http:// or https:// (case-insensitive). */
bool kiln_url_is_http(const char *url);

/* url without its user:password@ and with any query or fragment replaced by
 * "?[redacted]", for messages and logs. */
void kiln_url_redact(const char *url, char *out, size_t size);

#endif
