/*
 * A service's captured output: bytes in arbitrary chunks become stamped,
 * valid UTF-8 lines in <dir>/<name>.log (rotated, bounded count) and in a
 * bounded ring served as JSON, with followers told of every new line.
 */
#include "kiln_test.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/svclog.h"
#include "kiln/err.h"

static char tmp_dir[256];
static char log_dir[320];
static kiln_svclog_t *svclog;
static kiln_err_t err;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    kiln_test_tmpdir(tmp_dir, sizeof tmp_dir);
    /* Two missing levels: open creates them. */
    snprintf(log_dir, sizeof log_dir, "%s/logs/services", tmp_dir);
    svclog = NULL;
    memset(&err, 0, sizeof err);
    return 0;
}

static int teardown(void **state)
{
    kiln_svclog_close(svclog);
    svclog = NULL;
    nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static void open_log(const char *dir, size_t ring_lines, size_t file_max_bytes, int file_keep,
                     size_t line_max_bytes)
{
    kiln_svclog_options_t opts = {
        .dir = dir,
        .ring_lines = ring_lines,
        .file_max_bytes = file_max_bytes,
        .file_keep = file_keep,
        .line_max_bytes = line_max_bytes,
    };
    int rc = kiln_svclog_open("comfyui-0", &opts, &svclog, &err);
    if (rc)
        fail_msg("open: %s", err.msg);
    assert_non_null(svclog);
}

static void write_str(const char *stream, const char *text)
{
    kiln_svclog_write(svclog, stream, text, strlen(text));
}

/* The "line" of the i-th entry of tail (fails the test if absent). */
static const char *tail_line(json_t *tail, size_t i)
{
    json_t *entry = json_array_get(tail, i);
    assert_non_null(entry);
    const char *line = json_string_value(json_object_get(entry, "line"));
    assert_non_null(line);
    return line;
}

/* The whole file (caller frees), or NULL when it does not exist. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static size_t count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    }
    closedir(d);
    return n;
}

static void lines_split_across_chunks_are_joined(void **state)
{
    open_log(log_dir, 0, 0, 0, 0);
    write_str("stdout", "hel");
    write_str("stderr", "warn");
    write_str("stdout", "lo\nwor");
    write_str("stdout", "ld\r");
    write_str("stdout", "\n\xc3"); /* "é" split between two chunks */
    write_str("stderr", "ing\n");
    write_str("stdout", "\xa9t\xc3\xa9\n\n");

    json_t *tail = kiln_svclog_tail(svclog, 10);
    assert_int_equal(json_array_size(tail), 5);
    assert_string_equal(tail_line(tail, 0), "hello");
    assert_string_equal(tail_line(tail, 1), "world");
    assert_string_equal(tail_line(tail, 2), "warning");
    assert_string_equal(json_string_value(json_object_get(json_array_get(tail, 2), "stream")),
                        "stderr");
    assert_string_equal(tail_line(tail, 3), "\xc3\xa9t\xc3\xa9");
    assert_string_equal(tail_line(tail, 4), "");
    const char *time = json_string_value(json_object_get(json_array_get(tail, 0), "time"));
    assert_non_null(time);
    assert_int_equal(strlen(time), 24); /* 2026-11-22T06:00:00.123Z */
    assert_int_equal(time[10], 'T');
    assert_int_equal(time[19], '.');
    assert_int_equal(time[23], 'Z');
    json_decref(tail);

    kiln_svclog_close(svclog);
    svclog = NULL;
    char path[512];
    snprintf(path, sizeof path, "%s/comfyui-0.log", log_dir);
    char *text = slurp(path);
    assert_non_null(text);
    assert_non_null(strstr(text, "Z stdout hello\n"));
    assert_non_null(strstr(text, "Z stdout world\n"));
    assert_non_null(strstr(text, "Z stderr warning\n"));
    assert_null(strchr(text, '\r'));
    free(text);
}

static void partial_line_is_flushed_on_close(void **state)
{
    open_log(log_dir, 0, 0, 0, 0);
    write_str("stdout", "done\nno newline at the end");
    json_t *tail = kiln_svclog_tail(svclog, 10);
    assert_int_equal(json_array_size(tail), 1); /* held until its newline or close */
    json_decref(tail);
    kiln_svclog_close(svclog);
    svclog = NULL;

    char path[512];
    snprintf(path, sizeof path, "%s/comfyui-0.log", log_dir);
    char *text = slurp(path);
    assert_non_null(text);
    assert_non_null(strstr(text, " stdout done\n"));
    assert_non_null(strstr(text, " stdout no newline at the end\n"));
    free(text);
}

