/* Internal: what kiln's libcurl users share (downloads, API connectors). */
#ifndef KILN_CORE_CURL_UTIL_H
#define KILN_CORE_CURL_UTIL_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/url_text.h"

/* curl_global_init, once per process (thread-safe); its result every call. */
CURLcode kiln_curl_global_init(void);

/* Whether a transfer that failed with c may succeed if tried again
 * (name resolution, connect, timeout, reset, partial or empty reply). */
bool kiln_curl_code_retryable(CURLcode c);

#endif
