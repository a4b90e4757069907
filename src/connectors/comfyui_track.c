/*
 * Following one ComfyUI prompt (comfyui_internal.h): the progress socket's
 * messages (status, execution_start, execution_cached, executing, progress,
 * executed, execution_success, execution_error, execution_interrupted) and
 * the /history entry, turned into a percent and a message.
 *
 * Overall progress weights the nodes: of the nodes that will run (the
 * workflow's, less those ComfyUI reports cached), the finished ones count
 * whole and the one executing counts by its steps. It stays below 100 until
 * the outputs are saved.
 */
#include "comfyui_internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define TRACK_PERCENT_MAX 99.0 /* until the outputs are in */

void kiln_comfyui_track_init(comfyui_track_t *t, const json_t *workflow, const char *prompt_id,
                             const kiln_job_context_t *job)
{
    memset(t, 0, sizeof *t);
    t->workflow = workflow;
    t->prompt_id = prompt_id;
    t->job = job;
    t->total = json_object_size(workflow);
}

void kiln_comfyui_track_report(comfyui_track_t *t, double percent, const char *message)
{
    if (percent >= 0)
        t->percent = percent;
    if (t->job->progress)
        t->job->progress(t->job->progress_ctx, t->percent, message);
}

static const char *class_of(const comfyui_track_t *t, const char *node)
{
    const char *type =
        json_string_value(json_object_get(json_object_get(t->workflow, node), "class_type"));
    return type ? type : "?";
}

/* The percent the counters stand for. */
static double overall(const comfyui_track_t *t)
{
    size_t to_run = t->total > t->cached ? t->total - t->cached : 1;
    double current = t->node[0] && t->max > 0 ? (double)t->value / (double)t->max : 0.0;
    if (current > 1.0)
        current = 1.0;
    double percent = 100.0 * ((double)t->done + current) / (double)to_run;
    if (percent > TRACK_PERCENT_MAX)
        percent = TRACK_PERCENT_MAX;
    return percent < t->percent ? t->percent : percent; /* never backwards */
}

static void report_node(comfyui_track_t *t)
{
    char message[COMFYUI_ID_MAX * 2 + 64];
    if (t->max > 0)
        snprintf(message, sizeof message, "node %s %.64s: step %ld/%ld", t->node,
                 class_of(t, t->node), t->value, t->max);
    else
        snprintf(message, sizeof message, "node %s %.64s", t->node, class_of(t, t->node));
    kiln_connector_sanitize_text(message, strlen(message));
    kiln_comfyui_track_report(t, overall(t), message);
}

