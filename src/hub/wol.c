/* Wake-on-LAN magic packets (kiln/hub_wol.h). */
#include "kiln/hub_wol.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int kiln_wol_parse_mac(const char *text, const char *field, uint8_t mac[6], kiln_hub_error_t *e)
{
    size_t len = text ? strlen(text) : 0;
    char sep = len == 17 ? text[2] : '\0';
    bool ok = (len == 12 || (len == 17 && (sep == ':' || sep == '-')));
    for (int i = 0; ok && i < 6; i++) {
        const char *p = text + (len == 12 ? i * 2 : i * 3);
        int hi = hex_value(p[0]), lo = hex_value(p[1]);
        ok = hi >= 0 && lo >= 0 && (len == 12 || i == 5 || p[2] == sep);
        if (ok)
            mac[i] = (uint8_t)(hi << 4 | lo);
    }
    if (ok)
        return 0;
    return kiln_hub_error_set(e, 400, "invalid_request", field,
                              "%s: expected a MAC address like aa:bb:cc:dd:ee:ff, got \"%.40s\"",
                              field, text ? text : "");
}

void kiln_wol_packet(const uint8_t mac[6], uint8_t out[KILN_WOL_PACKET_SIZE])
{
    memset(out, 0xFF, 6);
    for (int i = 0; i < 16; i++)
        memcpy(out + 6 + i * 6, mac, 6);
}

int kiln_wol_send(const char *mac_text, const char *address, int port, kiln_hub_error_t *e)
{
    uint8_t mac[6], packet[KILN_WOL_PACKET_SIZE];
    int rc = kiln_wol_parse_mac(mac_text, "wake.mac", mac, e);
    if (rc)
        return rc;
    struct sockaddr_in to = {.sin_family = AF_INET};
    if (!address || !*address)
        address = KILN_WOL_DEFAULT_ADDRESS;
    if (inet_pton(AF_INET, address, &to.sin_addr) != 1)
        return kiln_hub_error_set(e, 400, "invalid_request", "wake.address",
                                  "wake.address: expected an IPv4 address such as "
                                  "192.168.1.255, got \"%.60s\"",
                                  address);
    if (port == 0)
        port = KILN_WOL_DEFAULT_PORT;
    if (port < 1 || port > 65535)
        return kiln_hub_error_set(e, 400, "invalid_request", "wake.port",
                                  "wake.port: expected 1-65535, got %d", port);
    to.sin_port = htons((uint16_t)port);
    kiln_wol_packet(mac, packet);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, sizeof on) != 0 ||
        sendto(fd, packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to) !=
            (ssize_t)sizeof packet) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        return kiln_hub_error_set(e, 502, "wake_failed", NULL,
                                  "sending the Wake-on-LAN packet to %s:%d failed: %s", address,
                                  port, strerror(saved));
    }
    close(fd);
    return 0;
}
