/*
 * The render connector against the real ffmpeg and ffprobe (Debian's): the
 * tests make their own audio with ffmpeg, render it, and check the file
 * with ffprobe. Renders are small (320x240) except one 2 s 1080p render.
 * Slow renders for cancel and timeout use ffmpeg's -re (read the input at
 * its real speed), so they last as long as the audio, not as long as the
 * machine happens to need.
 */
#include "kiln/connector.h"
#include "kiln/log.h"
#include "kiln_test.h"

#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REPORTS 512

/* ---- fixtures ------------------------------------------------------------------ */

static char root[256];        /* per group: the audio files */
static char short_wav[320];   /* 3 s */
static char two_s_wav[320];   /* 2 s */
static char long_wav[320];    /* 30 s, for renders that are stopped */
static char outside_wav[320]; /* outside every test's inputs folder */

typedef struct fixture {
    char dir[256];
    char inputs[320];
    char outputs[320];
} fixture_t;

typedef struct progress_log {
    pthread_mutex_t lock;
    int count;
    double percents[MAX_REPORTS];
    char last_message[96];
} progress_log_t;

static void record_progress(void *ctx, double percent, const char *message)
{
    progress_log_t *p = ctx;
    pthread_mutex_lock(&p->lock);
    if (p->count < MAX_REPORTS)
        p->percents[p->count++] = percent;
    snprintf(p->last_message, sizeof p->last_message, "%s", message ? message : "");
    pthread_mutex_unlock(&p->lock);
}

static void make_audio(const char *path, int seconds)
{
    char source[64];
    snprintf(source, sizeof source, "sine=frequency=440:duration=%d", seconds);
    char *argv[] = {
        "/usr/bin/ffmpeg", "-hide_banner", "-loglevel", "error",      "-nostdin", "-y", "-f",
        "lavfi",           "-i",           source,      (char *)path, NULL};
    assert_int_equal(kiln_test_run(argv, NULL, NULL, 0), 0);
}

static int group_setup(void **state)
{
    kiln_test_tmpdir(root, sizeof root);
    snprintf(short_wav, sizeof short_wav, "%s/short.wav", root);
    snprintf(two_s_wav, sizeof two_s_wav, "%s/two.wav", root);
    snprintf(long_wav, sizeof long_wav, "%s/long.wav", root);
    snprintf(outside_wav, sizeof outside_wav, "%s/outside.wav", root);
    make_audio(short_wav, 3);
    make_audio(two_s_wav, 2);
    make_audio(long_wav, 30);
    make_audio(outside_wav, 1);
    return 0;
}

static void remove_tree(const char *path)
{
    char *argv[] = {"/bin/rm", "-rf", (char *)path, NULL};
    kiln_test_run(argv, NULL, NULL, 0);
}

static int group_teardown(void **state)
{
    remove_tree(root);
    return 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    kiln_test_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->inputs, sizeof f->inputs, "%s/inputs", f->dir);
    snprintf(f->outputs, sizeof f->outputs, "%s/outputs", f->dir);
    assert_int_equal(mkdir(f->inputs, 0755), 0);
    char inside[400];
    snprintf(inside, sizeof inside, "%s/a.wav", f->inputs);
    char *cp[] = {"/bin/cp", short_wav, inside, NULL};
    assert_int_equal(kiln_test_run(cp, NULL, NULL, 0), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    remove_tree(f->dir);
    free(f);
    return 0;
}

static int render_new(const fixture_t *f, json_t *options, kiln_connector_t **c, kiln_err_t *err)
{
    if (!json_object_get(options, "outputs_dir"))
        json_object_set_new(options, "outputs_dir", json_string(f->outputs));
    kiln_connector_config_t cfg = {.name = "render", .type = "render", .options = options};
    int rc = kiln_connector_new(&cfg, c, err);
    json_decref(options);
    return rc;
}

/* A render connector from options (stolen), outputs in the fixture's folder. */
static kiln_connector_t *make_render(const fixture_t *f, json_t *options)
{
    assert_non_null(options);
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    if (render_new(f, options, &c, &err) != 0)
        fail_msg("render init: %s", err.msg);
    return c;
}

