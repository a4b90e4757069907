/*
 * kiln services: the machine agent's services, from its machine API
 * (docs/machine-api.md). Also the small HTTP client that kiln logs and
 * kiln restart share (commands.h).
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"
#include "kiln/machine_api.h"

#define REPLY_MAX          (64L * 1024 * 1024) /* a reply larger than this is refused */
#define CONNECT_TIMEOUT_MS 5000L
#define REQUEST_TIMEOUT_MS 30000L

static const char services_usage[] =
    "usage: kiln services [--json] [--api URL] [--token TOKEN] [global options]\n"
    "\n"
    "Lists the services the machine agent on this machine runs, as a table:\n"
    "NAME STATE PID UPTIME RESTARTS RSS CPU.\n"
    "\n"
    "options:\n"
    "  --json          print the services as a JSON array (the agent's objects)\n"
    "  --api URL       the machine API (default http://127.0.0.1:<machine.health_port>,\n"
    "                  port 9090 unless configured)\n"
    "  --token TOKEN   the machine's API token for control commands (prefer the\n"
    "                  KILN_MACHINE_API_TOKEN variable: arguments show in ps)\n"
    "  -c/--config PATH, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes:\n"
    "  0  listed\n"
    "  1  the agent answered with an error\n"
    "  2  usage error\n"
    "  3  the machine API is unreachable or unavailable\n"
    "  4  timed out\n";

/* ---- the machine API client ------------------------------------------------ */

int kiln_cli_api_setup(const char *cmd, int *argc, char **argv, const struct kiln_cli_globals *g,
                       kiln_cli_api_t *api)
{
    memset(api, 0, sizeof *api);
    const char *url = NULL;
    int kept = 1;
    for (int i = 1; i < *argc; i++) {
        const char *arg = argv[i];
        const char **target = strncmp(arg, "--api", 5) == 0 && (arg[5] == '=' || !arg[5]) ? &url
                              : strncmp(arg, "--token", 7) == 0 && (arg[7] == '=' || !arg[7])
                                  ? &api->token
                                  : NULL;
        if (!target) {
            argv[kept++] = argv[i];
            continue;
        }
        const char *eq = strchr(arg, '=');
        if (eq) {
            *target = eq + 1;
        } else if (i + 1 < *argc) {
            *target = argv[++i];
        } else {
            fprintf(stderr, "kiln %s: %s needs a value\n", cmd, arg);
            return KILN_EXIT_USAGE;
        }
    }
    *argc = kept;
    argv[kept] = NULL;
    if (!api->token || !*api->token)
        api->token = getenv("KILN_MACHINE_API_TOKEN");
    if (url) {
        if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
            fprintf(stderr, "kiln %s: --api: expected an http:// or https:// URL, got \"%.100s\"\n",
                    cmd, url);
            return KILN_EXIT_USAGE;
        }
        snprintf(api->base_url, sizeof api->base_url, "%s", url);
        size_t len = strlen(api->base_url);
        while (len > 0 && api->base_url[len - 1] == '/')
            api->base_url[--len] = '\0';
        return 0;
    }
    kiln_config_t cfg;
    int rc = kiln_cli_load_config(g, &cfg);
    if (rc)
        return rc;
    snprintf(api->base_url, sizeof api->base_url, "http://127.0.0.1:%d", cfg.machine.health_port);
    kiln_config_free(&cfg);
    return 0;
}

typedef struct reply_buf {
    CURL *curl;
    char *data;
    size_t len;
    kiln_cli_api_stream_cb stream; /* NULL: collect the body */
    void *stream_ctx;
    bool too_big;
} reply_buf_t;

static size_t on_data(char *data, size_t size, size_t n, void *ctx)
{
    reply_buf_t *b = ctx;
    size_t len = size * n;
    if (b->len + len > (size_t)REPLY_MAX) {
        b->too_big = true;
        return 0;
    }
    char *grown = realloc(b->data, b->len + len + 1);
    if (!grown)
        return 0;
    b->data = grown;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    long status = 0;
    curl_easy_getinfo(b->curl, CURLINFO_RESPONSE_CODE, &status);
    if (!b->stream || status < 200 || status > 299)
        return len; /* an error reply is collected to be reported */
    /* Streaming: hand over each complete line, keep the rest. */
    char *start = b->data, *nl;
    while ((nl = memchr(start, '\n', b->len - (size_t)(start - b->data))) != NULL) {
        *nl = '\0';
        b->stream(b->stream_ctx, start);
        start = nl + 1;
    }
    size_t rest = b->len - (size_t)(start - b->data);
    memmove(b->data, start, rest);
    b->len = rest;
    b->data[rest] = '\0';
    return len;
}

