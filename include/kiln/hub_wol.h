/*
 * Wake-on-LAN: the magic packet (6 x 0xFF, then the MAC 16 times) sent as
 * one UDP datagram, by default to the broadcast address 255.255.255.255
 * port 9.
 */
#ifndef KILN_HUB_WOL_H
#define KILN_HUB_WOL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln/hub_error.h"

#define KILN_WOL_PACKET_SIZE     102
#define KILN_WOL_DEFAULT_ADDRESS "255.255.255.255"
#define KILN_WOL_DEFAULT_PORT    9

/* Parses "aa:bb:cc:dd:ee:ff", "aa-bb-cc-dd-ee-ff" or "aabbccddeeff" into mac.
 * field names the setting in the message ("wake.mac"). Returns 0 or
 * KILN_EINVAL with e (400, field) saying the form expected. */
int kiln_wol_parse_mac(const char *text, const char *field, uint8_t mac[6], kiln_hub_error_t *e);

/* Writes the magic packet for mac into out. */
void kiln_wol_packet(const uint8_t mac[6], uint8_t out[KILN_WOL_PACKET_SIZE]);

/* Sends the magic packet for mac (text, parsed as above) to address (an
 * IPv4 address; NULL = 255.255.255.255) and port (0 = 9), with
 * SO_BROADCAST set. Returns 0, KILN_EINVAL (bad MAC, address or port; e
 * names the field) or KILN_EIO (502 send failed). */
int kiln_wol_send(const char *mac, const char *address, int port, kiln_hub_error_t *e);

#endif