/* The default template, with the program given by path and, when realtime
 * is set, -re before -i so a render takes as long as its input plays. */
static json_t *template_command(const char *program, bool realtime)
{
    json_t *argv = json_pack("[sssss]", program, "-hide_banner", "-nostdin", "-y", "-re");
    if (!realtime)
        json_array_remove(argv, 4);
    json_t *rest =
        json_pack("[sssssssssssssss]", "-i", "{input}", "-filter_complex",
                  "[0:a]showwaves=s={width}x{height}:r={fps}:mode=line,format=yuv420p[v]", "-map",
                  "[v]", "-map", "0:a", "{codec_args}", "-shortest", "-progress", "pipe:1", "-f",
                  "{format}", "{output}");
    json_array_extend(argv, rest);
    json_decref(rest);
    return argv;
}

static json_t *realtime_command(void)
{
    return template_command("ffmpeg", true);
}

typedef struct canceller {
    atomic_int flag;
    int fd;
    progress_log_t *progress;
    int64_t fired_at_ms;
    pthread_t thread;
} canceller_t;

/* Beyond the "starting" report: ffmpeg itself has reported progress. */
static bool ffmpeg_reported(void *ctx)
{
    canceller_t *c = ctx;
    pthread_mutex_lock(&c->progress->lock);
    int n = c->progress->count;
    pthread_mutex_unlock(&c->progress->lock);
    return n >= 2;
}

static void *cancel_main(void *ctx)
{
    canceller_t *c = ctx;
    kiln_test_wait_until(ffmpeg_reported, c, 30000);
    c->fired_at_ms = kiln_test_now_ms();
    atomic_store(&c->flag, 1);
    uint64_t one = 1;
    ssize_t n = write(c->fd, &one, sizeof one);
    (void)n;
    return NULL;
}

static kiln_job_outcome_t run_full(kiln_connector_t *c, const char *payload, progress_log_t *p,
                                   canceller_t *cancel)
{
    static atomic_int never = 0;
    kiln_job_context_t job = {
        .job_id = "render.1",
        .service = "render",
        .payload_json = payload,
        .attempt = 1,
        .progress = p ? record_progress : NULL,
        .progress_ctx = p,
        .cancel = cancel ? &cancel->flag : &never,
        .cancel_fd = cancel ? cancel->fd : -1,
    };
    kiln_job_outcome_t out;
    assert_int_equal(kiln_connector_run(c, &job, &out), 0);
    return out;
}

static kiln_job_outcome_t run_job(kiln_connector_t *c, json_t *payload)
{
    char *text = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    kiln_job_outcome_t out = run_full(c, text, NULL, NULL);
    free(text);
    return out;
}

static void assert_contains(const char *text, const char *needle)
{
    if (!text || !strstr(text, needle))
        fail_msg("\"%s\" does not contain \"%s\"", text ? text : "(null)", needle);
}

static void assert_failed(const kiln_job_outcome_t *out, bool retryable, const char *needle)
{
    if (out->status != KILN_OUTCOME_FAILED)
        fail_msg("expected a failure containing \"%s\", got status %d (%s)", needle, out->status,
                 out->result_json ? out->result_json : "");
    assert_contains(out->error, needle);
    if (out->retryable != retryable)
        fail_msg("\"%s\": expected retryable=%d", out->error, retryable);
}

/* Fails the test, listing them, when dir holds any entry (a temp file). */
static void assert_dir_empty(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    char names[512] = "";
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            snprintf(names + strlen(names), sizeof names - strlen(names), " %s", e->d_name);
    }
    closedir(d);
    if (names[0])
        fail_msg("%s is not empty:%s", dir, names);
}