static void long_lines_are_cut_and_marked(void **state)
{
    open_log(NULL, 0, 0, 0, 16);
    write_str("stdout", "0123456789abcdef\n"); /* exactly the limit: whole */
    write_str("stdout", "0123456789abcdefXYZ");
    write_str("stdout", "more of the same long line\n");
    write_str("stdout", "0123456789abcde\xc3\xa9!\n"); /* "é" straddles the limit */
    write_str("stdout", "short\n");

    json_t *tail = kiln_svclog_tail(svclog, 10);
    assert_int_equal(json_array_size(tail), 4);
    assert_string_equal(tail_line(tail, 0), "0123456789abcdef");
    assert_string_equal(tail_line(tail, 1), "0123456789abcdef" KILN_SVCLOG_CUT_MARK);
    assert_string_equal(tail_line(tail, 2), "0123456789abcde" KILN_SVCLOG_CUT_MARK);
    assert_string_equal(tail_line(tail, 3), "short");
    json_decref(tail);
}

static void ring_keeps_only_the_last_lines(void **state)
{
    open_log(NULL, 3, 0, 0, 0);
    for (int i = 1; i <= 5; i++) {
        char line[32];
        snprintf(line, sizeof line, "line %d\n", i);
        write_str("stdout", line);
    }
    json_t *tail = kiln_svclog_tail(svclog, 100);
    assert_int_equal(json_array_size(tail), 3);
    assert_string_equal(tail_line(tail, 0), "line 3");
    assert_string_equal(tail_line(tail, 2), "line 5");
    json_decref(tail);

    tail = kiln_svclog_tail(svclog, 2);
    assert_int_equal(json_array_size(tail), 2);
    assert_string_equal(tail_line(tail, 0), "line 4");
    assert_string_equal(tail_line(tail, 1), "line 5");
    json_decref(tail);

    tail = kiln_svclog_tail(svclog, 0);
    assert_int_equal(json_array_size(tail), 0);
    json_decref(tail);
}

static void ring_grows_lazily_and_keeps_lines_across_growth(void **state)
{
    open_log(NULL, 100, 0, 0, 0);
    assert_int_equal(kiln_svclog_ring_capacity(svclog), 0);
    write_str("stdout", "first\n");
    size_t small = kiln_svclog_ring_capacity(svclog);
    assert_true(small > 0 && small < 100);
    for (int i = 2; i <= 150; i++) {
        char line[32];
        snprintf(line, sizeof line, "line %d\n", i);
        write_str("stdout", line);
    }
    assert_int_equal(kiln_svclog_ring_capacity(svclog), 100);
    json_t *tail = kiln_svclog_tail(svclog, 1000);
    assert_int_equal(json_array_size(tail), 100);
    assert_string_equal(tail_line(tail, 0), "line 51");
    assert_string_equal(tail_line(tail, 99), "line 150");
    json_decref(tail);
}

