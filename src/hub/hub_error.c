/* HTTP-style errors of the hub library modules (kiln/hub_error.h). */
#include "kiln/hub_error.h"

#include <stdarg.h>
#include <stdio.h>

static int code_for_status(int status)
{
    switch (status) {
    case 400:
    case 422:
        return KILN_EINVAL;
    case 404:
        return KILN_ENOTFOUND;
    case 409:
        return KILN_ECONFLICT;
    case 413:
        return KILN_ETOOBIG;
    case 503:
        return KILN_EREDIS;
    default:
        return KILN_EIO;
    }
}

int kiln_hub_error_set(kiln_hub_error_t *e, int status, const char *code, const char *field,
                       const char *fmt, ...)
{
    if (e) {
        e->status = status;
        snprintf(e->code, sizeof e->code, "%s", code);
        snprintf(e->field, sizeof e->field, "%s", field ? field : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof e->message, fmt, ap);
        va_end(ap);
    }
    return code_for_status(status);
}

int kiln_hub_error_from(kiln_hub_error_t *e, const kiln_err_t *err, const char *field)
{
    static const struct {
        int code, status;
        const char *name;
    } map[] = {{KILN_EREDIS, 503, "unavailable"},
               {KILN_ENOTFOUND, 404, "not_found"},
               {KILN_EINVAL, 400, "invalid_request"},
               {KILN_ETOOBIG, 413, "too_large"},
               {KILN_ECONFLICT, 409, "conflict"}};
    int status = 500;
    const char *name = "internal";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (map[i].code == err->code) {
            status = map[i].status;
            name = map[i].name;
        }
    kiln_hub_error_set(e, status, name, field, "%s", err->msg);
    return err->code ? err->code : KILN_EIO;
}

json_t *kiln_hub_error_json(const kiln_hub_error_t *e)
{
    return json_pack("{s:{s:s, s:s, s:o}}", "error", "code", e->code, "message", e->message,
                     "field", e->field[0] ? json_string(e->field) : json_null());
}