/* True when no live process has text in its command line. */
static bool no_process_mentions(void *ctx)
{
    const char *text = ctx;
    DIR *d = opendir("/proc");
    bool none = true;
    for (struct dirent *e; d && none && (e = readdir(d));) {
        char path[300], buf[8192] = "";
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        FILE *fp = fopen(path, "r");
        size_t n = fp ? fread(buf, 1, sizeof buf - 1, fp) : 0;
        if (fp)
            fclose(fp);
        for (size_t i = 0; i < n; i++)
            buf[i] = buf[i] ? buf[i] : ' ';
        buf[n] = '\0';
        none = !strstr(buf, text); /* a zombie's cmdline is empty */
    }
    if (d)
        closedir(d);
    return none;
}

static json_t *result_of(const kiln_job_outcome_t *out)
{
    if (out->status != KILN_OUTCOME_COMPLETED)
        fail_msg("expected completed, got status %d: %s", out->status,
                 out->error ? out->error : "");
    json_t *result = json_loads(out->result_json, 0, NULL);
    assert_non_null(result);
    return result;
}

/* Checks with ffprobe that path has a video stream of width x height. */
static void assert_video_size(const char *path, int width, int height)
{
    char *argv[] = {
        "/usr/bin/ffprobe",    "-v",  "error",   "-select_streams", "v:0", "-show_entries",
        "stream=width,height", "-of", "csv=p=0", (char *)path,      NULL};
    char got[128] = "", want[64];
    assert_int_equal(kiln_test_run(argv, NULL, got, sizeof got), 0);
    got[strcspn(got, "\n")] = '\0';
    snprintf(want, sizeof want, "%d,%d", width, height);
    assert_string_equal(got, want);
}

/* ---- rendering -------------------------------------------------------------------- */

