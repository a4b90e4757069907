/* kiln machines and kiln wake, run as a user would, against a real
 * redis-server; the wake packet is received on a loopback UDP socket. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln_test.h"

static kiln_test_redis_t redis_server;

static int setup(void **state)
{
    kiln_test_redis_start(&redis_server, false);
    return 0;
}

static int teardown(void **state)
{
    kiln_test_redis_destroy(&redis_server);
    return 0;
}

/* Writes a live worker record for machine the way workers do. */
static void worker_on(const char *machine)
{
    kiln_broker_options_t opts = {.redis_url = redis_server.url};
    kiln_broker_t *b = NULL;
    kiln_err_t err = {0};
    if (kiln_broker_connect(&opts, &b, &err) != 0)
        fail_msg("%s", err.msg);
    json_t *info = json_pack("{s:s, s:s, s:[s], s:{}, s:i, s:i}", "id", "w1", "machine_id", machine,
                             "services", "simulation", "capabilities", "concurrency", 1, "busy", 0);
    assert_int_equal(kiln_broker_register_worker(b, "w1", info, 60000, &err), 0);
    json_decref(info);
    kiln_broker_free(b);
}

static void machines_lists_the_fleet_as_a_table_and_json(void **state)
{
    worker_on("desktop");
    char out[8192];
    char *table[] = {KILN_BIN, "machines", "--redis", redis_server.url, NULL};
    assert_int_equal(kiln_test_run(table, NULL, out, sizeof out), 0);
    assert_non_null(strstr(out, "ID"));
    assert_non_null(strstr(out, "desktop  online"));
    char *as_json[] = {KILN_BIN, "machines", "--json", "--redis", redis_server.url, NULL};
    assert_int_equal(kiln_test_run(as_json, NULL, out, sizeof out), 0);
    json_t *list = json_loads(out, 0, NULL);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "state")),
                        "online");
    json_decref(list);
    char *extra[] = {KILN_BIN, "machines", "desktop", "--redis", redis_server.url, NULL};
    assert_int_equal(kiln_test_run(extra, NULL, NULL, 0), 2);
}

static void wake_stores_the_mac_and_sends_the_packet(void **state)
{
    worker_on("desktop");
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &len);
    char port[16];
    snprintf(port, sizeof port, "%d", ntohs(addr.sin_port));

    char *no_mac[] = {KILN_BIN, "wake", "desktop", "--redis", redis_server.url, NULL};
    assert_int_equal(kiln_test_run(no_mac, NULL, NULL, 0), 1);
    char *bad[] = {KILN_BIN, "wake",    "desktop",        "--mac",
                   "12:34",  "--redis", redis_server.url, NULL};
    assert_int_equal(kiln_test_run(bad, NULL, NULL, 0), 2);
    char *unknown[] = {KILN_BIN, "wake", "attic", "--redis", redis_server.url, NULL};
    assert_int_equal(kiln_test_run(unknown, NULL, NULL, 0), 1);

    char *store[] = {KILN_BIN,    "wake",   "desktop", "--mac",   "10:20:30:40:50:60", "--address",
                     "127.0.0.1", "--port", port,      "--redis", redis_server.url,    NULL};
    char out[1024];
    assert_int_equal(kiln_test_run(store, NULL, out, sizeof out), 0);
    assert_non_null(strstr(out, "sent Wake-on-LAN to desktop"));
    /* Later wakes need only the name. */
    assert_int_equal(kiln_test_run(no_mac, NULL, NULL, 0), 0);
    for (int packet = 0; packet < 2; packet++) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&pfd, 1, 5000), 1);
        unsigned char buf[200];
        assert_int_equal(recv(fd, buf, sizeof buf, 0), 102);
        for (int i = 0; i < 6; i++)
            assert_int_equal(buf[i], 0xFF);
        for (int rep = 0; rep < 16; rep++)
            for (int i = 0; i < 6; i++)
                assert_int_equal(buf[6 + rep * 6 + i], 0x10 * (i + 1));
    }
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(machines_lists_the_fleet_as_a_table_and_json),
        cmocka_unit_test(wake_stores_the_mac_and_sends_the_packet),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
