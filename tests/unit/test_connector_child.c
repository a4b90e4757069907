/*
 * child.c, the process machinery the exec and render connectors share, run
 * against real programs (/bin/cat, /bin/sh, /bin/yes and the helpers in
 * tests/helpers/).
 */
#include "connectors/child.h"
#include "kiln_test.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define HELPER(name) KILN_TEST_HELPERS_DIR "/" name

static char *const no_env[] = {"PATH=/usr/bin:/bin", NULL};

/* What a child wrote, bounded. */
typedef struct captured {
    char out[65536];
    size_t out_len, out_total;
    kiln_child_t *child;
    size_t stop_after; /* > 0: stop the child once this much stdout came */
} captured_t;

static void capture_stdout(void *ctx, const char *data, size_t len)
{
    captured_t *cap = ctx;
    size_t room = sizeof cap->out - 1 - cap->out_len;
    size_t n = len < room ? len : room;
    memcpy(cap->out + cap->out_len, data, n);
    cap->out_len += n;
    cap->out[cap->out_len] = '\0';
    cap->out_total += len;
    if (cap->stop_after && cap->out_total >= cap->stop_after)
        kiln_child_stop(cap->child, KILN_CHILD_STOP_CALLER + 1);
}

static kiln_child_options_t options(char *const argv[], captured_t *cap)
{
    return (kiln_child_options_t){
        .path = argv[0],
        .argv = argv,
        .envp = no_env,
        .deadline_ms = kiln_child_now_ms() + 20000,
        .kill_grace_ms = 2000,
        .stderr_tail_bytes = 4096,
        .cancel_fd = -1,
        .on_stdout = cap ? capture_stdout : NULL,
        .ctx = cap,
    };
}

static void child_feeds_stdin_and_passes_stdout_on(void **state)
{
    captured_t cap = {0};
    char *argv[] = {"/bin/cat", NULL};
    kiln_child_options_t opts = options(argv, &cap);
    opts.input = "hello child\n";
    opts.input_len = strlen(opts.input);
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    assert_int_equal(c.stop, KILN_CHILD_STOP_NONE);
    assert_true(WIFEXITED(c.wait_status) && WEXITSTATUS(c.wait_status) == 0);
    assert_string_equal(cap.out, "hello child\n");
    kiln_child_close(&c);
}

static void child_without_input_reads_end_of_file_at_once(void **state)
{
    captured_t cap = {0};
    char *argv[] = {"/bin/cat", NULL};
    kiln_child_options_t opts = options(argv, &cap);
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    assert_int_equal(c.stop, KILN_CHILD_STOP_NONE);
    assert_true(WIFEXITED(c.wait_status) && WEXITSTATUS(c.wait_status) == 0);
    assert_int_equal(cap.out_total, 0);
    kiln_child_close(&c);
}

static void child_missing_program_fails_not_retryable_naming_it(void **state)
{
    char *argv[] = {"/nonexistent/kiln-child-prog", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    kiln_child_t c;
    kiln_child_init(&c, &opts);
    kiln_err_t err = {0};
    assert_int_equal(kiln_child_spawn(&c, &err), KILN_ENOTFOUND);
    assert_string_equal(err.msg,
                        "cannot run /nonexistent/kiln-child-prog: No such file or directory");
    assert_int_equal(c.pid, -1);
    kiln_child_close(&c);

    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 0);
    assert_int_equal(out.status, KILN_OUTCOME_FAILED);
    assert_false(out.retryable);
    assert_non_null(strstr(out.error, "cannot run /nonexistent/kiln-child-prog"));
    kiln_child_close(&c);
    kiln_job_outcome_clear(&out);
}