static void files_rotate_and_keep_a_bounded_count(void **state)
{
    mode_t old_umask = umask(022);
    open_log(log_dir, 0, 200, 2, 0);
    for (int i = 0; i < 100; i++) {
        char line[64];
        snprintf(line, sizeof line, "line %03d of the rotation test\n", i);
        write_str("stdout", line);
    }
    assert_int_equal(kiln_svclog_write_errors(svclog), 0);

    /* comfyui-0.log, .1 and .2; .3 was never kept. */
    assert_int_equal(count_entries(log_dir), 3);
    char path[512];
    const char *suffixes[] = {"", ".1", ".2"};
    for (int i = 0; i < 3; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/comfyui-0.log%s", log_dir, suffixes[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_true(st.st_size > 0);
        assert_true(st.st_size <= 200);
        assert_int_equal(st.st_mode & 0777, 0640);
    }
    snprintf(path, sizeof path, "%s/comfyui-0.log", log_dir);
    char *current = slurp(path);
    assert_non_null(strstr(current, "line 099"));
    free(current);
    snprintf(path, sizeof path, "%s/comfyui-0.log.2", log_dir);
    char *oldest = slurp(path);
    assert_null(strstr(oldest, "line 099"));
    assert_null(strstr(oldest, "line 000")); /* long gone */
    free(oldest);

    struct stat st;
    assert_int_equal(stat(log_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0750);
    umask(old_umask);
}

static void invalid_utf8_is_replaced_and_tail_is_valid_json(void **state)
{
    open_log(log_dir, 0, 0, 0, 0);
    /* A stray byte, an overlong "/", a surrogate, a truncated sequence, a
     * NUL and a valid "€". */
    static const char bytes[] = "a\xff"
                                "b\xc0\xaf"
                                "c\xed\xa0\x80"
                                "d\xe2\x82"
                                "e\0f\xe2\x82\xac\n";
    kiln_svclog_write(svclog, "stdout", bytes, sizeof bytes - 1);
    write_str("stdout", "\xf4\x90\x80\x80 past U+10FFFF\n");

    json_t *tail = kiln_svclog_tail(svclog, 10);
    char *dumped = json_dumps(tail, 0);
    assert_non_null(dumped);
    json_error_t jerr;
    json_t *parsed = json_loads(dumped, 0, &jerr);
    if (!parsed)
        fail_msg("tail is not valid JSON: %s: %s", jerr.text, dumped);
    const char *line = tail_line(parsed, 0);
    assert_string_equal(line, "a\xef\xbf\xbd"
                              "b\xef\xbf\xbd\xef\xbf\xbd"
                              "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                              "d\xef\xbf\xbd\xef\xbf\xbd"
                              "e\xef\xbf\xbd"
                              "f\xe2\x82\xac");
    assert_non_null(strstr(tail_line(parsed, 1), " past U+10FFFF"));
    assert_int_equal(strncmp(tail_line(parsed, 1), "\xef\xbf\xbd", 3), 0);
    json_decref(parsed);
    free(dumped);
    json_decref(tail);
}

static void hostile_names_are_refused(void **state)
{
    char long_name[80];
    memset(long_name, 'a', 65);
    long_name[65] = '\0';
    const char *names[] = {"../x", "a/b", "", long_name, "A", "-x", "_x", "a b", "a.log", NULL};
    kiln_svclog_options_t opts = {.dir = log_dir};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        kiln_svclog_t *log = (kiln_svclog_t *)&opts; /* must be overwritten */
        kiln_err_clear(&err);
        assert_int_equal(kiln_svclog_open(names[i], &opts, &log, &err), KILN_EINVAL);
        assert_null(log);
        assert_non_null(strstr(err.msg, "not valid"));
    }
    /* Nothing was created anywhere. */
    assert_int_equal(count_entries(tmp_dir), 0);

    long_name[64] = '\0'; /* 64 characters is the most a name may have */
    kiln_svclog_t *log = NULL;
    assert_int_equal(kiln_svclog_open(long_name, &opts, &log, &err), 0);
    kiln_svclog_close(log);
}

typedef struct seen {
    kiln_svclog_t *log;
    int calls;
    char last[64];
    bool unfollow_self;
    struct seen *unfollow_other;
} seen_t;

static void on_line(void *ctx, json_t *entry)
{
    seen_t *s = ctx;
    s->calls++;
    snprintf(s->last, sizeof s->last, "%s", json_string_value(json_object_get(entry, "line")));
    if (s->unfollow_other) {
        kiln_svclog_unfollow(s->log, on_line, s->unfollow_other);
        s->unfollow_other = NULL;
    }
    if (s->unfollow_self)
        kiln_svclog_unfollow(s->log, on_line, s);
}

static void follow_sees_new_lines_and_unfollow_inside_callback_is_safe(void **state)
{
    open_log(NULL, 0, 0, 0, 0);
    write_str("stdout", "before following\n");

    seen_t quitter = {0}, killer = {0}, victim = {0}, steady = {0};
    quitter.log = killer.log = victim.log = steady.log = svclog;
    quitter.unfollow_self = true;
    killer.unfollow_other = &victim; /* victim follows after killer */
    assert_int_equal(kiln_svclog_follow(svclog, on_line, &quitter), 0);
    assert_int_equal(kiln_svclog_follow(svclog, on_line, &killer), 0);
    assert_int_equal(kiln_svclog_follow(svclog, on_line, &victim), 0);
    assert_int_equal(kiln_svclog_follow(svclog, on_line, &steady), 0);
    assert_int_equal(kiln_svclog_follow(svclog, on_line, &steady), KILN_ECONFLICT);

    write_str("stdout", "one\ntwo\n");
    kiln_svclog_note(svclog, "exited with code %d;\nrestarting", 3);

    assert_int_equal(quitter.calls, 1);
    assert_int_equal(killer.calls, 3);
    assert_int_equal(victim.calls, 0); /* removed before its turn */
    assert_int_equal(steady.calls, 3);
    assert_string_equal(steady.last, "exited with code 3; restarting");

    kiln_svclog_unfollow(svclog, on_line, &steady);
    kiln_svclog_unfollow(svclog, on_line, &steady); /* unknown: a no-op */
    write_str("stdout", "three\n");
    assert_int_equal(steady.calls, 3);
    assert_int_equal(killer.calls, 4);

    json_t *tail = kiln_svclog_tail(svclog, 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(tail, 0), "stream")),
                        "stdout");
    json_decref(tail);
    tail = kiln_svclog_tail(svclog, 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(tail, 0), "stream")),
                        "agent");
    json_decref(tail);
}

