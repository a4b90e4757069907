/*
 * GET /logs?service=NAME&follow=1: the last `lines` lines, then every new
 * line as it is written, in one chunked reply, until the client goes away
 * or the server stops.
 *
 * The loop thread receives lines through the agent's callback and appends
 * them to the stream's pending buffer (bounded: a client that reads too
 * slowly loses lines, and is told how many); an eventfd wakes the request
 * thread, which writes them out. The request thread also watches its own
 * socket for the client hanging up (POLLRDHUP), so an idle stream of a
 * quiet service ends as soon as its client does, not at the next line.
 */
#include "agent/api_internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define POLL_INTERVAL_MS 1000   /* a stream re-checks for shutdown this often */
#define FD_SCAN_MAX      65536  /* descriptors looked at to find the client's socket */
#define TCP_TABLE_MAX    100000 /* lines of /proc/net/tcp read to find it */
#define TEXT_TYPE        "text/plain; charset=utf-8"
#define NDJSON_TYPE      "application/x-ndjson"

/* ---- the client's socket -------------------------------------------------- */

/* One /proc/net/tcp{,6} line: "sl: LOCAL:PORT REMOTE:PORT st ... uid timeout
 * inode". Addresses are the kernel's 32-bit words in hex, as stored. */
static bool tcp_line_matches(const char *line, bool v6, const void *peer, int peer_port,
                             int local_port, unsigned long *inode)
{
    char local[40], remote[40];
    unsigned local_p, remote_p, state;
    unsigned long ino;
    if (sscanf(line, " %*u: %39[0-9A-Fa-f]:%x %39[0-9A-Fa-f]:%x %x %*s %*s %*s %*u %*u %lu", local,
               &local_p, remote, &remote_p, &state, &ino) != 6)
        return false;
    if ((int)local_p != local_port || (int)remote_p != peer_port || ino == 0)
        return false;
    size_t words = v6 ? 4 : 1;
    if (strlen(remote) != words * 8)
        return false;
    const uint32_t *want = peer;
    for (size_t i = 0; i < words; i++) {
        char word[9];
        memcpy(word, remote + i * 8, 8);
        word[8] = '\0';
        if ((uint32_t)strtoul(word, NULL, 16) != want[i])
            return false;
    }
    *inode = ino;
    return true;
}

/* The inode of the TCP connection from the request's peer to its local
 * port, read from the kernel's table; 0 when not found. */
static unsigned long connection_inode(const struct mg_request_info *ri)
{
    struct in6_addr addr6;
    struct in_addr addr4;
    bool v6 = inet_pton(AF_INET6, ri->remote_addr, &addr6) == 1;
    if (!v6 && inet_pton(AF_INET, ri->remote_addr, &addr4) != 1)
        return 0;
    FILE *f = fopen(v6 ? "/proc/net/tcp6" : "/proc/net/tcp", "re");
    if (!f)
        return 0;
    char line[512];
    unsigned long inode = 0;
    for (long n = 0; n < TCP_TABLE_MAX && fgets(line, sizeof line, f); n++) {
        if (tcp_line_matches(line, v6, v6 ? (const void *)&addr6 : (const void *)&addr4,
                             ri->remote_port, ri->server_port, &inode))
            break;
        inode = 0;
    }
    fclose(f);
    return inode;
}

/* civetweb does not expose a connection's socket. The kernel's TCP table
 * gives the inode of this request's connection (peer address and port,
 * local port), and /proc/self/fd the descriptor that is that socket; no
 * other thread's descriptor is touched. -1 when not found (the stream then
 * notices a departed client only when a write fails). */
static int find_connection_socket(const struct mg_request_info *ri)
{
    unsigned long inode = connection_inode(ri);
    if (inode == 0)
        return -1;
    char want[64];
    snprintf(want, sizeof want, "socket:[%lu]", inode);
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    int found = -1, seen = 0;
    struct dirent *entry;
    while (found < 0 && seen++ < FD_SCAN_MAX && (entry = readdir(dir)) != NULL) {
        char path[300], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", entry->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strcmp(target, want) == 0)
            found = atoi(entry->d_name);
    }
    closedir(dir);
    return found;
}

/* ---- loop side ------------------------------------------------------------ */

/* Appends text to the stream's pending output, or counts a dropped line
 * when the client has fallen API_FOLLOW_BUF behind. Called with mu held. */
static void pending_append_locked(api_follow_t *f, const char *text, size_t len)
{
    if (f->pending_len + len > API_FOLLOW_BUF) {
        f->dropped++;
        return;
    }
    size_t need = f->pending_len + len;
    if (need > f->pending_cap) {
        size_t cap = f->pending_cap ? f->pending_cap : 4096;
        while (cap < need)
            cap *= 2;
        char *grown = realloc(f->pending, cap);
        if (!grown) {
            f->dropped++;
            return;
        }
        f->pending = grown;
        f->pending_cap = cap;
    }
    memcpy(f->pending + f->pending_len, text, len);
    f->pending_len += len;
}

/* One entry as the stream shows it: the line and a newline, or the entry as
 * one NDJSON line. Caller frees. */
