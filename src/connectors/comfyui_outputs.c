/*
 * A finished ComfyUI prompt's outputs (comfyui_internal.h): every
 * {"filename","subfolder","type"} that a node's output lists (images,
 * gifs, audio, ...), its GET /view URL, and, with outputs_dir set, the file
 * itself saved under outputs_dir/<job id>/ through a temporary name. Names
 * come from the server, so only their last component is kept, made safe,
 * and made unique within the job.
 */
#include "comfyui_internal.h"
#include "outputs.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define OUTPUT_NAME_MAX 160

/* "/view?filename=..&subfolder=..&type=..", each value escaped; malloc'd. */
static char *view_path(const char *filename, const char *subfolder, const char *type)
{
    char *f = curl_easy_escape(NULL, filename, 0);
    char *s = curl_easy_escape(NULL, subfolder, 0);
    char *t = curl_easy_escape(NULL, type, 0);
    char *path = NULL;
    if (f && s && t && asprintf(&path, "/view?filename=%s&subfolder=%s&type=%s", f, s, t) < 0)
        path = NULL;
    curl_free(f);
    curl_free(s);
    curl_free(t);
    return path;
}

/* A name for the file under the job's folder, unused so far in this job. */
static void local_name(const char *filename, json_t *used, char *out, size_t size)
{
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    char safe[OUTPUT_NAME_MAX];
    kiln_outputs_safe_name(base, "output", safe, sizeof safe);
    snprintf(out, size, "%s", safe);
    for (int n = 2; json_object_get(used, out); n++)
        snprintf(out, size, "%d-%s", n, safe);
    json_object_set_new(used, out, json_true());
}

/* Downloads one file and saves it; adds "path" and "bytes" to item. */
static int fetch_one(const comfyui_t *cf, const kiln_job_context_t *job, const char *dir,
                     const char *name, const char *path, const kiln_http_call_t *base, json_t *item,
                     kiln_job_outcome_t *out)
{
    kiln_http_call_t call = *base;
    call.method = "GET";
    call.path = path;
    call.body_json = NULL;
    kiln_http_result_t res;
    kiln_err_t err = {0};
    int rc = kiln_http_call(cf->files, &call, &res, &err);
    char file[PATH_MAX], why[PATH_MAX + 64];
    if (rc == KILN_ECANCELLED) {
        out->status = KILN_OUTCOME_CANCELLED;
        rc = 0;
    } else if (rc == KILN_ETOOBIG) {
        rc = kiln_job_outcome_fail(out, false,
                                   "GET %s: the file is larger than connectors.%s."
                                   "max_output_bytes (%zu); raise it if that is expected",
                                   path, cf->name, cf->max_output_bytes);
    } else if (rc < 0) {
        rc = rc == KILN_ENOMEM ? rc : kiln_job_outcome_fail(out, res.retryable, "%s", err.msg);
    } else if ((size_t)snprintf(file, sizeof file, "%s/%s", dir, name) >= sizeof file - 4) {
        rc = kiln_job_outcome_fail(out, false, "the path under %s is too long", dir);
    } else if (kiln_outputs_write_file(file, res.body, res.body_len, why, sizeof why) < 0) {
        rc = kiln_job_outcome_fail(out, true, "saving an output: %s", why);
    } else {
        json_object_set_new(item, "path", json_string(file));
        json_object_set_new(item, "bytes", json_integer((json_int_t)res.body_len));
        kiln_log(KILN_LOG_DEBUG, COMFYUI_LOG, job->job_id, NULL, "saved %s (%zu bytes)", file,
                 res.body_len);
    }
    kiln_http_result_clear(&res);
    return rc;
}

/* The job's folder under outputs_dir, created on the first file. */
static int job_dir(const comfyui_t *cf, const kiln_job_context_t *job, char *dir, size_t size,
                   kiln_job_outcome_t *out)
{
    char id[128];
    kiln_outputs_safe_name(job->job_id, "job", id, sizeof id);
    snprintf(dir, size, "%s/%s", cf->outputs_dir, id);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return kiln_job_outcome_fail(out, true, "cannot create %s: %s", dir, strerror(errno));
    return 0;
}

/* One listed file: validated, described in a new item, fetched when due. */
static int add_output(const comfyui_t *cf, const kiln_job_context_t *job, const char *node,
                      const char *kind, const json_t *file, json_t *used,
                      const kiln_http_call_t *base, json_t *outputs, kiln_job_outcome_t *out)
{
    const char *filename = json_string_value(json_object_get(file, "filename"));
    json_t *sub = json_object_get(file, "subfolder"), *type_v = json_object_get(file, "type");
    const char *subfolder = sub ? json_string_value(sub) : "";
    const char *type = type_v ? json_string_value(type_v) : "output";
    if (!filename || !filename[0] || strlen(filename) > 255 || !subfolder ||
        strlen(subfolder) > 1024 || !type || strlen(type) > 32)
        return kiln_job_outcome_fail(out, false,
                                     "GET /history: node %.64s's %.64s output has no usable "
                                     "filename/subfolder/type",
                                     node, kind);
    char *path = view_path(filename, subfolder, type);
    char *url = NULL;
    if (!path || asprintf(&url, "%s%s", kiln_http_client_url_shown(cf->files), path) < 0) {
        free(path);
        return KILN_ENOMEM;
    }
    json_t *item =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "node", node, "kind", kind, "filename",
                  filename, "subfolder", subfolder, "type", type, "url", url);
    free(url);
    int rc = item ? 0 : KILN_ENOMEM;
    if (rc == 0 && cf->outputs_dir && strcmp(type, "output") == 0) {
        char dir[PATH_MAX], name[OUTPUT_NAME_MAX + 16];
        local_name(filename, used, name, sizeof name);
        rc = job_dir(cf, job, dir, sizeof dir, out);
        if (rc == 0 && !out->error)
            rc = fetch_one(cf, job, dir, name, path, base, item, out);
    }
    free(path);
    if (item)
        json_array_append_new(outputs, item);
    return rc;
}

int kiln_comfyui_outputs_collect(const comfyui_t *cf, const kiln_job_context_t *job,
                                 const json_t *entry, const kiln_http_call_t *base,
                                 json_t **outputs, kiln_job_outcome_t *out)
{
    *outputs = json_array();
    json_t *used = json_object();
    int rc = *outputs && used ? 0 : KILN_ENOMEM;
    const char *node, *kind;
    json_t *node_out, *list, *file;
    json_object_foreach((json_t *)json_object_get(entry, "outputs"), node, node_out)
    {
        json_object_foreach(node_out, kind, list)
        {
            size_t i;
            json_array_foreach(list, i, file)
            {
                if (rc < 0 || out->error || out->status == KILN_OUTCOME_CANCELLED)
                    break;
                if (!json_is_object(file) || !json_object_get(file, "filename"))
                    continue; /* text and other values some nodes output */
                if (json_array_size(*outputs) >= COMFYUI_OUTPUTS_MAX) {
                    rc = kiln_job_outcome_fail(out, false,
                                               "GET /history: the prompt lists more than %d "
                                               "output files",
                                               COMFYUI_OUTPUTS_MAX);
                    break;
                }
                rc = add_output(cf, job, node, kind, file, used, base, *outputs, out);
            }
        }
    }
    json_decref(used);
    if (rc < 0 || out->error || out->status == KILN_OUTCOME_CANCELLED) {
        json_decref(*outputs);
        *outputs = NULL;
    }
    return rc;
}
