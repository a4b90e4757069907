/*
 * Service vocabulary shared by the configuration (services:), the plan and
 * the supervisor.
 */
#ifndef KILN_SERVICE_TYPES_H
#define KILN_SERVICE_TYPES_H

/* What the supervisor does when a service's process exits. */
typedef enum { KILN_RESTART_ALWAYS, KILN_RESTART_ON_FAILURE, KILN_RESTART_NEVER } kiln_restart_t;

/* How the supervisor decides a started service is ready. */
typedef enum {
    KILN_READY_NONE,    /* ready once started */
    KILN_READY_HTTP,    /* target: a URL answering 2xx/3xx */
    KILN_READY_TCP,     /* target: "host:port" accepting connections */
    KILN_READY_COMMAND, /* command: a program that exits 0 when ready */
    KILN_READY_FD,      /* the service writes a line to fd 3 (s6 notification-fd) */
    KILN_READY_EXIT     /* a one-shot step: ready when it exits 0 */
} kiln_ready_kind_t;

#endif
