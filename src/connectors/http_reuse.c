/*
 * Per-thread libcurl handles for the HTTP layer (http_reuse.h).
 */
#include "http_reuse.h"

#include <pthread.h>
#include <stdlib.h>

static pthread_key_t handles_key;
static pthread_once_t handles_once = PTHREAD_ONCE_INIT;
static int key_rc = -1;

static void handles_free(void *p)
{
    kiln_http_handles_t *h = p;
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->easy)
        curl_easy_cleanup(h->easy);
    free(h);
}

static void key_create(void)
{
    key_rc = pthread_key_create(&handles_key, handles_free);
}

static kiln_http_handles_t *handles_new(void)
{
    kiln_http_handles_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->easy = curl_easy_init();
    h->multi = curl_multi_init();
    if (!h->easy || !h->multi || pthread_setspecific(handles_key, h) != 0) {
        handles_free(h);
        return NULL;
    }
    return h;
}

kiln_http_handles_t *kiln_http_handles_take(void)
{
    pthread_once(&handles_once, key_create);
    if (key_rc != 0)
        return NULL;
    kiln_http_handles_t *h = pthread_getspecific(handles_key);
    if (!h && !(h = handles_new()))
        return NULL;
    if (h->in_use)
        return NULL;
    h->in_use = 1;
    return h;
}

void kiln_http_handles_give(kiln_http_handles_t *h)
{
    if (!h)
        return;
    /* Now, not at the next take: these point into the finished call's
     * memory. The options every call sets alike stay (h->primed): a reset
     * and setting them again cost each call more CPU than the rest of the
     * setup. */
    curl_easy_setopt(h->easy, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h->easy, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(h->easy, CURLOPT_HEADERDATA, NULL);
    curl_easy_setopt(h->easy, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(h->easy, CURLOPT_XFERINFODATA, NULL);
    h->in_use = 0;
}
