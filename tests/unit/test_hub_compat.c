/* Old-format requirements mapped onto kiln's (kiln/hub_compat.h). Each
 * mapped object is also passed through kiln's own job spec validation, so a
 * mapping that kiln would refuse fails here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/broker.h"
#include "kiln/hub_compat.h"
#include "kiln_test.h"

/* Maps the two JSON texts (NULL = absent) and returns the mapped
 * requirements as compact sorted JSON (static buffer). */
static const char *mapped(const char *positive, const char *negative)
{
    static char text[4096];
    json_t *pos = positive ? json_loads(positive, JSON_DECODE_ANY, NULL) : NULL;
    json_t *neg = negative ? json_loads(negative, JSON_DECODE_ANY, NULL) : NULL;
    json_t *out = NULL;
    kiln_hub_error_t e = {0};
    if (kiln_hub_compat_requirements(pos, neg, &out, &e) != 0)
        fail_msg("refused: %s", e.message);
    char *dumped = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS);
    snprintf(text, sizeof text, "%s", dumped);
    /* kiln itself must accept what the mapping produced. */
    json_t *spec = json_pack("{s:s, s:O}", "service", "comfyui", "requirements", out);
    kiln_job_spec_t js;
    kiln_err_t err = {0};
    if (kiln_job_spec_from_json(spec, 0, &js, &err) != 0)
        fail_msg("kiln refuses the mapping %s: %s", dumped, err.msg);
    kiln_job_spec_clear(&js);
    json_decref(spec);
    free(dumped);
    json_decref(out);
    json_decref(pos);
    json_decref(neg);
    return text;
}

/* Expects the mapping to be refused with status and field. */
static void refused(const char *positive, const char *negative, int status, const char *field,
                    const char *message_part)
{
    json_t *pos = positive ? json_loads(positive, JSON_DECODE_ANY, NULL) : NULL;
    json_t *neg = negative ? json_loads(negative, JSON_DECODE_ANY, NULL) : NULL;
    json_t *out = NULL;
    kiln_hub_error_t e = {0};
    int rc = kiln_hub_compat_requirements(pos, neg, &out, &e);
    if (rc == 0)
        fail_msg("accepted %s / %s", positive ? positive : "-", negative ? negative : "-");
    assert_null(out);
    assert_int_equal(e.status, status);
    assert_string_equal(e.field, field);
    if (!strstr(e.message, message_part))
        fail_msg("message \"%s\" lacks \"%s\"", e.message, message_part);
    json_decref(pos);
    json_decref(neg);
}

static void hardware_minima_map_to_kiln_minima_and_all_means_no_limit(void **state)
{
    assert_string_equal(
        mapped("{\"hardware\":{\"gpu_memory_gb\":24,\"cpu_cores\":\"all\",\"ram_gb\":32.5}}", NULL),
        "{\"gpu_memory_gb\":24,\"ram_gb\":32.5}");
    assert_string_equal(mapped("{\"hardware\":{\"gpu_memory_gb\":\"all\"}}", NULL), "{}");
}

static void models_map_to_models(void **state)
{
    assert_string_equal(mapped("{\"models\":[\"sdxl\",\"flux-dev\"]}", NULL),
                        "{\"models\":[\"sdxl\",\"flux-dev\"]}");
    assert_string_equal(mapped("{\"models\":\"sdxl\"}", NULL), "{\"models\":[\"sdxl\"]}");
}

static void customer_isolation_maps_level_and_lists(void **state)
{
    assert_string_equal(mapped("{\"customer_isolation\":\"strict\"}", NULL),
                        "{\"customer_isolation\":\"strict\"}");
    assert_string_equal(
        mapped("{\"customer_isolation\":{\"isolation\":\"loose\",\"allowed_customers\":[\"acme\"],"
               "\"denied_customers\":[\"evil\"]}}",
               NULL),
        "{\"capabilities\":{\"customer_access.allowed_customers\":[\"acme\"]},"
        "\"customer_isolation\":\"loose\",\"not\":{\"customer_access.allowed_customers\":[\"evil\"]"
        "}}");
}

static void other_keys_become_capability_paths_flattening_objects(void **state)
{
    assert_string_equal(
        mapped("{\"gpu\":{\"vendor\":\"nvidia\",\"cuda\":12},\"features\":[\"fp8\"],\"x\":true}",
               NULL),
        "{\"capabilities\":{\"features\":[\"fp8\"],\"gpu.cuda\":12,\"gpu.vendor\":\"nvidia\","
        "\"x\":true}}");
}

