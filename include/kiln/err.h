/*
 * Errors: every fallible libkiln call returns 0 or a negative KILN_E* code and,
 * when the caller passes a kiln_err_t, a human message that names the thing
 * and the fix.
 */
#ifndef KILN_ERR_H
#define KILN_ERR_H

#include <stddef.h>

enum {
    KILN_OK = 0,
    KILN_EINVAL = -1,     /* bad input: the message names the field */
    KILN_ENOMEM = -2,     /* allocation failed */
    KILN_EIO = -3,        /* file or socket I/O failed */
    KILN_EREDIS = -4,     /* Redis unreachable or answered an error */
    KILN_ENOTFOUND = -5,  /* no such job, queue, worker, file */
    KILN_ECONFLICT = -6,  /* the object is not in a state that allows this */
    KILN_ELOST = -7,      /* the claim token no longer holds the lease */
    KILN_ETOOBIG = -8,    /* input over its configured limit */
    KILN_ETIMEOUT = -9,   /* a deadline passed */
    KILN_ECANCELLED = -10 /* the operation was cancelled */
};

#define KILN_ERR_MSG_MAX 1024

typedef struct kiln_err {
    int code;
    char msg[KILN_ERR_MSG_MAX];
} kiln_err_t;

/* Records code and a printf-style message in err (err may be NULL).
 * Returns code, so callers can write `return kiln_err_set(err, KILN_EINVAL, ...)`. */
int kiln_err_set(kiln_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err (err may be NULL). */
void kiln_err_clear(kiln_err_t *err);

/* A short constant name for a KILN_E* code ("invalid input", "redis error", ...). */
const char *kiln_strerror(int code);

#endif
