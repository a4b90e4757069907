/*
 * The comfyui connector against fake_comfyui (tests/fakes/fake_comfyui.c),
 * a real HTTP and WebSocket server in a child process that follows
 * ComfyUI's API and injects faults chosen by a KilnFakeFault node of the
 * workflow. Each test starts its own fake, so its counters start at zero.
 */
#include "kiln/connector.h"
#include "kiln_test.h"
#include "kiln_test_connector.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[256];
static int test_seq;

/* ---- the fake server --------------------------------------------------------- */

static int fake_start_with(void **state, char *ws_mode)
{
    static kiln_test_fake_t fake;
    char log[320], *args[] = {"--ws", ws_mode, NULL};
    snprintf(log, sizeof log, "%s/fake-%02d.log", tmp_root, ++test_seq);
    kiln_test_fake_start(&fake, "fake_comfyui", args, log);
    *state = &fake;
    return 0;
}

static int fake_start(void **state)
{
    return fake_start_with(state, "ok");
}

static int fake_start_refusing_sockets(void **state)
{
    return fake_start_with(state, "refuse");
}

static int fake_start_dropping_sockets(void **state)
{
    return fake_start_with(state, "drop");
}

static int fake_stop(void **state)
{
    kiln_test_fake_stop(*state);
    return 0;
}

typedef struct stat_cond {
    const kiln_test_fake_t *f;
    const char *name;
    long at_least;
} stat_cond_t;

static bool stat_reached(void *ctx)
{
    stat_cond_t *c = ctx;
    return kiln_test_fake_stat(c->f, c->name) >= c->at_least;
}

/* ---- the connector ----------------------------------------------------------- */

/* A comfyui connector for the fake, overridden and extended by extra (JSON
 * text, may be NULL). */
static kiln_connector_t *connector_for(const kiln_test_fake_t *f, const char *extra)
{
    json_t *options =
        json_pack("{s:s, s:i, s:i}", "base_url", f->url, "max_retries", 2, "poll_max_ms", 200);
    return kiln_test_connector_extended("comfyui", "comfyui", options, extra);
}

/* A connector saving under a fresh outputs folder (its path into dir). */
static kiln_connector_t *connector_with_outputs(const kiln_test_fake_t *f, char *dir, size_t size,
                                                const char *more)
{
    snprintf(dir, size, "%s/outputs-%02d", tmp_root, test_seq);
    assert_int_equal(mkdir(dir, 0755), 0);
    char options[800];
    snprintf(options, sizeof options, "{\"outputs_dir\": \"%s\"%s%s}", dir, more ? ", " : "",
             more ? more : "");
    return connector_for(f, options);
}

/* Cancels once a progress message holds after (and, when go is set, it is non-zero). */
typedef struct cancel_at {
    const char *after;
    const atomic_int *go;
} cancel_at_t;

static bool progress_said(const kiln_test_job_t *j, void *ctx)
{
    const cancel_at_t *at = ctx;
    return kiln_test_job_progress_mentions(j, at->after) && (!at->go || atomic_load(at->go));
}

static void run_job(kiln_connector_t *c, const char *payload, kiln_test_job_t *r)
{
    kiln_test_job_run(c, "comfyui.1", payload, 0, 0, r);
}

/* A text-to-image workflow in API format (as "Save (API Format)" writes
 * it), with an optional fault node. */