static void negative_requirements_exclude_and_may_stand_alone(void **state)
{
    assert_string_equal(
        mapped(NULL, "{\"gpu\":{\"model\":\"T4\"},\"tags\":[\"spot\"],\"models\":[\"sd15\"],"
                     "\"hardware\":{\"gpu_memory_gb\":80}}"),
        "{\"not\":{\"gpu.model\":\"T4\",\"gpu_memory_gb\":80,\"models\":[\"sd15\"],\"tags\":["
        "\"spot\"]}}");
    assert_string_equal(mapped("{}", "null"), "{}");
    assert_string_equal(mapped(NULL, NULL), "{}");
}

static void wrong_types_are_refused_naming_the_field(void **state)
{
    refused("[1]", NULL, 400, "positive_requirements", "expected an object, got an array");
    refused(NULL, "\"x\"", 400, "negative_requirements", "expected an object");
    refused("{\"hardware\":{\"gpu_memory_gb\":\"lots\"}}", NULL, 400,
            "positive_requirements.hardware.gpu_memory_gb", "a number >= 0 or \"all\"");
    refused("{\"hardware\":{\"gpu_memory_gb\":-1}}", NULL, 400,
            "positive_requirements.hardware.gpu_memory_gb", "got a number");
    refused("{\"hardware\":{\"vram\":8}}", NULL, 400, "positive_requirements.hardware.vram",
            "unknown hardware key");
    refused("{\"hardware\":7}", NULL, 400, "positive_requirements.hardware", "expected an object");
    refused("{\"models\":[1]}", NULL, 400, "positive_requirements.models", "model names");
    refused("{\"models\":[]}", NULL, 400, "positive_requirements.models", "non-empty");
    refused("{\"customer_isolation\":\"total\"}", NULL, 400,
            "positive_requirements.customer_isolation", "\"strict\", \"loose\" or \"none\"");
    refused("{\"customer_isolation\":{\"allowed_customers\":\"acme\"}}", NULL, 400,
            "positive_requirements.customer_isolation.allowed_customers", "an array");
    refused("{\"gpu\":null}", NULL, 400, "positive_requirements.gpu", "got null");
    refused("{\"tags\":[{\"a\":1}]}", NULL, 400, "positive_requirements.tags[0]",
            "a string or number");
}

static void hostile_nesting_and_sizes_are_bounded(void **state)
{
    char deep[512] = "";
    for (int i = 0; i < 20; i++)
        strcat(deep, "{\"a\":");
    strcat(deep, "1");
    for (int i = 0; i < 20; i++)
        strcat(deep, "}");
    refused(deep, NULL, 400, "positive_requirements.a.a.a.a.a.a.a.a.a", "nested deeper than 8");

    size_t size = 16 + 4 * 1000;
    char *huge = malloc(size);
    strcpy(huge, "{\"tags\":[");
    for (int i = 0; i < 1000; i++)
        strcat(huge, i ? ",\"t\"" : "\"t\"");
    strcat(huge, "]}");
    refused(huge, NULL, 413, "positive_requirements.tags[255]", "more than 256");
    free(huge);

    char long_path[400] = "{\"";
    memset(long_path + 2, 'k', 200);
    strcpy(long_path + 202, "\":1}");
    json_t *pos = json_loads(long_path, 0, NULL);
    json_t *out = NULL;
    kiln_hub_error_t e = {0};
    assert_int_equal(kiln_hub_compat_requirements(pos, NULL, &out, &e), KILN_EINVAL);
    assert_non_null(strstr(e.message, "at most 128 characters"));
    json_decref(pos);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hardware_minima_map_to_kiln_minima_and_all_means_no_limit),
        cmocka_unit_test(models_map_to_models),
        cmocka_unit_test(customer_isolation_maps_level_and_lists),
        cmocka_unit_test(other_keys_become_capability_paths_flattening_objects),
        cmocka_unit_test(negative_requirements_exclude_and_may_stand_alone),
        cmocka_unit_test(wrong_types_are_refused_naming_the_field),
        cmocka_unit_test(hostile_nesting_and_sizes_are_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