static void child_missing_cwd_fails_naming_the_folder(void **state)
{
    char *argv[] = {"/bin/cat", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    opts.cwd = "/nonexistent/kiln-child-dir";
    kiln_child_t c;
    kiln_child_init(&c, &opts);
    kiln_err_t err = {0};
    assert_int_equal(kiln_child_spawn(&c, &err), KILN_ENOTFOUND);
    assert_string_equal(err.msg, "cannot change directory to /nonexistent/kiln-child-dir: No "
                                 "such file or directory");
    kiln_child_close(&c);
}

static void child_deadline_stops_it_with_sigterm(void **state)
{
    char *argv[] = {"/bin/sleep", "30", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    int64_t start = kiln_child_now_ms();
    opts.deadline_ms = start + 200;
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    int64_t took = kiln_child_now_ms() - start;
    assert_int_equal(c.stop, KILN_CHILD_STOP_TIMEOUT);
    assert_true(WIFSIGNALED(c.wait_status) && WTERMSIG(c.wait_status) == SIGTERM);
    assert_true(took >= 200 && took < 5000);
    kiln_child_close(&c);
}

static void child_ignoring_sigterm_is_killed_after_the_grace(void **state)
{
    char *argv[] = {HELPER("exec_sleep"), "--ignore-term", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    int64_t start = kiln_child_now_ms();
    opts.deadline_ms = start + 100;
    opts.kill_grace_ms = 300;
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    int64_t took = kiln_child_now_ms() - start;
    assert_int_equal(c.stop, KILN_CHILD_STOP_TIMEOUT);
    assert_true(c.killed_hard);
    assert_true(WIFSIGNALED(c.wait_status) && WTERMSIG(c.wait_status) == SIGKILL);
    assert_true(took >= 400 && took < 5000);
    kiln_child_close(&c);
}

static void child_cancel_fd_stops_it(void **state)
{
    atomic_int flag = 1;
    int fd = eventfd(1, EFD_CLOEXEC);
    assert_true(fd >= 0);
    char *argv[] = {"/bin/sleep", "30", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    opts.cancel = &flag;
    opts.cancel_fd = fd;
    int64_t start = kiln_child_now_ms();
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    assert_int_equal(c.stop, KILN_CHILD_STOP_CANCEL);
    assert_true(WIFSIGNALED(c.wait_status) && WTERMSIG(c.wait_status) == SIGTERM);
    assert_true(kiln_child_now_ms() - start < 1000); /* well inside the grace */
    kiln_child_close(&c);
    close(fd);
}

static void caller_stop_from_a_callback_keeps_its_reason(void **state)
{
    /* yes(1) writes forever: only the stop ends it. */
    captured_t cap = {.stop_after = 1 << 20};
    char *argv[] = {"/bin/yes", NULL};
    kiln_child_options_t opts = options(argv, &cap);
    kiln_child_t c;
    cap.child = &c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    assert_int_equal(c.stop, KILN_CHILD_STOP_CALLER + 1);
    assert_true(WIFSIGNALED(c.wait_status));
    assert_true(cap.out_total >= (size_t)1 << 20);
    assert_memory_equal(cap.out, "y\ny\n", 4);
    kiln_child_close(&c);
}

static void describe_exit_names_the_code_and_the_stderr_tail(void **state)
{
    char *argv[] = {"/bin/sh", "-c", "echo first line >&2; echo 'last words' >&2; exit 3", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    char *all = kiln_child_describe_exit(&c, 1024);
    assert_string_equal(all, "exited with code 3; stderr: first line\nlast words");
    char *cut = kiln_child_describe_exit(&c, 12);
    assert_string_equal(cut, "exited with code 3; stderr: last words");
    free(all);
    free(cut);
    kiln_child_close(&c);
}

static void describe_exit_names_the_signal(void **state)
{
    char *argv[] = {"/bin/sh", "-c", "kill -9 $$", NULL};
    kiln_child_options_t opts = options(argv, NULL);
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    char *text = kiln_child_describe_exit(&c, 1024);
    assert_string_equal(text, "killed by signal 9 (SIGKILL)");
    free(text);
    kiln_child_close(&c);
}

static void stderr_tail_keeps_only_its_bound(void **state)
{
    char *argv[] = {"/bin/sh", "-c",
                    "i=0; while [ $i -lt 2000 ]; do echo line $i >&2; "
                    "i=$((i+1)); done",
                    NULL};
    kiln_child_options_t opts = options(argv, NULL);
    opts.stderr_tail_bytes = 256;
    kiln_child_t c;
    kiln_job_outcome_t out = {0};
    assert_int_equal(kiln_child_run(&c, &opts, &out), 1);
    assert_true(c.tail.used <= 256);
    char *text = kiln_child_describe_exit(&c, 1024);
    assert_non_null(strstr(text, "line 1999"));
    assert_null(strstr(text, "line 1000\n"));
    free(text);
    kiln_child_close(&c);
}

static void timeout_is_the_tighter_of_connector_and_job(void **state)
{
    assert_int_equal(kiln_child_timeout_ms(0, 0), 0);
    assert_int_equal(kiln_child_timeout_ms(500, 0), 500);
    assert_int_equal(kiln_child_timeout_ms(0, 700), 700);
    assert_int_equal(kiln_child_timeout_ms(500, 700), 500);
    assert_int_equal(kiln_child_timeout_ms(900, 700), 700);
}

static void check_program_names_the_option_when_it_is_gone(void **state)
{
    kiln_err_t err = {0};
    assert_int_equal(kiln_child_check_program("render", "command", "/bin/sh", &err), 0);
    assert_int_equal(kiln_child_check_program("render", "command", "/nonexistent/ffmpeg", &err),
                     KILN_ENOTFOUND);
    assert_string_equal(err.msg, "connectors.render.command: /nonexistent/ffmpeg is no longer "
                                 "executable (No such file or directory); reinstall it");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(child_feeds_stdin_and_passes_stdout_on),
        cmocka_unit_test(child_without_input_reads_end_of_file_at_once),
        cmocka_unit_test(child_missing_program_fails_not_retryable_naming_it),
        cmocka_unit_test(child_missing_cwd_fails_naming_the_folder),
        cmocka_unit_test(child_deadline_stops_it_with_sigterm),
        cmocka_unit_test(child_ignoring_sigterm_is_killed_after_the_grace),
        cmocka_unit_test(child_cancel_fd_stops_it),
        cmocka_unit_test(caller_stop_from_a_callback_keeps_its_reason),
        cmocka_unit_test(describe_exit_names_the_code_and_the_stderr_tail),
        cmocka_unit_test(describe_exit_names_the_signal),
        cmocka_unit_test(stderr_tail_keeps_only_its_bound),
        cmocka_unit_test(timeout_is_the_tighter_of_connector_and_job),
        cmocka_unit_test(check_program_names_the_option_when_it_is_gone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