static char *workflow_payload(int steps, const char *fault, const char *extra)
{
    char *text = NULL;
    char fault_node[160] = "";
    if (fault)
        snprintf(fault_node, sizeof fault_node,
                 ",\"99\":{\"class_type\":\"KilnFakeFault\",\"inputs\":{\"mode\":\"%s\"}}", fault);
    int n = asprintf(
        &text,
        "{\"workflow\":{"
        "\"4\":{\"class_type\":\"CheckpointLoaderSimple\",\"inputs\":{\"ckpt_name\":\"sd15."
        "safetensors\"}},"
        "\"6\":{\"class_type\":\"CLIPTextEncode\",\"inputs\":{\"text\":\"a "
        "kiln\",\"clip\":[\"4\",1]}},"
        "\"3\":{\"class_type\":\"KSampler\",\"inputs\":{\"seed\":1,\"steps\":%d,\"cfg\":7,"
        "\"model\":[\"4\",0],\"positive\":[\"6\",0]}},"
        "\"8\":{\"class_type\":\"VAEDecode\",\"inputs\":{\"samples\":[\"3\",0],\"vae\":[\"4\",2]}},"
        "\"9\":{\"class_type\":\"SaveImage\",\"inputs\":{\"filename_prefix\":\"kiln\","
        "\"images\":[\"8\",0]}}%s}%s}",
        steps, fault_node, extra ? extra : "");
    assert_true(n > 0);
    return text;
}

/* Runs one job of workflow_payload(steps, fault, extra) through a fresh
 * connector for the fake into r (kiln_test_job_clear it). */
static void run_workflow(const kiln_test_fake_t *f, int steps, const char *fault, const char *extra,
                         kiln_test_job_t *r)
{
    kiln_connector_t *c = connector_for(f, NULL);
    char *payload = workflow_payload(steps, fault, extra);
    run_job(c, payload, r);
    free(payload);
    kiln_connector_free(c);
}

/* ---- tests ------------------------------------------------------------------- */

static void runs_a_workflow_reporting_node_progress_and_saves_the_output(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300];
    kiln_connector_t *c = connector_with_outputs(f, outputs, sizeof outputs, NULL);
    char *payload = workflow_payload(8, NULL, NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "comfyui.42", payload, 0, 0, &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "progress"), "websocket");
    assert_true(strlen(kiln_test_json_str(r.result, "prompt_id")) > 0);

    /* Node by node, the sampler step by step; never backwards, below 100
     * until the output is saved. 4 of the 5 nodes run (the loader is cached). */
    assert_true(kiln_test_job_progress_mentions(&r, "node 3 KSampler: step 4/8"));
    assert_true(kiln_test_job_progress_mentions(&r, "node 9 SaveImage"));
    for (int i = 0; i < atomic_load(&r.progress_count); i++)
        if (strcmp(r.messages[i], "node 9 SaveImage") == 0)
            assert_true(r.percents[i] == 75.0); /* 3 of 4 done */
    int n = atomic_load(&r.progress_count);
    assert_true(n >= 10);
    for (int i = 1; i < n; i++)
        assert_true(r.percents[i] >= r.percents[i - 1]);
    for (int i = 0; i < n - 1; i++)
        assert_true(r.percents[i] < 100.0);
    assert_true(r.percents[n - 1] == 100.0);
    for (int i = 0; i < n; i++)
        if (strcmp(r.messages[i], "node 3 KSampler: step 4/8") == 0) {
            /* The first of 4 nodes to run (3, 6, 8, 9) half way: 0.5 / 4. */
            if (r.percents[i] < 12.4 || r.percents[i] > 12.6)
                fail_msg("step 4/8 of the second of 4 nodes reported %.2f%%", r.percents[i]);
        }

    json_t *list = json_object_get(r.result, "outputs");
    assert_int_equal(json_array_size(list), 1);
    json_t *item = json_array_get(list, 0);
    assert_string_equal(kiln_test_json_str(item, "node"), "9");
    assert_string_equal(kiln_test_json_str(item, "kind"), "images");
    assert_string_equal(kiln_test_json_str(item, "filename"), "kiln_00000_.png");
    assert_string_equal(kiln_test_json_str(item, "type"), "output");
    char want[600];
    snprintf(want, sizeof want, "%s/view?filename=kiln_00000_.png&subfolder=&type=output", f->url);
    assert_string_equal(kiln_test_json_str(item, "url"), want);
    snprintf(want, sizeof want, "%s/comfyui.42/kiln_00000_.png", outputs);
    assert_string_equal(kiln_test_json_str(item, "path"), want);
    assert_int_equal(json_integer_value(json_object_get(item, "bytes")), 2048);
    struct stat st;
    assert_int_equal(stat(want, &st), 0);
    assert_int_equal(st.st_size, 2048);
    char *bytes = kiln_test_slurp(want, 4096);
    assert_memory_equal(bytes, "\x89PNG\r\n\x1a\n", 8);
    free(bytes);
    snprintf(want, sizeof want, "%s/comfyui.42/kiln_00000_.png.tmp", outputs);
    assert_int_not_equal(access(want, F_OK), 0); /* renamed into place */
    assert_int_equal(kiln_test_fake_stat(f, "ws_connects"), 1);
    assert_int_equal(kiln_test_fake_stat(f, "view_requests"), 1);
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

