/*
 * The libcurl handles of kiln's HTTP layer, kept per thread: consecutive
 * calls from one slot thread reuse one easy handle and one multi handle,
 * and with them the multi handle's connection cache (HTTP keep-alive, TLS
 * sessions) and DNS cache, instead of a new TCP (and TLS) connection per
 * call. Each thread's handles are freed when the thread exits.
 */
#ifndef KILN_CONNECTORS_HTTP_REUSE_H
#define KILN_CONNECTORS_HTTP_REUSE_H

#include <curl/curl.h>

typedef struct kiln_http_handles {
    CURL *easy;   /* with libcurl's default options whenever it is taken */
    CURLM *multi; /* holds the connections between calls */
    int in_use;
} kiln_http_handles_t;

/* The calling thread's handles, easy with default options (its connections
 * and caches kept), marked in use until kiln_http_handles_give.
 * NULL when they are in use already (a call made from inside another one's
 * callback) or cannot be allocated: the caller then makes its own. */
kiln_http_handles_t *kiln_http_handles_take(void);

/* Gives the handles back to their thread for its next call, resetting the
 * easy handle's options (none may point into the finished call). */
void kiln_http_handles_give(kiln_http_handles_t *h);

#endif
