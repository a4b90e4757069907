/* The port manager: a small booking table, checked on every booking. */
#include "agent/ports.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kiln_ports_init(kiln_ports_t *ports)
{
    memset(ports, 0, sizeof *ports);
}

const char *kiln_ports_owner(const kiln_ports_t *ports, int port)
{
    for (size_t i = 0; i < ports->count; i++) {
        if (ports->bookings[i].port == port)
            return ports->bookings[i].owner;
    }
    return NULL;
}

int kiln_ports_book(kiln_ports_t *ports, int port, const char *owner, kiln_err_t *err)
{
    if (port < KILN_PORT_MIN || port > KILN_PORT_MAX)
        return kiln_err_set(err, KILN_EINVAL,
                            "%s: port %d is outside %d-%d; choose a port in that range", owner,
                            port, KILN_PORT_MIN, KILN_PORT_MAX);
    const char *taken = kiln_ports_owner(ports, port);
    if (taken)
        return kiln_err_set(err, KILN_EINVAL,
                            "port %d is wanted by both %s and %s; give one of them another port",
                            port, taken, owner);
    if (ports->count == KILN_PORTS_MAX)
        return kiln_err_set(err, KILN_ETOOBIG, "%s: more than %d ports booked", owner,
                            KILN_PORTS_MAX);
    if (ports->count == ports->cap) {
        size_t cap = ports->cap ? ports->cap * 2 : 16;
        kiln_port_booking_t *grown = realloc(ports->bookings, cap * sizeof *grown);
        if (!grown)
            return kiln_err_set(err, KILN_ENOMEM, "out of memory booking port %d", port);
        ports->bookings = grown;
        ports->cap = cap;
    }
    kiln_port_booking_t *b = &ports->bookings[ports->count++];
    b->port = port;
    snprintf(b->owner, sizeof b->owner, "%s", owner);
    return 0;
}

int kiln_ports_book_offset(kiln_ports_t *ports, int base, size_t index, const char *base_field,
                           const char *owner, int *out, kiln_err_t *err)
{
    if (base < KILN_PORT_MIN || base > KILN_PORT_MAX || index > (size_t)(KILN_PORT_MAX - base))
        return kiln_err_set(err, KILN_EINVAL,
                            "%s: port %s %d + instance %zu is outside %d-%d; lower %s or "
                            "machine.instances_per_gpu",
                            owner, base_field, base, index, KILN_PORT_MIN, KILN_PORT_MAX,
                            base_field);
    *out = base + (int)index;
    return kiln_ports_book(ports, *out, owner, err);
}

void kiln_ports_free(kiln_ports_t *ports)
{
    free(ports->bookings);
    memset(ports, 0, sizeof *ports);
}