static void inputs_override_the_workflow(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 2, NULL, ",\"inputs\":{\"9.filename_prefix\":\"override\"}", &r);
    kiln_test_expect_completed(&r);
    json_t *item = json_array_get(json_object_get(r.result, "outputs"), 0);
    assert_string_equal(kiln_test_json_str(item, "filename"), "override_00000_.png");
    /* Without outputs_dir the outputs are listed, not fetched. */
    assert_null(json_object_get(item, "path"));
    assert_int_equal(kiln_test_fake_stat(f, "view_requests"), 0);
    kiln_test_job_clear(&r);
}

static void retries_429_honouring_retry_after(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 2, "429-then-ok", NULL, &r);
    kiln_test_expect_completed(&r);
    /* Retry-After: 1 is longer than the first backoff (at most 250 ms). */
    if (r.elapsed_ms < 950)
        fail_msg("retried after %lld ms; Retry-After asked for 1 s", (long long)r.elapsed_ms);
    assert_int_equal(kiln_test_fake_stat(f, "prompts"), 1);
    kiln_test_job_clear(&r);
}

static void retries_500_then_succeeds(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 2, "500-then-ok", NULL, &r);
    kiln_test_expect_completed(&r);
    assert_int_equal(kiln_test_fake_stat(f, "prompts"), 1);
    kiln_test_job_clear(&r);
}

static void timeout_interrupts_the_prompt_and_fails_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    char *payload = workflow_payload(20, "slow", NULL);
    /* The job's timeout. */
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "comfyui.2", payload, 700, 0, &r);
    kiln_test_expect_failed(&r, true, "timed out after 700 ms");
    assert_true(r.elapsed_ms >= 700 && r.elapsed_ms < 5000);
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 1); /* the GPU is not left busy */
    kiln_test_job_clear(&r);
    kiln_connector_free(c);

    /* The option's, when the job sets none. */
    c = connector_for(f, "{\"timeout_ms\": 500}");
    run_job(c, payload, &r);
    kiln_test_expect_failed(&r, true, "timed out after 500 ms");
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 2);
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

static void malformed_response_fails_not_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 2, "malformed", NULL, &r);
    kiln_test_expect_failed(&r, false, "no usable prompt_id");
    kiln_test_job_clear(&r);
}

