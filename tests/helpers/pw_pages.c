/*
 * pw_pages: the web pages the playwright connector's tests point the real
 * browser at, served by civetweb on loopback.
 *
 *   GET /form.html    a form: input#name and button#go; clicking the button
 *                     writes "Hello, <name>!" into #greeting
 *   GET /missing      404 with a small HTML page
 *   GET /broken       500 with a small HTML page
 *   anything else     404
 *
 *   pw_pages PORT     (PORT 0: pick one)
 *
 * Prints "pw_pages: listening on 127.0.0.1:PORT" on stdout once ready and
 * runs until SIGTERM or SIGINT.
 */
#include <civetweb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char form_page[] =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>kiln form</title>"
    "<style>body{font:24px sans-serif;background:#f3efe6}#greeting{color:#a33}</style></head>"
    "<body><h1 id=\"greeting\">Who are you?</h1>"
    "<label>Name <input id=\"name\" type=\"text\"></label>"
    "<button id=\"go\" type=\"button\">Greet</button>"
    "<script>document.getElementById('go').addEventListener('click', function () {"
    "var name = document.getElementById('name').value;"
    "var h = document.getElementById('greeting');"
    "h.textContent = 'Hello, ' + name + '!'; h.className = 'greeted';});</script>"
    "</body></html>";

static void send_page(struct mg_connection *conn, int status, const char *reason, const char *html)
{
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\n"
              "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
              status, reason, strlen(html), html);
}

static int on_request(struct mg_connection *conn, void *cbdata)
{
    (void)cbdata;
    const char *uri = mg_get_request_info(conn)->local_uri;
    if (strcmp(uri, "/form.html") == 0)
        send_page(conn, 200, "OK", form_page);
    else if (strcmp(uri, "/broken") == 0)
        send_page(conn, 500, "Internal Server Error", "<h1>broken</h1>");
    else
        send_page(conn, 404, "Not Found", "<h1>not found</h1>");
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: pw_pages PORT\n");
        return 64;
    }
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* civetweb's threads inherit it */
    signal(SIGPIPE, SIG_IGN);

    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%s", argv[1]);
    const char *options[] = {"listening_ports", listen, "num_threads", "8", NULL};
    mg_init_library(0);
    struct mg_context *ctx = mg_start(NULL, NULL, options);
    struct mg_server_port ports[2];
    if (!ctx || mg_get_server_ports(ctx, 2, ports) < 1) {
        fprintf(stderr, "pw_pages: cannot listen on %s\n", listen);
        return 2;
    }
    mg_set_request_handler(ctx, "/", on_request, NULL);
    printf("pw_pages: listening on 127.0.0.1:%d\n", ports[0].port);
    fflush(stdout);
    int sig = 0;
    sigwait(&stop_signals, &sig);
    _exit(0); /* nothing to save; mg_stop would take seconds */
}
