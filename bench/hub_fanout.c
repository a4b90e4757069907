/*
 * Event fan-out of `kiln hub` to many WebSocket clients (bench/hub_fanout.sh):
 *
 *   bench_hub_fanout --kiln PATH --redis URL [--clients 200] [--events 1000]
 *                    [--interval-us 10000]
 *
 * Starts a real `kiln hub`, connects CLIENTS WebSocket clients to
 * /v1/events/ws?service=fanout (civetweb's client), then submits EVENTS jobs
 * through the broker, one every INTERVAL µs. Each submit appends a
 * "submitted" event to the queue's stream (the XADD inside the submit
 * script); the time is taken just before the submit is sent, so every
 * latency includes the script's own run. Each client notes when each event
 * reaches it. Per event: the time until the LAST client has it; per
 * delivery: the time until one client has it; and the hub's CPU time
 * (user + system, /proc) per event over the measured phase, which a busy
 * shared machine disturbs far less than latency. Prints one Markdown table
 * row; exits non-zero when an event never reached every client.
 */
#include <civetweb.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kiln/broker.h"
#include "kiln/config.h"
#include "support/bench_worker.h"

#define SERVICE     "fanout"
#define WARMUP      20 /* events before the measured ones */
#define CLIENTS_MAX 1000
#define EVENTS_MAX  100000

typedef struct client {
    struct mg_connection *conn;
    int64_t *seen_us; /* receipt time by job number (0: not yet) */
    atomic_long received;
} client_t;

static long n_numbers; /* the size of each seen_us */
static pid_t hub_pid;

static void stop_hub(void)
{
    if (hub_pid > 0) {
        kill(hub_pid, SIGTERM);
        waitpid(hub_pid, NULL, 0);
        hub_pid = 0;
    }
}

static void on_signal(int sig)
{
    if (hub_pid > 0)
        kill(hub_pid, SIGKILL);
    _exit(128 + sig);
}

/* Starts `kiln hub` with enough threads for every client; its log goes to
 * log_path. Returns the port, or -1. */
static int start_hub(const char *kiln, const char *redis_url, int clients, const char *log_path)
{
    char threads[32];
    snprintf(threads, sizeof threads, "KILN_HUB_THREADS=%d", clients + 32);
    hub_pid = fork();
    if (hub_pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        putenv(threads);
        execl(kiln, kiln, "hub", "--redis", redis_url, "--listen", "127.0.0.1:0", "--log-format",
              "text", (char *)NULL);
        _exit(127);
    }
    for (int tries = 0; hub_pid > 0 && tries < 1000; tries++) { /* 10 s at most */
        FILE *f = fopen(log_path, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "listening on http://127.0.0.1:");
            if (at) {
                fclose(f);
                return atoi(at + strlen("listening on http://127.0.0.1:"));
            }
        }
        if (f)
            fclose(f);
        bench_sleep_us(10000);
    }
    fprintf(stderr, "hub_fanout: the hub did not start; its log is %s\n", log_path);
    return -1;
}

