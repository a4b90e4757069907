/*
 * The HTTP-style error the hub library modules (registry, routing, wake,
 * waiting, webhooks, compat) return, so the hub server can send it as is:
 *   HTTP <status>  {"error": {"code": ..., "message": ..., "field": ...}}
 */
#ifndef KILN_HUB_ERROR_H
#define KILN_HUB_ERROR_H

#include <jansson.h>

#include "kiln/err.h"

typedef struct kiln_hub_error {
    int status;      /* HTTP status: 400, 404, 409, 413, 422, 500, 502, 503 */
    char code[32];   /* "invalid_request", "not_found", "conflict", "too_large", ... */
    char field[128]; /* the request field at fault ("requirements.machine"), "" if none */
    char message[KILN_ERR_MSG_MAX];
} kiln_hub_error_t;

/* Fills e (may be NULL) and returns the KILN_E* code that matches status
 * (400/422 KILN_EINVAL, 404 KILN_ENOTFOUND, 409 KILN_ECONFLICT, 413
 * KILN_ETOOBIG, 503 KILN_EREDIS, else KILN_EIO). field may be NULL. */
int kiln_hub_error_set(kiln_hub_error_t *e, int status, const char *code, const char *field,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Fills e from a library error: KILN_EREDIS -> 503 unavailable, KILN_ENOTFOUND
 * -> 404, KILN_EINVAL -> 400, KILN_ETOOBIG -> 413, KILN_ECONFLICT -> 409,
 * others 500. Returns err->code. */
int kiln_hub_error_from(kiln_hub_error_t *e, const kiln_err_t *err, const char *field);

/* {"error": {"code", "message", "field"}} (field null when empty); caller owns. */
json_t *kiln_hub_error_json(const kiln_hub_error_t *e);

#endif