static void renders_a_video_from_audio_with_progress_to_100(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(f, json_object());
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    char *payload = NULL;
    assert_true(asprintf(&payload,
                         "{\"input\": \"%s\", \"width\": 320, \"height\": 240, \"fps\": 25, "
                         "\"format\": \"mp4\", \"output_name\": \"clip\"}",
                         short_wav) > 0);
    kiln_job_outcome_t out = run_full(c, payload, &p, NULL);
    json_t *result = result_of(&out);

    char expected[400];
    snprintf(expected, sizeof expected, "%s/clip.mp4", f->outputs);
    char resolved[PATH_MAX];
    assert_non_null(realpath(expected, resolved));
    assert_string_equal(json_string_value(json_object_get(result, "output")), resolved);
    struct stat sb;
    assert_int_equal(stat(resolved, &sb), 0);
    assert_true(sb.st_size > 0);
    assert_int_equal(json_integer_value(json_object_get(result, "bytes")), sb.st_size);
    assert_int_equal(json_integer_value(json_object_get(result, "width")), 320);
    assert_int_equal(json_integer_value(json_object_get(result, "height")), 240);
    assert_string_equal(json_string_value(json_object_get(result, "format")), "mp4");
    double duration = json_number_value(json_object_get(result, "duration_s"));
    assert_true(duration > 2.5 && duration < 4.0);
    assert_video_size(resolved, 320, 240);

    assert_true(p.count >= 2);
    for (int i = 1; i < p.count; i++) {
        if (p.percents[i] < p.percents[i - 1])
            fail_msg("progress went back from %g to %g", p.percents[i - 1], p.percents[i]);
    }
    assert_true(p.percents[p.count - 1] >= 90);
    assert_contains(p.last_message, "of 3.0 s");

    /* Nothing but the output is left in the folder. */
    assert_int_equal(unlink(resolved), 0);
    assert_dir_empty(f->outputs);
    kiln_err_t err = {0};
    assert_int_equal(kiln_connector_health(c, &err), 0);
    json_decref(result);
    free(payload);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void renders_1080p_by_default_named_after_the_job(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(f, json_object());
    kiln_job_outcome_t out = run_job(c, json_pack("{s:s}", "input", two_s_wav));
    json_t *result = result_of(&out);
    const char *output = json_string_value(json_object_get(result, "output"));
    assert_contains(output, "/render.1.mp4");
    assert_video_size(output, 1920, 1080);
    json_decref(result);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void renders_webm_on_request(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(f, json_object());
    kiln_job_outcome_t out =
        run_job(c, json_pack("{s:s, s:i, s:i, s:s, s:s}", "input", two_s_wav, "width", 320,
                             "height", 240, "format", "webm", "output_name", "clip.webm"));
    json_t *result = result_of(&out);
    const char *output = json_string_value(json_object_get(result, "output"));
    assert_contains(output, "/clip.webm");
    assert_video_size(output, 320, 240);
    char *argv[] = {
        "/usr/bin/ffprobe", "-v",           "error", "-show_entries", "format=format_name", "-of",
        "csv=p=0",          (char *)output, NULL};
    char got[128] = "";
    assert_int_equal(kiln_test_run(argv, NULL, got, sizeof got), 0);
    assert_contains(got, "webm");
    json_decref(result);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void without_ffprobe_the_duration_comes_from_ffmpegs_log(void **state)
{
    fixture_t *f = *state;
    /* A PATH without ffprobe, and ffmpeg by its absolute path. */
    kiln_connector_t *c = make_render(f, json_pack("{s:o, s:{s:s}}", "command",
                                                   template_command("/usr/bin/ffmpeg", false),
                                                   "env", "PATH", "/nonexistent"));
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    char *payload = NULL;
    assert_true(
        asprintf(&payload, "{\"input\": \"%s\", \"width\": 320, \"height\": 240}", short_wav) > 0);
    kiln_job_outcome_t out = run_full(c, payload, &p, NULL);
    json_t *result = result_of(&out);
    assert_true(p.percents[p.count - 1] == 100);
    assert_contains(p.last_message, "of 3.0 s");
    json_decref(result);
    free(payload);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

/* ---- refusals ------------------------------------------------------------------------ */

static void missing_input_fails_not_retryable(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(f, json_object());
    char missing[400];
    snprintf(missing, sizeof missing, "%s/nope.wav", f->dir);
    kiln_job_outcome_t out = run_job(c, json_pack("{s:s}", "input", missing));
    assert_failed(&out, false, "payload.input");
    assert_contains(out.error, "No such file");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:i}", "width", 320));
    assert_failed(&out, false, "payload.input");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s}", "input", f->inputs)); /* a folder */
    assert_failed(&out, false, "not a regular file");
    kiln_job_outcome_clear(&out);

    /* A file that is not media: ffprobe says so, and a retry cannot help. */
    char text[400];
    snprintf(text, sizeof text, "%s/notes.txt", f->inputs);
    FILE *fp = fopen(text, "w");
    assert_non_null(fp);
    fputs("not audio\n", fp);
    fclose(fp);
    out = run_job(c, json_pack("{s:s}", "input", text));
    assert_failed(&out, false, "not a media file");
    kiln_job_outcome_clear(&out);
    assert_dir_empty(f->outputs);
    kiln_connector_free(c);
}

static void input_outside_inputs_dir_is_refused(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(
        f, json_pack("{s:s, s:i, s:i}", "inputs_dir", f->inputs, "width", 320, "height", 240));
    /* Inside, by a relative path: accepted. */
    kiln_job_outcome_t out = run_job(c, json_pack("{s:s}", "input", "a.wav"));
    json_t *result = result_of(&out);
    assert_int_equal(unlink(json_string_value(json_object_get(result, "output"))), 0);
    json_decref(result);
    kiln_job_outcome_clear(&out);

    /* Outside: by an absolute path, by "..", and by a link whose target is
     * outside (realpath sees through it). */
    char beside[400], link[400];
    snprintf(beside, sizeof beside, "%s/beside.wav", f->dir);
    snprintf(link, sizeof link, "%s/link.wav", f->inputs);
    char *cp[] = {"/bin/cp", two_s_wav, beside, NULL};
    assert_int_equal(kiln_test_run(cp, NULL, NULL, 0), 0);
    assert_int_equal(symlink(outside_wav, link), 0);
    const char *escapes[] = {outside_wav, beside, "../beside.wav", "./../inputs/../beside.wav",
                             "link.wav"};
    for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
        out = run_job(c, json_pack("{s:s}", "input", escapes[i]));
        if (out.status != KILN_OUTCOME_FAILED || out.retryable ||
            !strstr(out.error, "outside connectors.render.inputs_dir"))
            fail_msg("input \"%s\" was not refused as outside: %s", escapes[i],
                     out.error ? out.error : "(completed)");
        kiln_job_outcome_clear(&out);
    }
    assert_dir_empty(f->outputs);
    kiln_connector_free(c);
}

static void hostile_payload_values_cannot_inject_arguments(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(f, json_pack("{s:s}", "inputs_dir", f->inputs));
    /* A file really named "-f" inside the inputs folder: still refused. */
    char dash[400];
    snprintf(dash, sizeof dash, "%s/-f", f->inputs);
    fclose(fopen(dash, "w"));

    kiln_job_outcome_t out = run_job(c, json_pack("{s:s}", "input", "-f"));
    assert_failed(&out, false, "payload.input");
    assert_contains(out.error, "starts with '-'");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s, s:s}", "input", "a.wav", "output_name", "../x"));
    assert_failed(&out, false, "payload.output_name");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s, s:s}", "input", "a.wav", "output_name", "/tmp/x"));
    assert_failed(&out, false, "payload.output_name");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s, s:s}", "input", "a.wav", "width", "1920; rm -rf /"));
    assert_failed(&out, false, "payload.width: expected an integer");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s, s:s}", "input", "a.wav", "fps", "25:s=1x1[v];[0:a]"));
    assert_failed(&out, false, "payload.fps");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s, s:s}", "input", "a.wav", "format", "mp4 -i /etc/passwd"));
    assert_failed(&out, false, "payload.format");
    kiln_job_outcome_clear(&out);

    out = run_job(c, json_pack("{s:s, s:i}", "input", "a.wav", "width", 1000000));
    assert_failed(&out, false, "payload.width");
    kiln_job_outcome_clear(&out);

    /* Nothing was written anywhere: not in the outputs, not beside them. */
    assert_dir_empty(f->outputs);
    char x[400];
    snprintf(x, sizeof x, "%s/x", f->dir);
    assert_int_equal(access(x, F_OK), -1);
    kiln_connector_free(c);
}

