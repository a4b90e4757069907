/*
 * Cost of the hub's machine calls with a fleet in Redis:
 *
 *   bench_hub_route --redis URL [--machines 100] [--calls 500]
 *
 * Registers MACHINES machines, each with two live workers (records written
 * as workers write them), then times CALLS kiln_hub_route_job calls for a
 * job pinned to one machine (what a pinned submit pays before submitting),
 * CALLS / 10 kiln_hub_machines_list calls, and CALLS / 10
 * kiln_hub_explain_waiting calls. Prints one JSON line with µs per call
 * (median). Uses only the public headers.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/broker.h"
#include "kiln/hub_machines.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double median_us(int64_t *ns, int n)
{
    qsort(ns, (size_t)n, sizeof *ns, cmp_i64);
    return (double)ns[n / 2] / 1000.0;
}

static int register_fleet(kiln_broker_t *b, int machines, kiln_err_t *err)
{
    for (int m = 0; m < machines; m++) {
        for (int k = 0; k < 2; k++) {
            char machine[32], id[48];
            snprintf(machine, sizeof machine, "m%03d", m);
            snprintf(id, sizeof id, "%s-%d", machine, k);
            json_t *info =
                json_pack("{s:s, s:s, s:[s], s:{s:s, s:i}, s:i, s:i}", "id", id, "machine_id",
                          machine, "services", "comfyui", "capabilities", "machine_id", machine,
                          "gpu_memory_gb", 8 + m % 40, "concurrency", 1, "busy", 0);
            int rc = kiln_broker_register_worker(b, id, info, 600000, err);
            json_decref(info);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    int machines = 100, calls = 500;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--redis"))
            url = argv[i + 1];
        else if (!strcmp(argv[i], "--machines"))
            machines = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calls"))
            calls = atoi(argv[i + 1]);
    }
    if (!url || machines < 1 || calls < 10) {
        fprintf(stderr, "usage: bench_hub_route --redis URL [--machines N] [--calls K]\n");
        return 2;
    }
    kiln_broker_options_t opts = {.redis_url = url};
    kiln_broker_t *b = NULL;
    kiln_err_t err = {0};
    kiln_hub_error_t e = {0};
    if (kiln_broker_connect(&opts, &b, &err) != 0 || register_fleet(b, machines, &err) != 0) {
        fprintf(stderr, "bench_hub_route: %s\n", err.msg);
        return 1;
    }
    int64_t *ns = calloc((size_t)calls, sizeof *ns);
    char pinned[32];
    snprintf(pinned, sizeof pinned, "m%03d", machines / 2);
    for (int i = 0; i < calls; i++) {
        json_t *job =
            json_pack("{s:s, s:{s:s}}", "service", "comfyui", "requirements", "machine", pinned);
        kiln_hub_route_t d;
        int64_t t0 = now_ns();
        int rc = kiln_hub_route_job(b, job, &d, &e);
        ns[i] = now_ns() - t0;
        json_decref(job);
        if (rc) {
            fprintf(stderr, "bench_hub_route: %s\n", e.message);
            return 1;
        }
    }
    double route_us = median_us(ns, calls);
    for (int i = 0; i < calls / 10; i++) {
        json_t *list = NULL;
        int64_t t0 = now_ns();
        kiln_hub_machines_list(b, &list, &e);
        ns[i] = now_ns() - t0;
        json_decref(list);
    }
    double list_us = median_us(ns, calls / 10);
    kiln_job_spec_t spec;
    const char *text = "{\"service\":\"comfyui\",\"requirements\":{\"gpu_memory_gb\":64}}";
    char id[KILN_JOB_ID_MAX];
    if (kiln_job_spec_parse(text, strlen(text), 0, &spec, &err) != 0 ||
        kiln_broker_submit(b, &spec, id, NULL, &err) != 0) {
        fprintf(stderr, "bench_hub_route: %s\n", err.msg);
        return 1;
    }
    kiln_job_spec_clear(&spec);
    for (int i = 0; i < calls / 10; i++) {
        json_t *out = NULL;
        int64_t t0 = now_ns();
        kiln_hub_explain_waiting(b, id, &out, &e);
        ns[i] = now_ns() - t0;
        json_decref(out);
    }
    printf("{\"machines\":%d,\"workers\":%d,\"route_us\":%.1f,\"list_us\":%.1f,"
           "\"explain_us\":%.1f}\n",
           machines, machines * 2, route_us, list_us, median_us(ns, calls / 10));
    free(ns);
    kiln_broker_free(b);
    return 0;
}
