#include "kiln/err.h"

#include <stdarg.h>
#include <stdio.h>

int kiln_err_set(kiln_err_t *err, int code, const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void kiln_err_clear(kiln_err_t *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *kiln_strerror(int code)
{
    switch (code) {
    case KILN_OK:
        return "ok";
    case KILN_EINVAL:
        return "invalid input";
    case KILN_ENOMEM:
        return "out of memory";
    case KILN_EIO:
        return "i/o error";
    case KILN_EREDIS:
        return "redis error";
    case KILN_ENOTFOUND:
        return "not found";
    case KILN_ECONFLICT:
        return "conflict";
    case KILN_ELOST:
        return "lease lost";
    case KILN_ETOOBIG:
        return "too big";
    case KILN_ETIMEOUT:
        return "timed out";
    case KILN_ECANCELLED:
        return "cancelled";
    default:
        return "unknown error";
    }
}
