/* Internal: parsing redis:// URLs and opening hiredis connections to them. */
#ifndef KILN_CORE_REDIS_URL_H
#define KILN_CORE_REDIS_URL_H

#include <hiredis/hiredis.h>

#include "kiln/err.h"

typedef struct kiln_redis_url {
    char host[256];
    int port;
    char password[256]; /* empty = none */
    int db;
} kiln_redis_url_t;

/* Parses redis://[[user]:password@]host[:port][/db]. KILN_EINVAL naming the
 * URL (password hidden) and the expected form when malformed. */
int kiln_redis_url_parse(const char *url, kiln_redis_url_t *out, kiln_err_t *err);

/* Runs AUTH and SELECT on a fresh connection as the URL asks. */
int kiln_redis_url_prepare(redisContext *c, const kiln_redis_url_t *url, kiln_err_t *err);

#endif
