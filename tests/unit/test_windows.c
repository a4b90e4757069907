/* Active windows (kiln/windows.h): parsing, edges, midnight wrap, errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/windows.h"
#include "kiln_test.h"

static kiln_windows_t parsed(const char *text)
{
    kiln_windows_t w;
    kiln_err_t err = {0};
    if (kiln_windows_parse(text, "worker.active_windows", &w, &err) != 0)
        fail_msg("%s: %s", text, err.msg);
    return w;
}

static void a_window_includes_its_start_and_excludes_its_end(void **state)
{
    kiln_windows_t w = parsed("09:00-17:30");
    assert_false(kiln_windows_open_at(&w, 9 * 60 - 1));
    assert_true(kiln_windows_open_at(&w, 9 * 60));
    assert_true(kiln_windows_open_at(&w, 17 * 60 + 29));
    assert_false(kiln_windows_open_at(&w, 17 * 60 + 30));
}

static void a_window_ending_before_it_starts_crosses_midnight(void **state)
{
    kiln_windows_t w = parsed("22:00-06:00");
    assert_true(kiln_windows_open_at(&w, 22 * 60));
    assert_true(kiln_windows_open_at(&w, 23 * 60 + 59));
    assert_true(kiln_windows_open_at(&w, 0));
    assert_true(kiln_windows_open_at(&w, 5 * 60 + 59));
    assert_false(kiln_windows_open_at(&w, 6 * 60));
    assert_false(kiln_windows_open_at(&w, 21 * 60 + 59));
    assert_false(kiln_windows_open_at(&w, 12 * 60));
}

static void several_windows_open_in_any_of_them_and_format_canonically(void **state)
{
    kiln_windows_t w = parsed(" 22:00-06:00 , 12:00-13:00,00:00-00:01");
    assert_int_equal(w.count, 3);
    assert_true(kiln_windows_open_at(&w, 12 * 60 + 30));
    assert_true(kiln_windows_open_at(&w, 3 * 60));
    assert_false(kiln_windows_open_at(&w, 13 * 60));
    char text[128];
    kiln_windows_format(&w, text, sizeof text);
    assert_string_equal(text, "22:00-06:00,12:00-13:00,00:00-00:01");
}

static void whole_day_and_no_windows_are_always_open(void **state)
{
    kiln_windows_t w = parsed("00:00-24:00");
    assert_true(kiln_windows_open_at(&w, 0));
    assert_true(kiln_windows_open_at(&w, 1439));
    kiln_windows_t none = parsed("");
    assert_int_equal(none.count, 0);
    assert_true(kiln_windows_open_at(&none, 700));
}

static void malformed_windows_are_refused_naming_the_field_and_item(void **state)
{
    const char *bad[] = {"22:00",       "22:00-06:60",    "25:00-06:00", "22-06",
                         "22:00-22:00", "22:00-06:00,",   "aa:bb-cc:dd", "24:00-01:00",
                         "2:00-6:00",   "22:00 - 06:00x", "22:00-24:01"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_windows_t w;
        kiln_err_t err = {0};
        assert_int_equal(kiln_windows_parse(bad[i], "worker.active_windows", &w, &err),
                         KILN_EINVAL);
        assert_non_null(strstr(err.msg, "worker.active_windows: expected windows like"));
        assert_int_equal(w.count, 0);
    }
}

static void too_many_or_too_long_windows_are_refused(void **state)
{
    char text[2048] = "";
    for (int i = 0; i < KILN_WINDOWS_MAX + 1; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "%s%02d:00-%02d:30", i ? "," : "",
                 i, i);
    kiln_windows_t w;
    kiln_err_t err = {0};
    assert_int_equal(kiln_windows_parse(text, "f", &w, &err), KILN_ETOOBIG);
    assert_non_null(strstr(err.msg, "at most 16 windows"));
    memset(text, ' ', 1000);
    text[1000] = '\0';
    assert_int_equal(kiln_windows_parse(text, "f", &w, &err), KILN_ETOOBIG);
}

static void next_change_is_the_boundary_ahead(void **state)
{
    time_t now = time(NULL);
    struct tm local;
    localtime_r(&now, &local);
    int minute = local.tm_hour * 60 + local.tm_min;
    char text[64];
    int start = (minute + 10) % 1440, end = (minute + 20) % 1440;
    snprintf(text, sizeof text, "%02d:%02d-%02d:%02d", start / 60, start % 60, end / 60, end % 60);
    kiln_windows_t w = parsed(text);
    assert_false(kiln_windows_open_now(&w, now));
    long s = kiln_windows_next_change_s(&w, now);
    assert_true(s > 9 * 60 && s <= 10 * 60);
    assert_true(kiln_windows_open_now(&w, now + s));
    assert_false(kiln_windows_open_now(&w, now + s - 60));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_window_includes_its_start_and_excludes_its_end),
        cmocka_unit_test(a_window_ending_before_it_starts_crosses_midnight),
        cmocka_unit_test(several_windows_open_in_any_of_them_and_format_canonically),
        cmocka_unit_test(whole_day_and_no_windows_are_always_open),
        cmocka_unit_test(malformed_windows_are_refused_naming_the_field_and_item),
        cmocka_unit_test(too_many_or_too_long_windows_are_refused),
        cmocka_unit_test(next_change_is_the_boundary_ahead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
