/*
 * The hub: section of the configuration and its KILN_HUB_* variables:
 * defaults, good values, and bad ones reported with the key and the fix,
 * never with a token's value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/config.h"
#include "kiln/err.h"
#include "kiln_test.h"

static char dir[256];
static kiln_config_t cfg;
static kiln_problems_t problems;
static char *no_env[] = {NULL};

static int load(const char *yaml, char **env)
{
    char path[400];
    snprintf(path, sizeof path, "%s/kiln.yaml", dir);
    FILE *f = fopen(path, "w");
    fputs(yaml ? yaml : "", f);
    fclose(f);
    kiln_problems_clear(&problems);
    kiln_config_free(&cfg);
    return kiln_config_load(&cfg, path, env ? env : no_env, &problems);
}

static bool has_problem(const char *needle)
{
    for (size_t i = 0; i < problems.count; i++) {
        if (strstr(problems.items[i], needle))
            return true;
    }
    for (size_t i = 0; i < problems.count; i++)
        fprintf(stderr, "  problem: %s\n", problems.items[i]);
    return false;
}

static bool problems_mention(const char *text)
{
    for (size_t i = 0; i < problems.count; i++) {
        if (strstr(problems.items[i], text))
            return true;
    }
    return false;
}

static void hub_defaults_are_loopback_8080_and_no_tokens(void **state)
{
    assert_int_equal(load(NULL, NULL), 0);
    assert_string_equal(cfg.hub.listen, "127.0.0.1:8080");
    assert_int_equal(cfg.hub.threads, 64);
    assert_int_equal(cfg.hub.max_body_bytes, 2 * 1048576);
    assert_int_equal(cfg.hub.n_tokens, 0);
    assert_int_equal(cfg.hub.n_cors_origins, 0);
}

static void hub_section_loads_tokens_roles_and_origins(void **state)
{
    assert_int_equal(
        load("hub:\n"
             "  listen: 0.0.0.0:9000\n"
             "  threads: 16\n"
             "  max_body_bytes: 65536\n"
             "  tokens:\n"
             "    - {name: ci, role: submit, token: abcdefghijklmnop1234}\n"
             "    - {name: ops, role: admin, token: zyxwvutsrqponmlk9876}\n"
             "  cors_origins: [\"https://app.example.com\", \"http://localhost:3000\"]\n",
             NULL),
        0);
    assert_string_equal(cfg.hub.listen, "0.0.0.0:9000");
    assert_int_equal(cfg.hub.threads, 16);
    assert_int_equal(cfg.hub.max_body_bytes, 65536);
    assert_int_equal(cfg.hub.n_tokens, 2);
    assert_string_equal(cfg.hub.tokens[0].name, "ci");
    assert_int_equal(cfg.hub.tokens[0].role, KILN_HUB_ROLE_SUBMIT);
    assert_int_equal(cfg.hub.tokens[1].role, KILN_HUB_ROLE_ADMIN);
    assert_int_equal(cfg.hub.n_cors_origins, 2);
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    char *text = json_dumps(shown, 0);
    assert_null(strstr(text, "abcdefghijklmnop1234"));
    assert_non_null(strstr(text, "\"role\": \"submit\""));
    free(text);
    json_decref(shown);
}

static void environment_overrides_the_hub_section(void **state)
{
    char *env[] = {"KILN_HUB_LISTEN=127.0.0.1:7000", "KILN_HUB_RATE_LIMIT_PER_S=50",
                   "KILN_HUB_TOKENS=dash:read:readtoken-0123456789,ops:admin:admintoken-0123456789",
                   "KILN_HUB_CORS_ORIGINS=https://a.example,https://b.example", NULL};
    assert_int_equal(load("hub:\n  listen: 127.0.0.1:9000\n", env), 0);
    assert_string_equal(cfg.hub.listen, "127.0.0.1:7000");
    assert_int_equal(cfg.hub.rate_limit_per_s, 50);
    assert_int_equal(cfg.hub.n_tokens, 2);
    assert_int_equal(cfg.hub.tokens[0].role, KILN_HUB_ROLE_READ);
    assert_string_equal(cfg.hub.tokens[1].token, "admintoken-0123456789");
    assert_int_equal(cfg.hub.n_cors_origins, 2);
}

static void bad_hub_values_name_the_key_and_the_fix(void **state)
{
    assert_int_equal(load("hub:\n"
                          "  listen: \"localhost:http\"\n"
                          "  threads: 2\n"
                          "  max_body_bytes: 10\n"
                          "  colour: red\n"
                          "  rate_limit_per_s: -1\n"
                          "  tokens:\n"
                          "    - {name: ci, role: boss, token: abcdefghijklmnop1234}\n"
                          "    - {name: ops, role: admin, token: short-secret}\n"
                          "    - {name: ops2, role: read, token: abcdefghijklmnop1234, x: 1}\n"
                          "  cors_origins: [\"ftp://nope\"]\n",
                          NULL),
                     KILN_EINVAL);
    assert_true(has_problem("kiln.yaml:2: hub.listen: expected host:port or port"));
    assert_true(has_problem("hub.threads: expected an integer 4-1024, got \"2\""));
    assert_true(has_problem("hub.max_body_bytes: expected an integer 1024-67108864"));
    assert_true(has_problem("hub.colour: unknown key; expected one of listen"));
    assert_true(has_problem("hub.rate_limit_per_s: expected an integer 0-1000000"));
    assert_true(has_problem("hub.tokens[0]: role: expected admin, submit or read, got \"boss\""));
    assert_true(has_problem("hub.tokens[1]: token: expected 16-256 printable characters"));
    assert_true(has_problem("hub.tokens[2].x: unknown key"));
    assert_true(has_problem("hub.cors_origins: expected \"*\" or origins like"));
    assert_false(problems_mention("short-secret"));
}

static void a_bad_environment_token_is_named_without_its_value(void **state)
{
    char *env[] = {"KILN_HUB_TOKENS=ci:submit:tooshort,just-a-token", "KILN_HUB_THREADS=lots",
                   NULL};
    assert_int_equal(load(NULL, env), KILN_EINVAL);
    assert_true(has_problem("environment KILN_HUB_TOKENS entry 0: token: expected 16-256"));
    assert_true(has_problem("environment KILN_HUB_TOKENS entry 1: expected NAME:ROLE:TOKEN"));
    assert_true(has_problem("environment KILN_HUB_THREADS: expected an integer 4-1024"));
    assert_false(problems_mention("tooshort"));
    assert_false(problems_mention("just-a-token"));
}

static void a_hub_flag_sets_the_listen_address(void **state)
{
    assert_int_equal(load(NULL, NULL), 0);
    assert_int_equal(kiln_config_set_flag(&cfg, "hub.listen", "--listen", "127.0.0.1:0", &problems),
                     0);
    assert_string_equal(cfg.hub.listen, "127.0.0.1:0");
    assert_int_equal(kiln_config_set_flag(&cfg, "hub.listen", "--listen", "nope", &problems),
                     KILN_EINVAL);
    assert_true(has_problem("--listen: expected host:port"));
}

static void webhooks_load_from_the_file_a_secret_file_and_the_environment(void **state)
{
    char secret_path[400], yaml[1024];
    snprintf(secret_path, sizeof secret_path, "%s/webhook.secret", dir);
    FILE *f = fopen(secret_path, "w");
    fputs("file-secret-0123456789abcdef\n", f);
    fclose(f);
    snprintf(yaml, sizeof yaml,
             "hub:\n  webhooks:\n    default_url: https://hooks.example/in\n"
             "    max_attempts: 7\n    secret_file: %s\n",
             secret_path);
    assert_int_equal(load(yaml, NULL), 0);
    assert_string_equal(cfg.hub.webhooks.secret, "file-secret-0123456789abcdef");
    assert_string_equal(cfg.hub.webhooks.default_url, "https://hooks.example/in");
    assert_int_equal(cfg.hub.webhooks.max_attempts, 7);
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    char *text = json_dumps(shown, 0);
    assert_null(strstr(text, "file-secret"));
    assert_non_null(strstr(text, "\"max_attempts\": 7"));
    assert_non_null(strstr(text, "webhook.secret\"")); /* the file, which loads back */
    free(text);
    json_decref(shown);

    char *env[] = {"KILN_HUB_WEBHOOKS_SECRET=env-secret-0123456789abcdef",
                   "KILN_HUB_WEBHOOKS_MAX_ATTEMPTS=2", NULL};
    assert_int_equal(load(yaml, env), 0);
    assert_string_equal(cfg.hub.webhooks.secret, "env-secret-0123456789abcdef");
    assert_int_equal(cfg.hub.webhooks.max_attempts, 2);
    assert_int_equal(load(NULL, NULL), 0);
    assert_null(cfg.hub.webhooks.secret);
    assert_int_equal(cfg.hub.webhooks.max_attempts, 5);
}

