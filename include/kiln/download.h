/*
 * Downloads for the machine agent (models, LoRAs, other large files): one
 * file over http or https into a local path, resumed from a `.part` file,
 * checked against a sha256 when one is given, retried on transient failures,
 * with progress and cancellation (docs/downloads.md).
 */
#ifndef KILN_DOWNLOAD_H
#define KILN_DOWNLOAD_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "kiln/config.h"
#include "kiln/err.h"

typedef struct kiln_download_options {
    const char *url;         /* http:// or https:// only; userinfo and query are never logged */
    const char *dest;        /* final path; the download goes to dest + ".part" first */
    const char *sha256;      /* 64 hex digits (either case); NULL: no check */
    long timeout_ms;         /* the whole download, retries and waits included; 0: none */
    long connect_timeout_ms; /* each connection attempt; 0: KILN_DOWNLOAD_CONNECT_TIMEOUT_MS */
    int max_retries;         /* on 5xx, 408, 429, timeouts, stalls, resets; 0:
                                KILN_DOWNLOAD_RETRIES_DEFAULT;         negative: none; at most
                                KILN_DOWNLOAD_RETRIES_MAX */
    uint64_t max_bytes; /* a larger file is refused (KILN_ETOOBIG); 0: KILN_DOWNLOAD_MAX_BYTES */
    /* Called from the downloading thread with the bytes on disk so far and
     * the full size (0 while unknown); done falls back to 0 when a server
     * ignores a resume request. May be NULL. */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
    const atomic_int *cancel; /* non-zero: stop soon with KILN_ECANCELLED; may be NULL */
} kiln_download_options_t;

#define KILN_DOWNLOAD_RETRIES_DEFAULT    5
#define KILN_DOWNLOAD_RETRIES_MAX        100
#define KILN_DOWNLOAD_MAX_BYTES          (50ULL * 1024 * 1024 * 1024) /* 50 GiB */
#define KILN_DOWNLOAD_CONNECT_TIMEOUT_MS 30000L
#define KILN_DOWNLOAD_MAX_REDIRECTS      5
#define KILN_DOWNLOAD_URL_MAX            8192 /* bytes in a URL */
#define KILN_DOWNLOAD_STALL_BYTES_PER_S  1024 /* slower than this ... */
#define KILN_DOWNLOAD_STALL_S            60   /* ... for this long is a stall (retried) */
#define KILN_DOWNLOAD_BACKOFF_BASE_MS    250  /* first retry waits 125-250 ms, then doubles */
#define KILN_DOWNLOAD_BACKOFF_MAX_MS     30000
#define KILN_DOWNLOAD_RETRY_AFTER_MAX_S  300 /* a longer Retry-After is cut to this */

/* Downloads opts->url to opts->dest. Blocking (run it from a thread); safe to
 * call from several threads at once for different dests. Returns 0 once
 * dest holds the complete (and, with sha256, verified) file, including at
 * once when dest already matches sha256. Otherwise a negative KILN_E* with
 * the reason in err: KILN_EINVAL (bad options or URL), KILN_ENOTFOUND (404,
 * 410), KILN_ETOOBIG (over max_bytes), KILN_ETIMEOUT (timeout_ms passed),
 * KILN_ECANCELLED (the .part is kept for a later call to resume),
 * KILN_ECONFLICT (another download holds the .part), KILN_EIO (anything
 * else, a sha256 mismatch included; the .part is then deleted). */
int kiln_download(const kiln_download_options_t *opts, kiln_err_t *err);

/* ---- the download step of a service (download_step.c) -------------------- */

/* What a download step writes before each progress or failure line (one
 * JSON object), so the agent can tell them from other output. */
#define KILN_DOWNLOAD_LINE_PREFIX "kiln-download: "
/* At most one progress line per file this often (and one at its end). */
#define KILN_DOWNLOAD_PROGRESS_EVERY_MS 200

/* Fetches services.<service>.downloads of cfg in order (paths relative to
 * the working directory), writing to out, after KILN_DOWNLOAD_LINE_PREFIX,
 * a progress line {"service", "file" (1-based), "files", "url" (redacted),
 * "path", "bytes_done", "bytes_total" (0: unknown), "percent", "eta_ms"
 * (null: unknown)} at most every KILN_DOWNLOAD_PROGRESS_EVERY_MS, or on
 * failure {"service", "file", "files", "url", "path", "error"}. Files
 * already there (and matching their sha256) are not fetched again; a file
 * without a sha256 that exists is kept. Returns 0, or kiln_download's
 * error (KILN_ENOTFOUND for an unknown service or one without downloads)
 * with a message naming the entry, the URL without credentials, and the fix. */
int kiln_download_service(const kiln_config_t *cfg, const char *service, FILE *out,
                          const atomic_int *cancel, kiln_err_t *err);

/* The JSON object of a line a download step wrote, or NULL for any other
 * line. Caller owns the result. */
json_t *kiln_download_line_parse(const char *line);

#endif