static char *format_entry(const json_t *entry, bool ndjson, size_t *len)
{
    char *text;
    if (ndjson) {
        text = json_dumps(entry, JSON_COMPACT);
    } else {
        const char *line = json_string_value(json_object_get(entry, "line"));
        text = strdup(line ? line : "");
    }
    if (!text)
        return NULL;
    size_t n = strlen(text);
    char *with_newline = realloc(text, n + 2);
    if (!with_newline) {
        free(text);
        return NULL;
    }
    with_newline[n] = '\n';
    with_newline[n + 1] = '\0';
    *len = n + 1;
    return with_newline;
}

static void wake_stream(api_follow_t *f)
{
    uint64_t one = 1;
    ssize_t n = write(f->wake_fd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is already non-zero, so it is awake */
}

/* The callback the agent calls with each new line (loop thread). */
static void on_line(void *cb_ctx, json_t *entry)
{
    api_follow_t *f = cb_ctx;
    size_t len = 0;
    char *text = format_entry(entry, f->ndjson, &len);
    pthread_mutex_lock(&f->api->mu);
    if (text)
        pending_append_locked(f, text, len);
    else
        f->dropped++;
    pthread_mutex_unlock(&f->api->mu);
    free(text);
    wake_stream(f);
}

void api_follow_start(kiln_machine_api_t *api, api_call_t *call)
{
    api_follow_t *f = call->follow;
    if (!api->hooks.logs_follow || !api->hooks.logs_unfollow) {
        api_response_error(&call->res, 501, "this machine agent does not support following logs");
        return;
    }
    json_t *initial =
        api->hooks.logs ? api->hooks.logs(api->hooks_ctx, f->name, call->lines) : json_array();
    if (!initial) {
        api_response_error(&call->res, 404,
                           "no service named \"%s\" on this machine; GET /services lists them",
                           f->name);
        return;
    }
    int rc = api->hooks.logs_follow(api->hooks_ctx, f->name, on_line, f);
    if (rc != 0) {
        json_decref(initial);
        if (rc == KILN_ENOTFOUND)
            api_response_error(&call->res, 404,
                               "no service named \"%s\" on this machine; GET /services lists them",
                               f->name);
        else
            api_response_error(&call->res, 503, "cannot follow the logs of %s now (%s); retry",
                               f->name, kiln_strerror(rc));
        return;
    }
    f->following = true;
    /* The lines so far become the reply's first chunk. */
    size_t i;
    json_t *entry;
    pthread_mutex_lock(&api->mu);
    json_array_foreach(initial, i, entry)
    {
        size_t len = 0;
        char *text = format_entry(entry, f->ndjson, &len);
        if (text)
            pending_append_locked(f, text, len);
        free(text);
    }
    pthread_mutex_unlock(&api->mu);
    json_decref(initial);
    call->res.status = 200;
    call->res.content_type = f->ndjson ? NDJSON_TYPE : TEXT_TYPE;
}

static void unfollow(kiln_machine_api_t *api, api_follow_t *f)
{
    if (f->following)
        api->hooks.logs_unfollow(api->hooks_ctx, f->name, on_line, f);
    f->following = false;
}

static void follow_free(api_follow_t *f)
{
    if (f->wake_fd >= 0)
        close(f->wake_fd);
    free(f->pending);
    free(f);
}

void api_follow_release(kiln_machine_api_t *api, api_follow_t *f)
{
    unfollow(api, f);
    pthread_mutex_lock(&api->mu);
    for (api_follow_t **p = &api->followers; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            api->n_followers--;
            break;
        }
    }
    pthread_mutex_unlock(&api->mu);
    follow_free(f);
}

void api_follow_unfollow_all(kiln_machine_api_t *api)
{
    /* api->stopping is set, so no request thread adds a stream now and only
     * this thread removes them: the list is stable without the lock. */
    for (api_follow_t *f = api->followers; f; f = f->next) {
        unfollow(api, f);
        wake_stream(f);
    }
}

void api_follow_free_all(kiln_machine_api_t *api)
{
    api_follow_t *f = api->followers;
    api->followers = NULL;
    api->n_followers = 0;
    while (f) {
        api_follow_t *next = f->next;
        follow_free(f);
        f = next;
    }
}

/* ---- request thread --------------------------------------------------------- */

/* A new stream linked into api->followers; NULL with res filled when the
 * server stops, has max_followers streams, or is out of memory. */
static api_follow_t *follow_new(kiln_machine_api_t *api, const char *name, bool ndjson,
                                api_response_t *res)
{
    api_follow_t *f = calloc(1, sizeof *f);
    if (f) {
        f->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (f->wake_fd < 0) {
            free(f);
            f = NULL;
        }
    }
    if (!f) {
        api_response_error(res, 500, "cannot start a log stream: %s", strerror(errno));
        return NULL;
    }
    f->api = api;
    f->ndjson = ndjson;
    snprintf(f->name, sizeof f->name, "%s", name);
    pthread_mutex_lock(&api->mu);
    if (api->stopping || api->n_followers >= (size_t)api->max_followers) {
        bool stopping = api->stopping;
        pthread_mutex_unlock(&api->mu);
        follow_free(f);
        if (stopping)
            api_response_error(res, 503, "the machine agent is shutting down; retry later");
        else
            api_response_error(res, 503,
                               "%d log streams are open, the most this machine serves at once; "
                               "close one or retry later",
                               api->max_followers);
        return NULL;
    }
    f->next = api->followers;
    api->followers = f;
    api->n_followers++;
    pthread_mutex_unlock(&api->mu);
    return f;
}