/* ---- stopping ------------------------------------------------------------------------- */

static void cancel_stops_ffmpeg_and_leaves_no_temp_file(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c = make_render(f, json_pack("{s:o}", "command", realtime_command()));
    progress_log_t p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    canceller_t cancel = {.progress = &p};
    atomic_init(&cancel.flag, 0);
    cancel.fd = eventfd(0, EFD_CLOEXEC);
    assert_true(cancel.fd >= 0);
    assert_int_equal(pthread_create(&cancel.thread, NULL, cancel_main, &cancel), 0);

    char *payload = NULL;
    assert_true(
        asprintf(&payload, "{\"input\": \"%s\", \"width\": 320, \"height\": 240}", long_wav) > 0);
    kiln_job_outcome_t out = run_full(c, payload, &p, &cancel);
    int64_t returned_at = kiln_test_now_ms();
    pthread_join(cancel.thread, NULL);
    close(cancel.fd);
    assert_int_equal(out.status, KILN_OUTCOME_CANCELLED);
    /* ffmpeg stops on SIGTERM; well inside the 2 s grace and the 30 s input. */
    assert_true(returned_at - cancel.fired_at_ms < 5000);
    assert_dir_empty(f->outputs);
    assert_true(no_process_mentions(f->outputs));
    free(payload);
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void timeout_fails_and_cleans_up(void **state)
{
    fixture_t *f = *state;
    kiln_connector_t *c =
        make_render(f, json_pack("{s:o, s:i}", "command", realtime_command(), "timeout_ms", 1500));
    int64_t started = kiln_test_now_ms();
    kiln_job_outcome_t out =
        run_job(c, json_pack("{s:s, s:i, s:i}", "input", long_wav, "width", 320, "height", 240));
    int64_t took = kiln_test_now_ms() - started;
    assert_failed(&out, true, "timed out after 1500 ms");
    assert_true(took >= 1500 && took < 10000);
    assert_dir_empty(f->outputs);
    assert_true(no_process_mentions(f->outputs));
    kiln_job_outcome_clear(&out);
    kiln_connector_free(c);
}

static void ffmpeg_error_fails_not_retryable_with_its_stderr(void **state)
{
    fixture_t *f = *state;
    json_t *command = json_pack("[sssssssss]", "ffmpeg", "-nostdin", "-y", "-i", "{input}", "-c:a",
                                "no_such_encoder", "-f", "{format}");
    json_array_append_new(command, json_string("{output}"));
    kiln_connector_t *c = make_render(f, json_pack("{s:o}", "command", command));
    kiln_job_outcome_t out = run_job(c, json_pack("{s:s}", "input", short_wav));
    assert_failed(&out, false, "ffmpeg exited with code");
    assert_contains(out.error, "no_such_encoder");
    kiln_job_outcome_clear(&out);
    assert_dir_empty(f->outputs);
    kiln_connector_free(c);
}

/* ---- configuration ------------------------------------------------------------------- */

static void assert_refused(const fixture_t *f, json_t *options, const char *needle)
{
    kiln_connector_t *c = NULL;
    kiln_err_t err = {0};
    assert_int_equal(render_new(f, options, &c, &err), KILN_EINVAL);
    assert_null(c);
    assert_contains(err.msg, needle);
}

static void unknown_placeholder_in_template_is_refused_at_init(void **state)
{
    fixture_t *f = *state;
    assert_refused(f,
                   json_pack("{s:[sssssss]}", "command", "ffmpeg", "-i", "{input}", "-vf",
                             "scale={colour}", "-y", "{output}"),
                   "connectors.render.command[4]: unknown placeholder \"{colour}\"");
    assert_refused(f, json_pack("{s:[ssss]}", "command", "ffmpeg", "-i", "{input", "{output}"),
                   "connectors.render.command[2]");
    /* A payload string never goes inside a larger argument. */
    assert_refused(f,
                   json_pack("{s:[ssss]}", "command", "ffmpeg", "-i", "file:{input}", "{output}"),
                   "{input} must be a whole argument");
    assert_refused(f, json_pack("{s:[sss]}", "command", "ffmpeg", "-i", "{input}"),
                   "needs a {output} argument");
    assert_refused(f, json_pack("{s:[sss]}", "command", "no-such-ffmpeg", "{input}", "{output}"),
                   "connectors.render.command");
    assert_refused(f, json_pack("{s:s}", "format", "avi"), "connectors.render.format");
    assert_refused(f, json_pack("{s:i}", "width", 5), "connectors.render.width");
    assert_refused(f, json_pack("{s:s}", "ffprobe", "/nonexistent/ffprobe"),
                   "connectors.render.ffprobe");
    char file[400];
    snprintf(file, sizeof file, "%s/a.wav", f->inputs);
    assert_refused(f, json_pack("{s:s}", "outputs_dir", file), "connectors.render.outputs_dir");
}

int main(void)
{
    kiln_log_configure(KILN_LOG_TEXT, KILN_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(renders_a_video_from_audio_with_progress_to_100, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(renders_1080p_by_default_named_after_the_job, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(renders_webm_on_request, setup, teardown),
        cmocka_unit_test_setup_teardown(without_ffprobe_the_duration_comes_from_ffmpegs_log, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(missing_input_fails_not_retryable, setup, teardown),
        cmocka_unit_test_setup_teardown(input_outside_inputs_dir_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(hostile_payload_values_cannot_inject_arguments, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(cancel_stops_ffmpeg_and_leaves_no_temp_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(timeout_fails_and_cleans_up, setup, teardown),
        cmocka_unit_test_setup_teardown(ffmpeg_error_fails_not_retryable_with_its_stderr, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(unknown_placeholder_in_template_is_refused_at_init, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
