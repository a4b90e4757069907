/* The download step's side of services.NAME.downloads: the lines the agent
 * accepts from a step's output, and the step's refusals before any
 * transfer. (The transfers themselves: test_download.c; end to end:
 * e2e/test_agent_downloads.c.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/download.h"
#include "kiln_test.h"

static void only_prefixed_json_objects_naming_a_service_are_accepted(void **state)
{
    (void)state;
    const char *refused[] = {
        "",
        "kiln-download:",                                       /* no space, no object */
        "kiln-download: ",                                      /* nothing after the prefix */
        "kiln-download: not json",                              /* garbage */
        "kiln-download: [1,2]",                                 /* not an object */
        "kiln-download: {\"bytes_done\":1}",                    /* no service */
        "kiln-download: {\"service\":7}",                       /* service not a string */
        "kiln-download: {\"service\":\"a\",\"service\":\"b\"}", /* duplicate keys */
        "  kiln-download: {\"service\":\"a\"}",                 /* not at the start */
        "progress: {\"service\":\"a\"}",                        /* another prefix */
        "kiln-download: {\"service\":\"a\"",                    /* cut short */
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        json_t *v = kiln_download_line_parse(refused[i]);
        if (v)
            fail_msg("accepted %s", refused[i]);
    }
    assert_null(kiln_download_line_parse(NULL));
    json_t *ok = kiln_download_line_parse(
        "kiln-download: {\"service\":\"painter\",\"bytes_done\":5,\"bytes_total\":10}");
    assert_non_null(ok);
    assert_string_equal(json_string_value(json_object_get(ok, "service")), "painter");
    assert_int_equal(json_integer_value(json_object_get(ok, "bytes_done")), 5);
    json_decref(ok);
}

static void an_oversized_line_is_parsed_or_refused_without_harm(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *line = malloc(n + 64);
    assert_non_null(line);
    int head = snprintf(line, 64, "kiln-download: {\"service\":\"");
    memset(line + head, 'x', n);
    line[head + n] = '\0'; /* never closed */
    assert_null(kiln_download_line_parse(line));
    free(line);
}

static void a_service_without_downloads_is_refused_naming_it(void **state)
{
    (void)state;
    kiln_config_t cfg = {0};
    char name[] = "web";
    kiln_service_config_t svc = {.name = name};
    cfg.services = &svc;
    cfg.n_services = 1;
    kiln_err_t err = {0};
    char buf[256];
    FILE *out = fmemopen(buf, sizeof buf, "w");
    assert_int_equal(kiln_download_service(&cfg, "web", out, NULL, &err), KILN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "services.web.downloads: is empty"));
    assert_int_equal(kiln_download_service(&cfg, "nope", out, NULL, &err), KILN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "services.nope.downloads: no such service"));
    fclose(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(only_prefixed_json_objects_naming_a_service_are_accepted),
        cmocka_unit_test(an_oversized_line_is_parsed_or_refused_without_harm),
        cmocka_unit_test(a_service_without_downloads_is_refused_naming_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