/* The hub's CPU time (user + system) so far, in µs; -1 if unknown. */
static int64_t hub_cpu_us(void)
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)hub_pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f)
        fclose(f);
    text[n] = '\0';
    const char *p = strrchr(text, ')'); /* fields after the command name */
    unsigned long long utime = 0, stime = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (int64_t)((utime + stime) * 1000000ULL / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* "…"job":"fanout.N"…" -> N, or -1. */
static long job_number(const char *data, size_t len)
{
    static const char key[] = "\"job\":\"" SERVICE ".";
    const char *at = memmem(data, len, key, sizeof key - 1);
    if (!at)
        return -1;
    return strtol(at + sizeof key - 1, NULL, 10);
}

static int on_data(struct mg_connection *conn, int flags, char *data, size_t len, void *arg)
{
    int64_t now = bench_now_us(CLOCK_MONOTONIC);
    (void)conn;
    client_t *c = arg;
    if ((flags & 0xf) != MG_WEBSOCKET_OPCODE_TEXT)
        return 1;
    long n = job_number(data, len);
    if (n >= 0 && n < n_numbers && !c->seen_us[n] && memmem(data, len, "\"submitted\"", 11)) {
        c->seen_us[n] = now;
        atomic_fetch_add(&c->received, 1);
    }
    return 1;
}

static void on_close(const struct mg_connection *conn, void *arg)
{
    (void)conn;
    (void)arg;
}

static int submit_one(kiln_broker_t *b, const kiln_job_spec_t *spec, long *number)
{
    char id[KILN_JOB_ID_MAX];
    bool duplicate = false;
    kiln_err_t err = {0};
    if (kiln_broker_submit(b, spec, id, &duplicate, &err) != 0) {
        fprintf(stderr, "hub_fanout: submit: %s\n", err.msg);
        return -1;
    }
    *number = strtol(strchr(id, '.') + 1, NULL, 10);
    return *number < n_numbers ? 0 : -1;
}

/* Waits (10 s at most) until every client has the event of job number n. */
static bool all_have(client_t *clients, int n_clients, long n)
{
    for (int tries = 0; tries < 1000; tries++) {
        int have = 0;
        for (int i = 0; i < n_clients; i++)
            have += clients[i].seen_us[n] != 0;
        if (have == n_clients)
            return true;
        bench_sleep_us(10000);
    }
    return false;
}

/* Warm-up: the hub follows the new queue's stream and every client is
 * live before the measured events. */
static int warm_up(kiln_broker_t *b, const kiln_job_spec_t *spec, client_t *clients, int n_clients)
{
    for (int k = 0; k < WARMUP; k++) {
        long n;
        if (submit_one(b, spec, &n) != 0)
            return -1;
        if (!all_have(clients, n_clients, n)) {
            fprintf(stderr, "hub_fanout: warm-up event %ld did not reach every client\n", n);
            return -1;
        }
    }
    return 0;
}

typedef struct options {
    const char *kiln, *redis_url;
    int clients;
    long events, interval_us;
} options_t;

static int parse_args(int argc, char **argv, options_t *o)
{
    *o = (options_t){.clients = 200, .events = 1000, .interval_us = 10000};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--kiln"))
            o->kiln = argv[i + 1];
        else if (!strcmp(argv[i], "--redis"))
            o->redis_url = argv[i + 1];
        else if (!strcmp(argv[i], "--clients"))
            o->clients = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--events"))
            o->events = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--interval-us"))
            o->interval_us = atol(argv[i + 1]);
        else
            return -1;
    }
    if (!o->kiln || !o->redis_url || o->clients < 1 || o->clients > CLIENTS_MAX || o->events < 1 ||
        o->events > EVENTS_MAX || o->interval_us < 0) {
        fprintf(stderr,
                "usage: bench_hub_fanout --kiln PATH --redis URL [--clients 1-%d] "
                "[--events 1-%d] [--interval-us N]\n",
                CLIENTS_MAX, EVENTS_MAX);
        return -1;
    }
    return 0;
}

static int connect_clients(client_t *clients, int n, int port)
{
    for (int i = 0; i < n; i++) {
        char error[256] = "";
        clients[i].seen_us = calloc((size_t)n_numbers, sizeof(int64_t));
        clients[i].conn = mg_connect_websocket_client("127.0.0.1", port, 0, error, sizeof error,
                                                      "/v1/events/ws?service=" SERVICE, NULL,
                                                      on_data, on_close, &clients[i]);
        if (!clients[i].conn || !clients[i].seen_us) {
            fprintf(stderr, "hub_fanout: client %d: %s\n", i, error[0] ? error : "no memory");
            return -1;
        }
    }
    return 0;
}

/* Submits the measured events at the interval; sent_us[k] and numbers[k]
 * receive each one's send time and job number. */
static int produce(kiln_broker_t *b, const kiln_job_spec_t *spec, const options_t *o,
                   int64_t *sent_us, long *numbers)
{
    int64_t next = bench_now_us(CLOCK_MONOTONIC);
    for (long k = 0; k < o->events; k++) {
        int64_t now = bench_now_us(CLOCK_MONOTONIC);
        if (next > now)
            bench_sleep_us(next - now);
        next += o->interval_us;
        sent_us[k] = bench_now_us(CLOCK_MONOTONIC);
        if (submit_one(b, spec, &numbers[k]) != 0)
            return -1;
    }
    return 0;
}

