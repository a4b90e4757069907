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
    CURL *easy;   /* the options every call sets alike stay set between calls */
    CURLM *multi; /* holds the connections between calls */
    int in_use;
    int primed; /* the HTTP layer set easy's constant options (http.c) */
} kiln_http_handles_t;

/* The calling thread's handles (its connections and caches kept), marked
 * in use until kiln_http_handles_give.
 * NULL when they are in use already (a call made from inside another one's
 * callback) or cannot be allocated: the caller then makes its own. */
kiln_http_handles_t *kiln_http_handles_take(void);

/* Gives the handles back to their thread for its next call, clearing the
 * easy handle's options that point into the finished call (its error
 * buffer, header list, body, callback data); the constant ones stay. */
void kiln_http_handles_give(kiln_http_handles_t *h);

#endif