static void bad_webhook_settings_name_the_key_and_never_show_the_secret(void **state)
{
    assert_int_equal(load("hub:\n  webhooks:\n    secret: inline-secret-0123456789\n"
                          "    default_url: ftp://nope\n    max_attempts: 50\n"
                          "    secret_file: /nonexistent/kiln.secret\n    colour: red\n",
                          NULL),
                     KILN_EINVAL);
    assert_true(has_problem("hub.webhooks.secret: keep the secret out of kiln.yaml"));
    assert_true(has_problem("hub.webhooks.default_url: expected an http:// or https:// URL"));
    assert_true(has_problem("hub.webhooks.max_attempts: expected an integer 1-20, got \"50\""));
    assert_true(has_problem("hub.webhooks.secret_file: cannot read the secret file"));
    assert_true(has_problem("hub.webhooks.colour: unknown key"));
    assert_false(problems_mention("inline-secret"));
    char *env[] = {"KILN_HUB_WEBHOOKS_SECRET=short\x01", NULL};
    assert_int_equal(load(NULL, env), KILN_EINVAL);
    assert_true(has_problem("environment KILN_HUB_WEBHOOKS_SECRET: expected a secret of 16-1024"));
    assert_false(problems_mention("short"));
}

int main(void)
{
    kiln_test_tmpdir(dir, sizeof dir);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hub_defaults_are_loopback_8080_and_no_tokens),
        cmocka_unit_test(hub_section_loads_tokens_roles_and_origins),
        cmocka_unit_test(environment_overrides_the_hub_section),
        cmocka_unit_test(bad_hub_values_name_the_key_and_the_fix),
        cmocka_unit_test(a_bad_environment_token_is_named_without_its_value),
        cmocka_unit_test(a_hub_flag_sets_the_listen_address),
        cmocka_unit_test(webhooks_load_from_the_file_a_secret_file_and_the_environment),
        cmocka_unit_test(bad_webhook_settings_name_the_key_and_never_show_the_secret),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    kiln_problems_clear(&problems);
    kiln_config_free(&cfg);
    return failed;
}
