/*
 * svc_slow_http: a tiny HTTP server on 127.0.0.1:PORT that answers every
 * request with 503 until DELAY_MS milliseconds have passed since it
 * started, then with 200. Plain sockets, one connection at a time.
 *
 *   svc_slow_http PORT DELAY_MS
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void answer(int conn, long started, long delay_ms)
{
    char req[2048];
    ssize_t got = 0, r;
    /* Read until the end of the request head (or the client gives up). */
    while (got < (ssize_t)sizeof req - 1 && (r = read(conn, req + got, sizeof req - 1 - got)) > 0) {
        got += r;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    int ready = now_ms() - started >= delay_ms;
    const char *body = ready ? "ok\n" : "starting\n";
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     ready ? "200 OK" : "503 Service Unavailable", strlen(body), body);
    if (write(conn, resp, (size_t)n) != n)
        perror("svc_slow_http: write");
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: svc_slow_http PORT DELAY_MS\n");
        return 64;
    }
    long started = now_ms(), delay_ms = atol(argv[2]);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 16) != 0) {
        perror("svc_slow_http: bind/listen");
        return 2;
    }
    printf("svc_slow_http: listening on %s\n", argv[1]);
    fflush(stdout);
    for (;;) {
        int conn = accept(fd, NULL, NULL);
        if (conn < 0)
            continue;
        answer(conn, started, delay_ms);
        close(conn);
    }
}