/* Asks the loop to unfollow and free f; f must not be used afterwards. */
static void follow_post_release(kiln_machine_api_t *api, api_follow_t *f)
{
    api_call_t *call = api_call_new(API_CALL_FOLLOW_STOP);
    if (!call) {
        /* Without memory for the request the stream stays registered until
         * the server stops (api_follow_unfollow_all); nothing leaks past it. */
        return;
    }
    call->follow = f;
    api_call_post(api, call);
}

/* Writes what the loop has queued. Returns false when the client is gone
 * (a write failed). */
static bool flush_pending(kiln_machine_api_t *api, api_follow_t *f, struct mg_connection *conn)
{
    pthread_mutex_lock(&api->mu);
    char *text = f->pending;
    size_t len = f->pending_len;
    size_t dropped = f->dropped;
    f->pending = NULL;
    f->pending_len = f->pending_cap = 0;
    f->dropped = 0;
    bool ndjson = f->ndjson;
    pthread_mutex_unlock(&api->mu);
    bool ok = len == 0 || mg_send_chunk(conn, text, (unsigned)len) >= 0;
    free(text);
    if (ok && dropped > 0) {
        char notice[200];
        int n = snprintf(notice, sizeof notice,
                         ndjson ? "{\"stream\":\"kiln\",\"line\":\"%zu lines dropped: this client "
                                  "reads more slowly than the service writes\"}\n"
                                : "[kiln: %zu lines dropped: this client reads more slowly than "
                                  "the service writes]\n",
                         dropped);
        ok = mg_send_chunk(conn, notice, (unsigned)n) >= 0;
    }
    return ok;
}

static bool stopping(kiln_machine_api_t *api)
{
    pthread_mutex_lock(&api->mu);
    bool s = api->stopping;
    pthread_mutex_unlock(&api->mu);
    return s;
}

/* Streams until the client leaves or the server stops. */
static void stream_loop(kiln_machine_api_t *api, api_follow_t *f, struct mg_connection *conn)
{
    int sock = find_connection_socket(mg_get_request_info(conn));
    bool client_here = flush_pending(api, f, conn);
    while (client_here && !stopping(api)) {
        struct pollfd fds[2] = {{.fd = f->wake_fd, .events = POLLIN},
                                {.fd = sock, .events = POLLRDHUP}};
        int n = poll(fds, sock >= 0 ? 2 : 1, POLL_INTERVAL_MS);
        if (n < 0 && errno != EINTR)
            break;
        if (sock >= 0 && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            break;
        if (fds[0].revents & POLLIN) {
            uint64_t count;
            ssize_t r = read(f->wake_fd, &count, sizeof count);
            (void)r;
            client_here = flush_pending(api, f, conn);
        }
    }
    if (client_here)
        mg_send_chunk(conn, "", 0); /* the last, empty chunk ends the reply */
}

int api_follow_serve(kiln_machine_api_t *api, struct mg_connection *conn, const char *name,
                     size_t lines, bool ndjson)
{
    api_response_t res = {0};
    api_follow_t *f = follow_new(api, name, ndjson, &res);
    if (!f) {
        api_http_send(conn, &res);
        int status = res.status;
        api_response_clear(&res);
        return status;
    }
    api_call_t *call = api_call_new(API_CALL_FOLLOW_START);
    if (!call) {
        follow_post_release(api, f);
        api_response_error(&res, 500, "out of memory");
    } else {
        call->follow = f;
        call->lines = lines;
        snprintf(call->name, sizeof call->name, "%s", name);
        api_call_run(api, call, &res);
    }
    if (res.status != 200) {
        /* Even a start that timed out may still run on the loop later: the
         * release queued behind it undoes it. */
        if (call)
            follow_post_release(api, f);
        api_http_send(conn, &res);
        int status = res.status;
        api_response_clear(&res);
        return status;
    }
    mg_response_header_start(conn, 200);
    mg_response_header_add(conn, "Content-Type", res.content_type, -1);
    mg_response_header_add(conn, "Transfer-Encoding", "chunked", -1);
    mg_response_header_add(conn, "Cache-Control", "no-store", -1);
    mg_response_header_add(conn, "X-Content-Type-Options", "nosniff", -1);
    api_response_clear(&res);
    pthread_mutex_lock(&api->mu);
    api->streaming++;
    pthread_mutex_unlock(&api->mu);
    if (mg_response_header_send(conn) >= 0)
        stream_loop(api, f, conn);
    follow_post_release(api, f);
    pthread_mutex_lock(&api->mu);
    api->streaming--;
    pthread_cond_broadcast(&api->done_cond);
    pthread_mutex_unlock(&api->mu);
    return 200;
}