/* execution_error's data (or a history message's): the node, the exception. */
static void record_error(comfyui_track_t *t, const json_t *data)
{
    const char *node = json_string_value(json_object_get(data, "node_id"));
    const char *type = json_string_value(json_object_get(data, "node_type"));
    const char *exc = json_string_value(json_object_get(data, "exception_type"));
    const char *text = json_string_value(json_object_get(data, "exception_message"));
    snprintf(t->error, sizeof t->error, "ComfyUI failed at node %.64s %.64s: %.64s%s%.400s",
             node ? node : "?", type ? type : (node ? class_of(t, node) : "?"), exc ? exc : "error",
             text ? ": " : "", text ? text : "");
    kiln_connector_sanitize_text(t->error, strlen(t->error));
    for (char *p = t->error; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    /* Running out of GPU memory may pass on another try (or another GPU);
     * a broken workflow will fail the same way again. */
    t->retryable =
        (exc && strstr(exc, "OutOfMemory")) || (text && strcasestr(text, "out of memory"));
    t->failed = true;
}

static void record_interrupted(comfyui_track_t *t, const json_t *data)
{
    const char *node = json_string_value(json_object_get(data, "node_id"));
    snprintf(t->error, sizeof t->error,
             "the prompt was interrupted on ComfyUI (at node %.64s) by someone else; it may be "
             "run again",
             node ? node : "?");
    t->retryable = true;
    t->failed = true;
}

/* "executing": a new node starts (the previous one is done), or node null:
 * the prompt is done. */
static void on_executing(comfyui_track_t *t, const json_t *data)
{
    json_t *node = json_object_get(data, "node");
    if (json_is_null(node)) {
        t->finished = true;
        return;
    }
    const char *id = json_string_value(node);
    if (!id || strcmp(id, t->node) == 0)
        return;
    if (t->node[0])
        t->done++;
    t->started = true;
    snprintf(t->node, sizeof t->node, "%s", id);
    t->value = t->max = 0;
    report_node(t);
}

static void on_progress(comfyui_track_t *t, const json_t *data)
{
    json_t *value = json_object_get(data, "value"), *max = json_object_get(data, "max");
    const char *node = json_string_value(json_object_get(data, "node"));
    if (!json_is_integer(value) || !json_is_integer(max) || json_integer_value(max) <= 0)
        return;
    if (node && strcmp(node, t->node) != 0) {
        if (t->node[0])
            t->done++;
        snprintf(t->node, sizeof t->node, "%s", node);
    }
    t->value = (long)json_integer_value(value);
    t->max = (long)json_integer_value(max);
    if (t->node[0])
        report_node(t);
}

void kiln_comfyui_track_message(comfyui_track_t *t, const char *text)
{
    json_t *msg = json_loads(text, 0, NULL);
    const char *type = json_string_value(json_object_get(msg, "type"));
    json_t *data = json_object_get(msg, "data");
    const char *prompt_id = json_string_value(json_object_get(data, "prompt_id"));
    /* "progress" carried no prompt_id in older ComfyUI; the rest do. */
    bool ours = prompt_id ? strcmp(prompt_id, t->prompt_id) == 0
                          : type && strcmp(type, "progress") == 0 && t->started;
    if (!type || !json_is_object(data) || !ours) {
        json_decref(msg);
        return;
    }
    if (strcmp(type, "execution_start") == 0) {
        t->started = true;
        kiln_comfyui_track_report(t, overall(t), "started");
    } else if (strcmp(type, "execution_cached") == 0) {
        t->cached += json_array_size(json_object_get(data, "nodes"));
    } else if (strcmp(type, "executing") == 0) {
        on_executing(t, data);
    } else if (strcmp(type, "progress") == 0) {
        on_progress(t, data);
    } else if (strcmp(type, "execution_success") == 0) {
        t->finished = true;
    } else if (strcmp(type, "execution_error") == 0) {
        record_error(t, data);
    } else if (strcmp(type, "execution_interrupted") == 0) {
        record_interrupted(t, data);
    }
    json_decref(msg);
}

/* A history entry that ended in an error: its execution_error message. */
static void history_error(comfyui_track_t *t, const json_t *status)
{
    json_t *messages = json_object_get(status, "messages"), *item;
    size_t i;
    json_array_foreach(messages, i, item)
    {
        const char *kind = json_string_value(json_array_get(item, 0));
        json_t *data = json_array_get(item, 1);
        if (kind && strcmp(kind, "execution_error") == 0 && json_is_object(data)) {
            record_error(t, data);
            return;
        }
        if (kind && strcmp(kind, "execution_interrupted") == 0 && json_is_object(data)) {
            record_interrupted(t, data);
            return;
        }
    }
    snprintf(t->error, sizeof t->error, "ComfyUI reports the prompt failed (no details given)");
    t->retryable = false;
    t->failed = true;
}

int kiln_comfyui_track_history(comfyui_track_t *t, const json_t *doc, const json_t **entry)
{
    *entry = NULL;
    if (!json_is_object(doc)) {
        snprintf(t->error, sizeof t->error, "GET /history: the answer is not a JSON object");
        return KILN_EINVAL;
    }
    json_t *found = json_object_get(doc, t->prompt_id);
    if (!found)
        return 0;
    json_t *status = json_object_get(found, "status");
    json_t *outputs = json_object_get(found, "outputs");
    if (!json_is_object(found) || (outputs && !json_is_object(outputs)) ||
        (status && !json_is_object(status))) {
        snprintf(t->error, sizeof t->error,
                 "GET /history: the entry of prompt %s has no outputs object", t->prompt_id);
        return KILN_EINVAL;
    }
    const char *status_str = json_string_value(json_object_get(status, "status_str"));
    if (status_str && strcmp(status_str, "error") == 0) {
        history_error(t, status);
        return 1;
    }
    /* Older ComfyUI wrote no status; an entry there was a finished run. */
    if (status && !json_is_true(json_object_get(status, "completed")) && !status_str)
        return 0;
    if (!outputs) {
        snprintf(t->error, sizeof t->error,
                 "GET /history: the entry of prompt %s has no outputs object", t->prompt_id);
        return KILN_EINVAL;
    }
    *entry = found;
    return 1;
}
