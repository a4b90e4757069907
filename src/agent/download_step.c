/*
 * The download step of a service (services.NAME.downloads): the program
 * `kiln machine download` runs it, the plan puts it before the service,
 * and the agent turns the lines it writes into worker_phase events
 * (agent_downloads.c). One file after the other, each with kiln_download.
 */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent_internal.h"
#include "core/curl_util.h"
#include "kiln/download.h"

#define URL_SHOWN_MAX 512

typedef struct step_file {
    FILE *out;
    const char *service;
    const char *path;
    char url_shown[URL_SHOWN_MAX];
    size_t index, count;
    int64_t started_ms, last_line_ms;
    uint64_t first_done; /* bytes already on disk when this run began (a resume) */
    bool have_first;
    uint64_t shown_done; /* bytes_done of the last line written */
    bool shown_any;
} step_file_t;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes one prefixed JSON line and flushes it (the agent reads a pipe). */
static void write_line(step_file_t *f, json_t *fields)
{
    json_object_set_new(fields, "service", json_string(f->service));
    json_object_set_new(fields, "file", json_integer((json_int_t)f->index + 1));
    json_object_set_new(fields, "files", json_integer((json_int_t)f->count));
    json_object_set_new(fields, "url", json_string(f->url_shown));
    json_object_set_new(fields, "path", json_string(f->path));
    char *text = json_dumps(fields, JSON_COMPACT);
    if (text) {
        fprintf(f->out, "%s%s\n", KILN_DOWNLOAD_LINE_PREFIX, text);
        fflush(f->out);
    }
    free(text);
    json_decref(fields);
}

/* The time left at the rate of this run so far; -1 while unknown. */
static long long eta_ms(const step_file_t *f, uint64_t done, uint64_t total, int64_t now)
{
    int64_t elapsed = now - f->started_ms;
    if (!total || done >= total || done <= f->first_done || elapsed <= 0)
        return total && done >= total ? 0 : -1;
    double per_ms = (double)(done - f->first_done) / (double)elapsed;
    return (long long)((double)(total - done) / per_ms);
}

static void report(step_file_t *f, uint64_t done, uint64_t total, bool final)
{
    int64_t now = mono_ms();
    if (!f->have_first) {
        f->first_done = done;
        f->have_first = true;
    }
    if (!final && now - f->last_line_ms < KILN_DOWNLOAD_PROGRESS_EVERY_MS)
        return;
    if (f->shown_any && f->shown_done == done) /* the end, already shown by the last line */
        return;
    f->last_line_ms = now;
    f->shown_done = done;
    f->shown_any = true;
    long long eta = eta_ms(f, done, total, now);
    int percent = total ? (int)(done * 100 / total) : 0;
    write_line(f, json_pack("{s:I, s:I, s:i, s:o}", "bytes_done", (json_int_t)done, "bytes_total",
                            (json_int_t)total, "percent", percent, "eta_ms",
                            eta >= 0 ? json_integer(eta) : json_null()));
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    report(ctx, done, total, false);
}

/* The size of the file at path; 0 when it cannot be read. */
static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && st.st_size > 0 ? (uint64_t)st.st_size : 0;
}

/* Fetches one entry, then reports it complete; a file without a sha256
 * that exists is kept as it is. */
static int fetch_one(step_file_t *f, const kiln_download_config_t *d, const atomic_int *cancel,
                     kiln_err_t *err)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", d->path);
    int rc = kiln_agent_make_dirs(dirname(dir), "download folder", err);
    if (rc == 0 && !(d->sha256 == NULL && access(d->path, F_OK) == 0)) {
        kiln_download_options_t opts = {.url = d->url,
                                        .dest = d->path,
                                        .sha256 = d->sha256,
                                        .progress = on_progress,
                                        .progress_ctx = f,
                                        .cancel = cancel};
        f->started_ms = mono_ms();
        rc = kiln_download(&opts, err);
    }
    if (rc == 0) {
        uint64_t size = file_size(d->path);
        report(f, size, size, true);
    }
    return rc;
}

int kiln_download_service(const kiln_config_t *cfg, const char *service, FILE *out,
                          const atomic_int *cancel, kiln_err_t *err)
{
    const kiln_service_config_t *s = NULL;
    for (size_t i = 0; i < cfg->n_services; i++) {
        if (strcmp(cfg->services[i].name, service) == 0)
            s = &cfg->services[i];
    }
    if (!s || !s->n_downloads)
        return kiln_err_set(err, KILN_ENOTFOUND,
                            "services.%s.downloads: %s in %s; add the service with a downloads "
                            "list",
                            service, s ? "is empty" : "no such service",
                            cfg->source_path ? cfg->source_path : "the config");
    for (size_t i = 0; i < s->n_downloads; i++) {
        step_file_t f = {.out = out,
                         .service = service,
                         .path = s->downloads[i].path,
                         .index = i,
                         .count = s->n_downloads};
        kiln_url_redact(s->downloads[i].url, f.url_shown, sizeof f.url_shown);
        kiln_err_t dl_err = {0};
        int rc = fetch_one(&f, &s->downloads[i], cancel, &dl_err);
        if (rc != 0) {
            kiln_err_set(err, rc, "services.%s.downloads[%zu]: %s", service, i, dl_err.msg);
            write_line(&f, json_pack("{s:s}", "error", err->msg));
            return rc;
        }
    }
    return 0;
}