static void ring_only_without_a_dir(void **state)
{
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmp_dir), 0);
    open_log(NULL, 0, 0, 0, 0);
    write_str("stdout", "kept in memory\n");
    kiln_svclog_note(svclog, "started");
    json_t *tail = kiln_svclog_tail(svclog, 10);
    assert_int_equal(json_array_size(tail), 2);
    assert_string_equal(tail_line(tail, 0), "kept in memory");
    assert_string_equal(tail_line(tail, 1), "started");
    json_decref(tail);
    assert_int_equal(kiln_svclog_write_errors(svclog), 0);
    kiln_svclog_close(svclog);
    svclog = NULL;
    assert_int_equal(count_entries(tmp_dir), 0);
    assert_int_equal(chdir(cwd), 0);
}

static void unwritable_dir_does_not_crash(void **state)
{
    /* A directory under a regular file cannot exist, even for root. */
    char file[512], dir[600];
    snprintf(file, sizeof file, "%s/file.txt", tmp_dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/sub", file);

    open_log(dir, 0, 0, 0, 0);
    for (int i = 0; i < 10; i++)
        write_str("stdout", "still captured\n");
    kiln_svclog_note(svclog, "exited with code 1");
    assert_true(kiln_svclog_write_errors(svclog) >= 1);

    json_t *tail = kiln_svclog_tail(svclog, 100);
    /* One note about the file, however many lines missed it. */
    assert_int_equal(json_array_size(tail), 12);
    json_t *note = json_array_get(tail, 0);
    assert_string_equal(json_string_value(json_object_get(note, "stream")), "agent");
    assert_non_null(strstr(json_string_value(json_object_get(note, "line")), "cannot open"));
    assert_string_equal(tail_line(tail, 1), "still captured");
    assert_string_equal(tail_line(tail, 11), "exited with code 1");
    json_decref(tail);
}

static void write_errors_are_counted_noted_once_and_recovered_from(void **state)
{
    /* A file size limit makes write(2) fail with EFBIG, as a full disk would
     * with ENOSPC. */
    open_log(log_dir, 0, 0, 0, 0);
    write_str("stdout", "before the limit\n");
    struct rlimit old_limit, limit;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    limit = old_limit;
    limit.rlim_cur = 64;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &limit), 0);
    for (int i = 0; i < 5; i++)
        write_str("stdout", "over the limit, kept in memory\n");
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(kiln_svclog_write_errors(svclog), 5);
    write_str("stdout", "after the limit\n");

    json_t *tail = kiln_svclog_tail(svclog, 100);
    size_t notes = 0, lines = json_array_size(tail);
    for (size_t i = 0; i < lines; i++) {
        json_t *e = json_array_get(tail, i);
        if (strcmp(json_string_value(json_object_get(e, "stream")), "agent") == 0)
            notes++;
    }
    assert_int_equal(notes, 2); /* "cannot write ..." and "... writable again" */
    assert_int_equal(lines, 1 + 5 + 1 + 2);
    assert_non_null(strstr(tail_line(tail, 2), "cannot write"));
    assert_non_null(strstr(tail_line(tail, lines - 1), "writable again"));
    json_decref(tail);

    char path[512];
    snprintf(path, sizeof path, "%s/comfyui-0.log", log_dir);
    char *text = slurp(path);
    assert_non_null(strstr(text, "after the limit\n"));
    assert_non_null(strstr(text, "writable again"));
    free(text);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(lines_split_across_chunks_are_joined),
        TEST(partial_line_is_flushed_on_close),
        TEST(long_lines_are_cut_and_marked),
        TEST(ring_keeps_only_the_last_lines),
        TEST(ring_grows_lazily_and_keeps_lines_across_growth),
        TEST(files_rotate_and_keep_a_bounded_count),
        TEST(invalid_utf8_is_replaced_and_tail_is_valid_json),
        TEST(hostile_names_are_refused),
        TEST(follow_sees_new_lines_and_unfollow_inside_callback_is_safe),
        TEST(ring_only_without_a_dir),
        TEST(unwritable_dir_does_not_crash),
        TEST(write_errors_are_counted_noted_once_and_recovered_from),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
