/*
 * The port manager: every port the plan hands out goes through it, so that
 * two services never share a port and no service takes a privileged or
 * impossible one. It only books ports; it does not check whether another
 * program on the machine already listens there (the supervisor's readiness
 * check finds that out).
 */
#ifndef KILN_AGENT_PORTS_H
#define KILN_AGENT_PORTS_H

#include <stddef.h>

#include "kiln/err.h"

#define KILN_PORT_MIN       1024
#define KILN_PORT_MAX       65535
#define KILN_PORT_OWNER_MAX 96
#define KILN_PORTS_MAX      8192

typedef struct kiln_port_booking {
    int port;
    char owner[KILN_PORT_OWNER_MAX]; /* "comfyui-gpu0", "machine.health_port" */
} kiln_port_booking_t;

typedef struct kiln_ports {
    kiln_port_booking_t *bookings; /* owned */
    size_t count, cap;
} kiln_ports_t;

/* Prepares an empty booking table. Never fails. */
void kiln_ports_init(kiln_ports_t *ports);

/* Books port for owner. Returns 0; KILN_EINVAL when port is outside
 * 1024-65535 or already booked (the message names both owners and the
 * fix); KILN_ETOOBIG past KILN_PORTS_MAX bookings; KILN_ENOMEM. */
int kiln_ports_book(kiln_ports_t *ports, int port, const char *owner, kiln_err_t *err);

/* Books base + index for owner (an instance of a per-GPU template whose
 * base is named by base_field, e.g. "templates.comfyui.base_port"), with
 * the range checked before the addition can overflow. Stores the port in
 * *out. Errors as kiln_ports_book. */
int kiln_ports_book_offset(kiln_ports_t *ports, int base, size_t index, const char *base_field,
                           const char *owner, int *out, kiln_err_t *err);

/* The owner of port, or NULL when it is free. */
const char *kiln_ports_owner(const kiln_ports_t *ports, int port);

/* Releases the table (not ports itself). */
void kiln_ports_free(kiln_ports_t *ports);

#endif