/* Prints the row: per event (last client) and per delivery percentiles. */
static int report(const options_t *o, client_t *clients, const int64_t *sent_us,
                  const long *numbers, int64_t cpu_us)
{
    int64_t *last = calloc((size_t)o->events, sizeof *last);
    int64_t *each = calloc((size_t)o->events * (size_t)o->clients, sizeof *each);
    long n_each = 0, missing = 0;
    for (long k = 0; k < o->events; k++) {
        for (int i = 0; i < o->clients; i++) {
            int64_t at = clients[i].seen_us[numbers[k]];
            if (!at) {
                missing++;
                continue;
            }
            each[n_each++] = at - sent_us[k];
            if (at - sent_us[k] > last[k])
                last[k] = at - sent_us[k];
        }
    }
    bench_sort_i64(last, o->events);
    bench_sort_i64(each, n_each);
    printf("| %d | %ld | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %ld |\n", o->clients,
           o->events, o->interval_us ? 1e6 / (double)o->interval_us : 0.0,
           bench_percentile(last, o->events, 50) / 1000.0,
           bench_percentile(last, o->events, 99) / 1000.0,
           bench_percentile(last, o->events, 100) / 1000.0,
           bench_percentile(each, n_each, 50) / 1000.0, bench_percentile(each, n_each, 99) / 1000.0,
           cpu_us >= 0 ? (double)cpu_us / 1000.0 / (double)o->events : -1.0, missing);
    free(last);
    free(each);
    return missing ? 1 : 0;
}

int main(int argc, char **argv)
{
    options_t o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    n_numbers = o.events + WARMUP + 64;
    /* The defaults matter: stream_max_len 0 would trim every event. */
    kiln_config_t cfg;
    kiln_config_init_defaults(&cfg);
    kiln_broker_options_t bo;
    kiln_broker_options_from_config(&bo, &cfg);
    bo.redis_url = o.redis_url;
    kiln_broker_t *b = NULL;
    kiln_err_t err = {0};
    kiln_job_spec_t spec;
    const char spec_json[] = "{\"service\":\"" SERVICE "\",\"payload\":{}}";
    if (kiln_broker_connect(&bo, &b, &err) != 0 ||
        kiln_job_spec_parse(spec_json, strlen(spec_json), 0, &spec, &err) != 0) {
        fprintf(stderr, "hub_fanout: %s\n", err.msg);
        return 1;
    }
    char log_path[] = "/tmp/kiln-hub-fanout-XXXXXX";
    int log_fd = mkstemp(log_path);
    if (log_fd >= 0)
        close(log_fd);
    mg_init_library(MG_FEATURES_WEBSOCKET);
    int64_t t0 = bench_now_us(CLOCK_MONOTONIC);
    int port = start_hub(o.kiln, o.redis_url, o.clients, log_path);
    client_t *clients = calloc((size_t)o.clients, sizeof *clients);
    int64_t *sent_us = calloc((size_t)o.events, sizeof *sent_us);
    long *numbers = calloc((size_t)o.events, sizeof *numbers);
    int rc =
        port > 0 && clients && sent_us && numbers ? connect_clients(clients, o.clients, port) : -1;
    if (rc == 0)
        rc = warm_up(b, &spec, clients, o.clients);
    fprintf(stderr, "hub_fanout: %d clients live after %.1f s\n", o.clients,
            (bench_now_us(CLOCK_MONOTONIC) - t0) / 1e6);
    int64_t cpu_before = hub_cpu_us();
    if (rc == 0)
        rc = produce(b, &spec, &o, sent_us, numbers);
    fprintf(stderr, "hub_fanout: %ld events sent after %.1f s\n", o.events,
            (bench_now_us(CLOCK_MONOTONIC) - t0) / 1e6);
    if (rc == 0 && !all_have(clients, o.clients, numbers[o.events - 1]))
        fprintf(stderr, "hub_fanout: the last event did not reach every client\n");
    int64_t cpu_after = hub_cpu_us();
    if (rc == 0)
        rc = report(&o, clients, sent_us, numbers,
                    cpu_before >= 0 && cpu_after >= 0 ? cpu_after - cpu_before : -1);
    fprintf(stderr, "hub_fanout: reported after %.1f s\n",
            (bench_now_us(CLOCK_MONOTONIC) - t0) / 1e6);
    stop_hub();
    fprintf(stderr, "hub_fanout: hub stopped after %.1f s\n",
            (bench_now_us(CLOCK_MONOTONIC) - t0) / 1e6);
    for (int i = 0; clients && i < o.clients; i++) {
        if (clients[i].conn)
            mg_close_connection(clients[i].conn);
        free(clients[i].seen_us);
    }
    fprintf(stderr, "hub_fanout: clients closed after %.1f s\n",
            (bench_now_us(CLOCK_MONOTONIC) - t0) / 1e6);
    if (rc == 0)
        unlink(log_path);
    else
        fprintf(stderr, "hub_fanout: hub log kept at %s\n", log_path);
    free(clients);
    free(sent_us);
    free(numbers);
    kiln_job_spec_clear(&spec);
    kiln_broker_free(b);
    kiln_config_free(&cfg);
    mg_exit_library();
    return rc ? 1 : 0;
}
