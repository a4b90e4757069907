/* Wake-on-LAN (kiln/hub_wol.h): the packet is received on a loopback UDP
 * socket and checked byte by byte. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kiln/hub_wol.h"
#include "kiln_test.h"

/* A UDP socket on 127.0.0.1 and a free port (returned in *port). */
static int udp_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    *port = ntohs(addr.sin_port);
    return fd;
}

static void magic_packet_arrives_byte_for_byte(void **state)
{
    int port;
    int fd = udp_listener(&port);
    kiln_hub_error_t e = {0};
    if (kiln_wol_send("01:23:45:67:89:AB", "127.0.0.1", port, &e) != 0)
        fail_msg("%s", e.message);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 5000), 1);
    unsigned char buf[512];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    assert_int_equal(n, 102);
    for (int i = 0; i < 6; i++)
        assert_int_equal(buf[i], 0xFF);
    const unsigned char mac[6] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xAB};
    for (int rep = 0; rep < 16; rep++)
        for (int i = 0; i < 6; i++)
            assert_int_equal(buf[6 + rep * 6 + i], mac[i]);
    close(fd);
}

static void mac_forms_with_dashes_or_bare_hex_parse_alike(void **state)
{
    uint8_t a[6], b[6], c[6];
    assert_int_equal(kiln_wol_parse_mac("aa:bb:cc:dd:ee:0f", "m", a, NULL), 0);
    assert_int_equal(kiln_wol_parse_mac("AA-BB-CC-DD-EE-0F", "m", b, NULL), 0);
    assert_int_equal(kiln_wol_parse_mac("aabbccddee0f", "m", c, NULL), 0);
    assert_memory_equal(a, b, 6);
    assert_memory_equal(a, c, 6);
    assert_int_equal(a[5], 0x0f);
}

static void bad_mac_address_or_port_is_refused_naming_the_field(void **state)
{
    const char *bad[] = {"",
                         "aa:bb:cc:dd:ee",
                         "aa:bb:cc:dd:ee:gg",
                         "aa:bb-cc:dd:ee:ff",
                         "aabbccddeeff00",
                         "aa:bb:cc:dd:ee:ff\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_hub_error_t e = {0};
        assert_int_equal(kiln_wol_send(bad[i], "127.0.0.1", 9, &e), KILN_EINVAL);
        assert_int_equal(e.status, 400);
        assert_string_equal(e.field, "wake.mac");
        assert_non_null(strstr(e.message, "wake.mac: expected a MAC address like"));
    }
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_wol_send("aa:bb:cc:dd:ee:ff", "256.1.1.1", 9, &e), KILN_EINVAL);
    assert_string_equal(e.field, "wake.address");
    assert_int_equal(kiln_wol_send("aa:bb:cc:dd:ee:ff", "127.0.0.1", 70000, &e), KILN_EINVAL);
    assert_string_equal(e.field, "wake.port");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(magic_packet_arrives_byte_for_byte),
        cmocka_unit_test(mac_forms_with_dashes_or_bare_hex_parse_alike),
        cmocka_unit_test(bad_mac_address_or_port_is_refused_naming_the_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