static void connection_refused_fails_retryable(void **state)
{
    /* A port that was free a moment ago: nothing listens there. */
    kiln_test_fake_t nowhere = {.port = kiln_test_free_port()};
    snprintf(nowhere.url, sizeof nowhere.url, "http://127.0.0.1:%d", nowhere.port);
    kiln_connector_t *c = connector_for(&nowhere, "{\"max_retries\": 1}");
    char *payload = workflow_payload(2, NULL, NULL);
    kiln_test_job_t r;
    run_job(c, payload, &r);
    kiln_test_expect_failed(&r, true, "127.0.0.1");
    assert_true(r.elapsed_ms < 5000);
    kiln_err_t err = {0};
    assert_int_not_equal(kiln_connector_health(c, &err), 0);
    assert_non_null(strstr(err.msg, "/system_stats"));
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

static void cancel_mid_job_interrupts_comfyui(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    char *payload = workflow_payload(20, "slow", NULL);
    cancel_at_t at = {"step 3/20", NULL};
    kiln_test_job_t r;
    kiln_test_job_run_cancelling(c, "comfyui.7", payload, 0, progress_said, &at, &r);
    assert_int_equal(r.out.status, KILN_OUTCOME_CANCELLED);
    int64_t reaction = r.finished_at_ms - r.cancelled_at_ms;
    if (reaction > 1000)
        fail_msg("run() returned %lld ms after the cancel", (long long)reaction);
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 1);
    assert_int_equal(kiln_test_fake_stat(f, "queue_deletes"), 0);
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

typedef struct background {
    kiln_connector_t *c;
    const char *payload;
    cancel_at_t at;
    kiln_test_job_t r;
    pthread_t thread;
} background_t;

static void *background_main(void *ctx)
{
    background_t *b = ctx;
    kiln_test_job_run_cancelling(b->c, "comfyui.busy", b->payload, 0, progress_said, &b->at, &b->r);
    return NULL;
}

static void cancel_while_queued_deletes_the_prompt(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    char *slow = workflow_payload(20, "slow", NULL);
    char *payload = workflow_payload(2, NULL, NULL);
    /* Another job holds ComfyUI (until ours is done); ours waits in its queue. */
    static atomic_int ours_done;
    atomic_store(&ours_done, 0);
    background_t busy = {.c = c, .payload = slow, .at = {"step 5/20", &ours_done}};
    assert_int_equal(pthread_create(&busy.thread, NULL, background_main, &busy), 0);
    stat_cond_t posted = {f, "prompts", 1};
    assert_true(kiln_test_wait_until(stat_reached, &posted, 10000));
    cancel_at_t at = {"queued", NULL};
    kiln_test_job_t r;
    kiln_test_job_run_cancelling(c, "comfyui.8", payload, 0, progress_said, &at, &r);
    atomic_store(&ours_done, 1);
    assert_int_equal(r.out.status, KILN_OUTCOME_CANCELLED);
    assert_int_equal(kiln_test_fake_stat(f, "queue_deletes"), 1);
    pthread_join(busy.thread, NULL);
    assert_int_equal(busy.r.out.status, KILN_OUTCOME_CANCELLED);
    assert_int_equal(kiln_test_fake_stat(f, "interrupts"), 1); /* the running one only */
    kiln_test_job_clear(&busy.r);
    kiln_test_job_clear(&r);
    free(payload);
    free(slow);
    kiln_connector_free(c);
}

static void node_errors_400_names_the_node_and_is_not_retried(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 0, NULL, NULL, &r);
    kiln_test_expect_failed(&r, false, "node 3 KSampler: Value smaller than min: steps: 0 < 1");
    assert_non_null(strstr(r.out.error, "Prompt outputs failed validation"));
    assert_int_equal(kiln_test_fake_stat(f, "prompts"), 0);
    kiln_test_job_clear(&r);
}

static void execution_error_fails_naming_the_node(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 8, "execution-error", NULL, &r);
    kiln_test_expect_failed(&r, false, "node 3 KSampler: RuntimeError: Expected all tensors");
    kiln_test_job_clear(&r);
}

static void falls_back_to_polling_when_the_socket_is_refused(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300];
    kiln_connector_t *c = connector_with_outputs(f, outputs, sizeof outputs, NULL);
    char *payload = workflow_payload(8, NULL, NULL);
    kiln_test_job_t r;
    run_job(c, payload, &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "progress"), "polling");
    assert_true(kiln_test_job_progress_mentions(&r, "progress socket unavailable"));
    assert_true(kiln_test_fake_stat(f, "history_requests") >= 1);
    json_t *item = json_array_get(json_object_get(r.result, "outputs"), 0);
    assert_int_equal(access(kiln_test_json_str(item, "path"), R_OK), 0);
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

static void falls_back_to_polling_when_the_socket_drops(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 30, NULL, NULL, &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "progress"), "polling");
    assert_true(kiln_test_job_progress_mentions(&r, "step 1/30"));
    assert_true(kiln_test_job_progress_mentions(&r, "progress socket lost"));
    assert_int_equal(kiln_test_fake_stat(f, "ws_connects"), 1);
    kiln_test_job_clear(&r);
}

