/* kiln_mg_start and kiln_mg_stop (core/mg_server.h). */
#include "core/mg_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define POKE_EVERY_NS (10 * 1000000L)

typedef struct poker {
    struct sockaddr_in addr;
    atomic_bool stopped; /* mg_stop has returned */
} poker_t;

static void *poke_main(void *arg)
{
    poker_t *p = arg;
    while (!atomic_load(&p->stopped)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            (void)connect(fd, (const struct sockaddr *)&p->addr, sizeof p->addr);
            close(fd);
        }
        struct timespec pause = {0, POKE_EVERY_NS};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

void kiln_mg_local_host(const char *listen, char *host, size_t size)
{
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    if (colon && colon > listen)
        snprintf(host, size, "%.*s", (int)(colon - listen), listen);
    if (!colon || colon == listen || strcmp(host, "0.0.0.0") == 0)
        snprintf(host, size, "127.0.0.1");
}

/* The address to reach what listens on listen (kiln_mg_local_host);
 * loopback for a host that is not an IPv4 address. */
static void listen_address(const char *listen, int port, struct sockaddr_in *addr)
{
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((unsigned short)port);
    char host[64];
    kiln_mg_local_host(listen, host, sizeof host);
    if (inet_pton(AF_INET, host, &addr->sin_addr) != 1)
        addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

struct mg_context *kiln_mg_start(const struct mg_callbacks *callbacks, void *user_data,
                                 const char **options, int *port, char *why, size_t why_size)
{
    struct mg_init_data init = {
        .callbacks = callbacks, .user_data = user_data, .configuration_options = options};
    unsigned code = 0;
    why[0] = '\0';
    struct mg_error_data error = {.code = &code, .text = why, .text_buffer_size = why_size};
    struct mg_context *mg = mg_start2(&init, &error);
    if (!mg) {
        if (!why[0])
            snprintf(why, why_size, "civetweb failed to start");
        return NULL;
    }
    struct mg_server_port ports[4];
    memset(ports, 0, sizeof ports);
    *port = mg_get_server_ports(mg, 4, ports) > 0 ? ports[0].port : 0;
    return mg;
}

void kiln_mg_stop(struct mg_context *mg, const char *listen, int port)
{
    if (!mg)
        return;
    poker_t p;
    listen_address(listen, port, &p.addr);
    atomic_init(&p.stopped, false);
    pthread_t thread;
    bool poking = port > 0 && pthread_create(&thread, NULL, poke_main, &p) == 0;
    mg_stop(mg);
    atomic_store(&p.stopped, true);
    if (poking)
        pthread_join(thread, NULL);
}
