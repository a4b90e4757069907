/* Webhook signatures, URLs and delivery state (kiln/hub_webhook.h). */
#include "kiln/hub_webhook.h"

#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker_internal.h"
#include "core/url_text.h"
#include "hub/registry_internal.h"

void kiln_webhook_sign(const char *secret, long long t, const char *body, size_t len,
                       char out[KILN_WEBHOOK_SIGNATURE_MAX])
{
    char stamp[32];
    int stamp_len = snprintf(stamp, sizeof stamp, "%lld.", t);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    /* One pass over "t." then the body, without copying the body. */
    EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *mctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    size_t got = 0;
    if (mctx && EVP_MAC_init(mctx, (const unsigned char *)secret, strlen(secret), params) &&
        EVP_MAC_update(mctx, (const unsigned char *)stamp, (size_t)stamp_len) &&
        EVP_MAC_update(mctx, (const unsigned char *)body, len) &&
        EVP_MAC_final(mctx, mac, &got, sizeof mac))
        mac_len = (unsigned int)got;
    EVP_MAC_CTX_free(mctx);
    EVP_MAC_free(hmac);
    int used = snprintf(out, KILN_WEBHOOK_SIGNATURE_MAX, "t=%lld,v1=", t);
    for (unsigned int i = 0; i < mac_len && used + 2 < KILN_WEBHOOK_SIGNATURE_MAX; i++)
        used += snprintf(out + used, KILN_WEBHOOK_SIGNATURE_MAX - (size_t)used, "%02x", mac[i]);
}

int kiln_webhook_take_from_job(json_t *job, char **url, kiln_hub_error_t *e)
{
    *url = NULL;
    json_t *v = json_object_get(job, "webhook");
    if (!v || json_is_null(v)) {
        json_object_del(job, "webhook");
        return 0;
    }
    const char *s = json_string_value(v);
    if (!s || strlen(s) > KILN_WEBHOOK_URL_MAX || !kiln_url_is_http(s) || strpbrk(s, " \r\n\t"))
        return kiln_hub_error_set(e, 400, "invalid_request", "webhook",
                                  "webhook: expected an http:// or https:// URL of at most %d "
                                  "bytes without spaces",
                                  KILN_WEBHOOK_URL_MAX);
    *url = strdup(s);
    json_object_del(job, "webhook");
    return *url ? 0 : kiln_hub_error_set(e, 500, "internal", NULL, "out of memory");
}

int kiln_webhook_key(const char *job_id, char *key, size_t size, kiln_hub_error_t *e)
{
    const char *dot = job_id ? strrchr(job_id, '.') : NULL;
    if (!dot || dot == job_id || strlen(job_id) >= KILN_JOB_ID_MAX)
        return kiln_hub_error_set(e, 404, "not_found", "job", "job '%.100s' is unknown",
                                  job_id ? job_id : "");
    snprintf(key, size, "kiln:{%.*s}:webhook:%s", (int)(dot - job_id), job_id, job_id);
    return 0;
}

int kiln_webhook_job_url(kiln_broker_t *b, const char *job_id, char **url, kiln_hub_error_t *e)
{
    kiln_err_t err = {0};
    int rc = kiln_broker_job_field(b, job_id, "webhook_url", url, &err);
    if (rc == KILN_EINVAL)
        return kiln_hub_error_set(e, 404, "not_found", "job", "job '%.100s' is unknown", job_id);
    if (rc)
        kiln_hub_error_from(e, &err, NULL);
    return rc;
}

int kiln_webhook_state(kiln_broker_t *b, const char *job_id, json_t **out, kiln_hub_error_t *e)
{
    *out = NULL;
    char key[256];
    int rc = kiln_webhook_key(job_id, key, sizeof key, e);
    if (rc)
        return rc;
    redisReply *r = kiln_hub_command(b, e, "HGETALL %s", key);
    if (!r)
        return KILN_EREDIS;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 0) {
        /* Nothing tried yet: pending, if the job was submitted with one. */
        freeReplyObject(r);
        char *url;
        if ((rc = kiln_webhook_job_url(b, job_id, &url, e)) != 0)
            return rc;
        char shown[KILN_WEBHOOK_URL_MAX + 32];
        if (url)
            kiln_url_redact(url, shown, sizeof shown);
        *out = url ? json_pack("{s:s, s:s, s:i}", "url", shown, "state", "pending", "attempts", 0)
                   : json_null();
        free(url);
        return 0;
    }
    json_t *state = json_object();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const char *field = r->element[i]->str, *value = r->element[i + 1]->str;
        if (!strcmp(field, "url")) {
            char shown[KILN_WEBHOOK_URL_MAX + 32];
            kiln_url_redact(value, shown, sizeof shown);
            json_object_set_new(state, field, json_string(shown));
        } else if (!strcmp(field, "attempts") || !strcmp(field, "last_status") ||
                   !strcmp(field, "updated_at")) {
            json_object_set_new(state, field, json_integer(strtoll(value, NULL, 10)));
        } else {
            json_object_set_new(state, field, json_string(value));
        }
    }
    freeReplyObject(r);
    *out = state;
    return 0;
}