static void junk_and_oversized_socket_messages_fall_back_to_polling(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_test_job_t r;
    run_workflow(f, 4, "noise", NULL, &r);
    kiln_test_expect_completed(&r);
    assert_string_equal(kiln_test_json_str(r.result, "progress"), "polling");
    assert_true(kiln_test_job_progress_mentions(&r, "larger than 1 MiB"));
    kiln_test_job_clear(&r);
}

static void hostile_output_names_stay_in_the_outputs_folder(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300];
    kiln_connector_t *c = connector_with_outputs(f, outputs, sizeof outputs, NULL);
    char *payload = workflow_payload(2, "hostile-names", NULL);
    kiln_test_job_t r;
    kiln_test_job_run(c, "../../comfyui.9", payload, 0, 0, &r);
    kiln_test_expect_completed(&r);
    json_t *item = json_array_get(json_object_get(r.result, "outputs"), 0);
    assert_string_equal(kiln_test_json_str(item, "filename"), "../../escape.png");
    char want[600];
    snprintf(want, sizeof want, "%s/_._.._comfyui.9/escape.png", outputs);
    assert_string_equal(kiln_test_json_str(item, "path"), want);
    assert_int_equal(access(want, R_OK), 0);
    snprintf(want, sizeof want, "%s/../escape.png", outputs);
    assert_int_not_equal(access(want, F_OK), 0);
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

static void output_over_max_output_bytes_fails_not_retryable(void **state)
{
    kiln_test_fake_t *f = *state;
    char outputs[300];
    kiln_connector_t *c =
        connector_with_outputs(f, outputs, sizeof outputs, "\"max_output_bytes\": 1024");
    char *payload = workflow_payload(2, NULL, NULL);
    kiln_test_job_t r;
    run_job(c, payload, &r);
    kiln_test_expect_failed(&r, false, "connectors.comfyui.max_output_bytes (1024)");
    kiln_test_job_clear(&r);
    free(payload);
    kiln_connector_free(c);
}

static void health_reads_system_stats(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    kiln_err_t err = {0};
    if (kiln_connector_health(c, &err) != 0)
        fail_msg("health: %s", err.msg);
    kiln_connector_free(c);
}