/* The reply's error message, or a line naming the status. */
static void report_http_error(const char *cmd, long status, const char *body)
{
    json_t *doc = body ? json_loads(body, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
    char safe[1024];
    kiln_cli_sanitize(msg ? msg : "(no message)", safe, sizeof safe);
    fprintf(stderr, "kiln %s: the machine API answered %ld: %s\n", cmd, status, safe);
    if (status == 401)
        fprintf(stderr,
                "kiln %s: set KILN_MACHINE_API_TOKEN (or --token) to the agent's "
                "machine.api_token\n",
                cmd);
    json_decref(doc);
}

static int exit_code_for_status(long status)
{
    if (status == 400 || status == 405 || status == 413)
        return KILN_EXIT_USAGE;
    if (status == 503)
        return KILN_EXIT_UNAVAILABLE;
    return KILN_EXIT_FAILED;
}

int kiln_cli_api_call(const char *cmd, const kiln_cli_api_t *api, const char *method,
                      const char *path, kiln_cli_api_stream_cb stream, void *stream_ctx,
                      json_t **reply)
{
    if (reply)
        *reply = NULL;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *curl = curl_easy_init();
    if (!curl)
        return kiln_cli_report(cmd, KILN_ENOMEM, NULL);
    char url[1024], auth[1100];
    snprintf(url, sizeof url, "%s%s", api->base_url, path);
    struct curl_slist *headers = NULL;
    if (api->token && strcmp(method, "POST") == 0) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", api->token);
        headers = curl_slist_append(headers, auth);
    }
    reply_buf_t buf = {.curl = curl, .stream = stream, .stream_ctx = stream_ctx};
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, 0L);
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    /* A followed log has no end; everything else does. */
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, stream ? 0L : REQUEST_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    memset(auth, 0, sizeof auth);

    int exit_code = KILN_EXIT_OK;
    if (rc != CURLE_OK && !buf.too_big) {
        fprintf(stderr,
                "kiln %s: cannot reach the machine API at %s: %s (is the agent running? "
                "set --api URL or machine.health_port)\n",
                cmd, api->base_url, curl_easy_strerror(rc));
        exit_code = rc == CURLE_OPERATION_TIMEDOUT ? KILN_EXIT_TIMEOUT : KILN_EXIT_UNAVAILABLE;
    } else if (buf.too_big) {
        fprintf(stderr, "kiln %s: the machine API's reply passed %ld bytes; ask for less (-n)\n",
                cmd, REPLY_MAX);
        exit_code = KILN_EXIT_FAILED;
    } else if (status < 200 || status > 299) {
        report_http_error(cmd, status, buf.data);
        exit_code = exit_code_for_status(status);
    } else if (reply && !stream) {
        *reply = buf.data ? json_loads(buf.data, 0, NULL) : NULL;
        if (!*reply) {
            fprintf(stderr, "kiln %s: the machine API's reply is not JSON\n", cmd);
            exit_code = KILN_EXIT_FAILED;
        }
    } else if (stream && buf.len > 0) {
        stream(stream_ctx, buf.data); /* a last line without its newline */
    }
    free(buf.data);
    return exit_code;
}

/* ---- kiln services ---------------------------------------------------------- */

static int add_service_row(kiln_table_t *t, const json_t *svc)
{
    char pid[24] = "-", uptime[32] = "-", restarts[24], rss[32] = "-", cpu[24] = "-";
    const char *state = kiln_cli_json_str(svc, "state", "-");
    bool running = strcmp(state, "running") == 0 || strcmp(state, "starting") == 0 ||
                   strcmp(state, "stopping") == 0;
    if (kiln_cli_json_int(svc, "pid") > 0)
        snprintf(pid, sizeof pid, "%lld", (long long)kiln_cli_json_int(svc, "pid"));
    if (running)
        kiln_cli_format_duration(kiln_cli_json_int(svc, "uptime_ms"), uptime, sizeof uptime);
    snprintf(restarts, sizeof restarts, "%lld", (long long)kiln_cli_json_int(svc, "restarts"));
    if (running && json_is_number(json_object_get(svc, "rss_mb")))
        snprintf(rss, sizeof rss, "%.0fM", kiln_cli_json_num(svc, "rss_mb"));
    if (running && json_is_number(json_object_get(svc, "cpu_pct")))
        snprintf(cpu, sizeof cpu, "%.1f%%", kiln_cli_json_num(svc, "cpu_pct"));
    const char *cells[] = {
        kiln_cli_json_str(svc, "name", "-"), state, pid, uptime, restarts, rss, cpu};
    return kiln_table_add_row(t, cells);
}

static int print_services_table(const json_t *services)
{
    static const char *const headers[] = {"NAME",     "STATE", "PID", "UPTIME",
                                          "RESTARTS", "RSS",   "CPU"};
    kiln_table_t t;
    if (kiln_table_init(&t, 7, headers) != 0)
        return kiln_cli_report("services", KILN_ENOMEM, NULL);
    for (size_t c = 2; c < 7; c++)
        kiln_table_align_right(&t, c);
    size_t i;
    json_t *svc;
    int rc = 0;
    json_array_foreach(services, i, svc)
    {
        if ((rc = add_service_row(&t, svc)) != 0)
            break;
    }
    if (rc == 0)
        kiln_table_print(&t, stdout);
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("services", rc, NULL);
}

int kiln_cmd_services(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc)
        return rc;
    if (g.help) {
        fputs(services_usage, stdout);
        return KILN_EXIT_OK;
    }
    kiln_cli_api_t api;
    if ((rc = kiln_cli_api_setup("services", &argc, argv, &g, &api)) != 0)
        return rc;
    if (argc > 1) {
        fprintf(stderr, "kiln services: unexpected argument '%s' (see kiln services --help)\n",
                argv[1]);
        return KILN_EXIT_USAGE;
    }
    json_t *reply = NULL;
    rc = kiln_cli_api_call("services", &api, "GET", "/services", NULL, NULL, &reply);
    if (rc == 0) {
        json_t *services = json_object_get(reply, "services");
        if (g.json && services) {
            kiln_cli_print_json(services);
        } else if (g.json) {
            json_t *none = json_array();
            kiln_cli_print_json(none);
            json_decref(none);
        } else
            rc = print_services_table(services);
    }
    json_decref(reply);
    return rc;
}
