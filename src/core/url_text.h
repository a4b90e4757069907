/* Internal: URL and header text helpers (no libcurl; see url_text.c). */
#ifndef KILN_CORE_URL_TEXT_H
#define KILN_CORE_URL_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Whether the header line (len bytes) is the header name ("Retry-After:"),
 * compared case-insensitively, with a value after it. */
bool kiln_http_header_is(const char *line, size_t len, const char *name);

/* Whether url is http:// or https:// (case-insensitive). */
bool kiln_url_is_http(const char *url);

/* url without its user:password@ and with any query or fragment replaced by
 * "?[redacted]", for messages and logs. */
void kiln_url_redact(const char *url, char *out, size_t size);

#endif