static void bad_payloads_are_refused_naming_the_field(void **state)
{
    kiln_test_fake_t *f = *state;
    kiln_connector_t *c = connector_for(f, NULL);
    const struct {
        const char *payload, *needle;
    } bad[] = {
        {"[1, 2]", "payload: expected a JSON object"},
        {"{not json", "payload: expected a JSON object"},
        {"{}", "payload.workflow: expected a workflow in API format"},
        {"{\"workflow\": \"a cat\"}", "payload.workflow: expected"},
        {"{\"workflow\": {}}", "payload.workflow: expected 1-5000 nodes, got 0"},
        {"{\"workflow\": {\"nodes\": [], \"links\": []}}", "Save (API Format)"},
        {"{\"workflow\": {\"3\": {\"inputs\": {}}}}", "payload.workflow[\"3\"]: expected a node"},
        {"{\"workflow\": {\"3\": {\"class_type\": \"X\", \"inputs\": 5}}}",
         "payload.workflow[\"3\"]"},
        {"{\"workflow\": {\"3\": {\"class_type\": \"X\"}}, \"inputs\": [1]}",
         "payload.inputs: expected an object"},
        {"{\"workflow\": {\"3\": {\"class_type\": \"X\"}}, \"inputs\": {\"7.seed\": 1}}",
         "payload.inputs[\"7.seed\"]: expected \"<node id>.<input name>\""},
        {"{\"workflow\": {\"3\": {\"class_type\": \"X\"}}, \"inputs\": {\"seed\": 1}}",
         "payload.inputs[\"seed\"]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_test_job_t r;
        run_job(c, bad[i].payload, &r);
        kiln_test_expect_failed(&r, false, bad[i].needle);
        kiln_test_job_clear(&r);
    }
    assert_int_equal(kiln_test_fake_stat(f, "prompts"), 0);
    /* A hostile, oversized workflow is refused before it is sent. */
    json_t *huge = json_object();
    for (int i = 0; i < 5001; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        json_object_set_new(huge, id, json_pack("{s:s, s:{}}", "class_type", "X", "inputs"));
    }
    json_t *payload = json_pack("{s:o}", "workflow", huge);
    char *text = json_dumps(payload, JSON_COMPACT);
    kiln_test_job_t r;
    run_job(c, text, &r);
    kiln_test_expect_failed(&r, false, "payload.workflow: expected 1-5000 nodes, got 5001");
    kiln_test_job_clear(&r);
    free(text);
    json_decref(payload);
    kiln_connector_free(c);
}

static void bad_options_are_refused_naming_them(void **state)
{
    const struct {
        const char *options, *needle;
    } bad[] = {
        {"{\"base_url\": \"ftp://example.com\"}", "connectors.comfyui.base_url"},
        {"{\"url\": 42}", "connectors.comfyui.url"},
        {"{\"timeout_ms\": 0}", "connectors.comfyui.timeout_ms: expected an integer"},
        {"{\"request_timeout_ms\": \"soon\"}", "connectors.comfyui.request_timeout_ms"},
        {"{\"max_retries\": 99}", "connectors.comfyui.max_retries"},
        {"{\"max_output_bytes\": 5}", "connectors.comfyui.max_output_bytes"},
        {"{\"poll_max_ms\": 1}", "connectors.comfyui.poll_max_ms"},
        {"{\"outputs_dir\": \"relative\"}", "connectors.comfyui.outputs_dir"},
        {"{\"outputs_dir\": \"/no/such/folder\"}", "connectors.comfyui.outputs_dir"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[KILN_ERR_MSG_MAX];
        kiln_test_expect_refused("comfyui", "comfyui", bad[i].options, bad[i].needle, msg,
                                 sizeof msg);
    }
    /* No options at all: the default local ComfyUI. */
    kiln_connector_config_t cfg = {.name = "comfyui", .type = "comfyui", .options = NULL};
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_new(&cfg, &c, &err), 0);
    kiln_connector_free(c);
}

/* ---- main -------------------------------------------------------------------- */

#define WITH_FAKE(test) cmocka_unit_test_setup_teardown(test, fake_start, fake_stop)

int main(void)
{
    kiln_test_tmpdir(tmp_root, sizeof tmp_root);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        WITH_FAKE(runs_a_workflow_reporting_node_progress_and_saves_the_output),
        WITH_FAKE(inputs_override_the_workflow),
        WITH_FAKE(retries_429_honouring_retry_after),
        WITH_FAKE(retries_500_then_succeeds),
        WITH_FAKE(timeout_interrupts_the_prompt_and_fails_retryable),
        WITH_FAKE(malformed_response_fails_not_retryable),
        cmocka_unit_test(connection_refused_fails_retryable),
        WITH_FAKE(cancel_mid_job_interrupts_comfyui),
        WITH_FAKE(cancel_while_queued_deletes_the_prompt),
        WITH_FAKE(node_errors_400_names_the_node_and_is_not_retried),
        WITH_FAKE(execution_error_fails_naming_the_node),
        cmocka_unit_test_setup_teardown(falls_back_to_polling_when_the_socket_is_refused,
                                        fake_start_refusing_sockets, fake_stop),
        cmocka_unit_test_setup_teardown(falls_back_to_polling_when_the_socket_drops,
                                        fake_start_dropping_sockets, fake_stop),
        WITH_FAKE(junk_and_oversized_socket_messages_fall_back_to_polling),
        WITH_FAKE(hostile_output_names_stay_in_the_outputs_folder),
        WITH_FAKE(output_over_max_output_bytes_fails_not_retryable),
        WITH_FAKE(health_reads_system_stats),
        WITH_FAKE(bad_payloads_are_refused_naming_the_field),
        cmocka_unit_test(bad_options_are_refused_naming_them),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (failed == 0) { /* on a failure the fakes' logs stay for a look */
        char *rm[] = {"/bin/rm", "-rf", tmp_root, NULL};
        kiln_test_run(rm, NULL, NULL, 0);
    }
    return failed;
}
