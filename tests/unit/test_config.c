/*
 * Configuration: defaults < file < environment, one schema, every problem
 * reported with file, line, field, expected and actual.
 */
#include "kiln_test.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln/config.h"
#include "kiln/err.h"

static char tmp_dir[256];
static char file_path[512];
static kiln_config_t cfg;
static kiln_problems_t problems;
static char *no_env[] = {NULL};

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    kiln_test_tmpdir(tmp_dir, sizeof tmp_dir);
    memset(&cfg, 0, sizeof cfg);
    memset(&problems, 0, sizeof problems);
    return 0;
}

static int teardown(void **state)
{
    kiln_config_free(&cfg);
    kiln_problems_clear(&problems);
    nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Writes text to tmp_dir/name and returns its path (in file_path). */
static const char *write_file(const char *name, const char *text)
{
    snprintf(file_path, sizeof file_path, "%s/%s", tmp_dir, name);
    FILE *f = fopen(file_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return file_path;
}

static int load_yaml(const char *yaml, char **env)
{
    const char *path = yaml ? write_file("kiln.yaml", yaml) : NULL;
    return kiln_config_load(&cfg, path, env ? env : no_env, &problems);
}

static void dump_problems(void)
{
    fprintf(stderr, "%zu problem(s):\n", problems.count);
    for (size_t i = 0; i < problems.count; i++)
        fprintf(stderr, "  [%zu] %s\n", i, problems.items[i]);
}

/* Asserts that exactly one problem equals the printf-formatted text. */
static void assert_problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void assert_problem(const char *fmt, ...)
{
    char want[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < problems.count; i++) {
        if (strcmp(problems.items[i], want) == 0)
            return;
    }
    dump_problems();
    fail_msg("no problem reads: %s", want);
}

/* Asserts that some problem contains every one of the given substrings. */
static void assert_problem_has(const char *a, const char *b)
{
    for (size_t i = 0; i < problems.count; i++) {
        if (strstr(problems.items[i], a) && (!b || strstr(problems.items[i], b)))
            return;
    }
    dump_problems();
    fail_msg("no problem contains \"%s\"%s%s", a, b ? " and " : "", b ? b : "");
}

static void assert_ok(int rc)
{
    if (rc != 0 || problems.count != 0) {
        dump_problems();
        fail_msg("expected a valid config, got rc %d", rc);
    }
}

static void defaults_apply_when_there_is_no_file_and_no_environment(void **state)
{
    char cwd[512], host[256] = {0};
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmp_dir), 0);
    int rc = kiln_config_load(&cfg, NULL, no_env, &problems);
    assert_int_equal(chdir(cwd), 0);
    assert_ok(rc);
    assert_null(cfg.source_path);
    assert_string_equal(cfg.redis_url, "redis://127.0.0.1:6379");
    gethostname(host, sizeof host - 1);
    assert_string_equal(cfg.machine_id, host);
    assert_int_equal(cfg.log_format, KILN_LOG_JSON);
    assert_int_equal(cfg.log_level, KILN_LOG_INFO);
    assert_int_equal(cfg.broker.max_payload_bytes, 1048576);
    assert_int_equal(cfg.broker.stream_max_len, 100000);
    assert_int_equal(cfg.broker.retention_age_s, 604800);
    assert_int_equal(cfg.broker.retention_count, 10000);
    assert_int_equal(cfg.broker.default_max_attempts, 3);
    assert_int_equal(cfg.broker.backoff_base_ms, 1000);
    assert_int_equal(cfg.broker.backoff_max_ms, 300000);
    assert_int_equal(cfg.broker.lease_ms, 30000);
    assert_null(cfg.worker.id);
    assert_int_equal(cfg.worker.n_connectors, 0);
    assert_true(json_is_object(cfg.worker.capabilities));
    assert_int_equal(json_object_size(cfg.worker.capabilities), 0);
    assert_int_equal(cfg.worker.concurrency, 1);
    assert_int_equal(cfg.worker.heartbeat_ms, 0);
    assert_int_equal(cfg.worker.shutdown_grace_ms, 30000);
    assert_int_equal(cfg.worker.registry_ttl_ms, 15000);
    assert_int_equal(cfg.n_connectors, 0);
}

static void kiln_yaml_in_the_current_directory_is_read_when_no_path_is_given(void **state)
{
    char cwd[512];
    write_file("kiln.yaml", "worker:\n  concurrency: 7\n");
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmp_dir), 0);
    int rc = kiln_config_load(&cfg, NULL, no_env, &problems);
    assert_int_equal(chdir(cwd), 0);
    assert_ok(rc);
    assert_string_equal(cfg.source_path, "kiln.yaml");
    assert_int_equal(cfg.worker.concurrency, 7);
}

static void a_missing_explicit_file_is_a_problem(void **state)
{
    char path[512];
    snprintf(path, sizeof path, "%s/nope.yaml", tmp_dir);
    assert_int_equal(kiln_config_load(&cfg, path, no_env, &problems), KILN_EINVAL);
    assert_problem_has(path, "check the path");
}

static void env_overrides_file_overrides_defaults(void **state)
{
    char *env[] = {"KILN_WORKER_CONCURRENCY=8", "KILN_LOG_FORMAT=text", NULL};
    assert_ok(load_yaml("log:\n"
                        "  format: json\n"
                        "  level: debug\n"
                        "broker:\n"
                        "  lease_ms: 5000\n"
                        "worker:\n"
                        "  concurrency: 4\n",
                        env));
    assert_int_equal(cfg.worker.concurrency, 8);         /* environment */
    assert_int_equal(cfg.log_format, KILN_LOG_TEXT);     /* environment */
    assert_int_equal(cfg.log_level, KILN_LOG_DEBUG);     /* file */
    assert_int_equal(cfg.broker.lease_ms, 5000);         /* file */
    assert_int_equal(cfg.broker.stream_max_len, 100000); /* default */
    assert_string_equal(cfg.source_path, file_path);
}

static void every_scalar_setting_has_a_KILN_environment_name(void **state)
{
    char *env[] = {"KILN_REDIS_URL=redis://10.0.0.5:6380/2",
                   "KILN_MACHINE_ID=gpu-box-1",
                   "KILN_LOG_LEVEL=warn",
                   "KILN_BROKER_MAX_PAYLOAD_BYTES=2048",
                   "KILN_BROKER_STREAM_MAX_LEN=500",
                   "KILN_BROKER_RETENTION_AGE_S=60",
                   "KILN_BROKER_RETENTION_COUNT=0",
                   "KILN_BROKER_DEFAULT_MAX_ATTEMPTS=5",
                   "KILN_BROKER_BACKOFF_BASE_MS=10",
                   "KILN_BROKER_BACKOFF_MAX_MS=20",
                   "KILN_BROKER_LEASE_MS=900",
                   "KILN_WORKER_ID=w-1",
                   "KILN_WORKER_CONNECTORS=simulation, exec",
                   "KILN_WORKER_CAPABILITIES={\"gpu_memory_gb\": 24, \"pool\": \"fast\"}",
                   "KILN_WORKER_HEARTBEAT_MS=300",
                   "KILN_WORKER_SHUTDOWN_GRACE_MS=0",
                   "KILN_WORKER_REGISTRY_TTL_MS=1000",
                   NULL};
    assert_ok(load_yaml(NULL, env));
    assert_string_equal(cfg.redis_url, "redis://10.0.0.5:6380/2");
    assert_string_equal(cfg.machine_id, "gpu-box-1");
    assert_int_equal(cfg.log_level, KILN_LOG_WARN);
    assert_int_equal(cfg.broker.max_payload_bytes, 2048);
    assert_int_equal(cfg.broker.stream_max_len, 500);
    assert_int_equal(cfg.broker.retention_age_s, 60);
    assert_int_equal(cfg.broker.retention_count, 0);
    assert_int_equal(cfg.broker.default_max_attempts, 5);
    assert_int_equal(cfg.broker.backoff_base_ms, 10);
    assert_int_equal(cfg.broker.backoff_max_ms, 20);
    assert_int_equal(cfg.broker.lease_ms, 900);
    assert_string_equal(cfg.worker.id, "w-1");
    assert_int_equal(cfg.worker.n_connectors, 2);
    assert_string_equal(cfg.worker.connectors[0], "simulation");
    assert_string_equal(cfg.worker.connectors[1], "exec");
    assert_int_equal(json_integer_value(json_object_get(cfg.worker.capabilities, "gpu_memory_gb")),
                     24);
    assert_int_equal(cfg.worker.heartbeat_ms, 300);
    assert_int_equal(cfg.worker.shutdown_grace_ms, 0);
    assert_int_equal(cfg.worker.registry_ttl_ms, 1000);
}

static void legacy_names_HUB_REDIS_URL_MACHINE_ID_WORKER_CONNECTORS_are_honoured(void **state)
{
    char *env[] = {"HUB_REDIS_URL=redis://hub:6379", "MACHINE_ID=machine-001",
                   "WORKER_CONNECTORS=comfyui,openai", NULL};
    assert_ok(load_yaml("redis:\n  url: redis://file:6379\n", env));
    assert_string_equal(cfg.redis_url, "redis://hub:6379");
    assert_string_equal(cfg.machine_id, "machine-001");
    assert_int_equal(cfg.worker.n_connectors, 2);
    assert_string_equal(cfg.worker.connectors[0], "comfyui");
    assert_string_equal(cfg.worker.connectors[1], "openai");
}

static void KILN_names_win_over_legacy_names(void **state)
{
    char *env[] = {"HUB_REDIS_URL=redis://legacy:6379",
                   "KILN_REDIS_URL=redis://kiln:6379",
                   "MACHINE_ID=legacy",
                   "KILN_MACHINE_ID=kiln",
                   "WORKER_CONNECTORS=openai",
                   "KILN_WORKER_CONNECTORS=simulation",
                   NULL};
    assert_ok(load_yaml(NULL, env));
    assert_string_equal(cfg.redis_url, "redis://kiln:6379");
    assert_string_equal(cfg.machine_id, "kiln");
    assert_int_equal(cfg.worker.n_connectors, 1);
    assert_string_equal(cfg.worker.connectors[0], "simulation");
}

static void empty_environment_values_count_as_unset(void **state)
{
    char *env[] = {"KILN_WORKER_CONCURRENCY=", "KILN_REDIS_URL=", "HUB_REDIS_URL=redis://hub:1",
                   NULL};
    assert_ok(load_yaml("worker:\n  concurrency: 3\n", env));
    assert_int_equal(cfg.worker.concurrency, 3);
    assert_string_equal(cfg.redis_url, "redis://hub:1");
}

static void bad_config_reports_every_problem_with_file_line_field_expected_actual(void **state)
{
    int rc = load_yaml("# a bad file\n"
                       "worker:\n"
                       "  concurrency: abc\n"
                       "  registry_ttl_ms: 5\n"
                       "log:\n"
                       "  format: xml\n"
                       "  level: loud\n"
                       "broker:\n"
                       "  lease_ms: 1.5\n"
                       "machine:\n"
                       "  id: \"has space\"\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:3: worker.concurrency: expected an integer 1-1024, got \"abc\"", f);
    assert_problem("%s:4: worker.registry_ttl_ms: expected an integer 1000-3600000, got 5", f);
    assert_problem("%s:6: log.format: expected json or text, got \"xml\"", f);
    assert_problem("%s:7: log.level: expected debug, info, warn or error, got \"loud\"", f);
    assert_problem("%s:9: broker.lease_ms: expected an integer 100-3600000, got 1.5", f);
    assert_problem("%s:11: machine.id: expected a name of letters, digits, '.', '_' or '-' "
                   "(1-128 characters), got \"has space\"",
                   f);
    assert_int_equal(problems.count, 6);
}

static void file_and_environment_problems_are_reported_together(void **state)
{
    char *env[] = {"KILN_WORKER_CONCURRENCY=x", "KILN_BROKER_LEASE_MS=10", NULL};
    assert_int_equal(load_yaml("worker:\n  concurrency: 0\n", env), KILN_EINVAL);
    assert_problem("%s:2: worker.concurrency: expected an integer 1-1024, got 0", file_path);
    assert_problem("environment KILN_WORKER_CONCURRENCY: expected an integer 1-1024, got \"x\"");
    assert_problem("environment KILN_BROKER_LEASE_MS: expected an integer 100-3600000, got \"10\"");
    assert_int_equal(problems.count, 3);
}

static void wrong_types_are_refused(void **state)
{
    int rc = load_yaml("worker:\n"
                       "  concurrency: \"4\"\n"
                       "  connectors: 5\n"
                       "  capabilities: [gpu]\n"
                       "  id: [a]\n"
                       "redis:\n"
                       "  url: true\n"
                       "broker: 12\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:2: worker.concurrency: expected an integer 1-1024, got \"4\" (a quoted "
                   "string; remove the quotes)",
                   f);
    assert_problem("%s:3: worker.connectors: expected a list of connector names, got 5", f);
    assert_problem("%s:4: worker.capabilities: expected a mapping, got a list", f);
    assert_problem_has(":5: worker.id: expected a name", "got a list");
    assert_problem_has(":7: redis.url: expected a URL redis://", "got true");
    assert_problem("%s:8: broker: expected a mapping, got 12", f);
    assert_int_equal(problems.count, 6);
}

static void out_of_range_numbers_are_refused(void **state)
{
    int rc = load_yaml("worker:\n"
                       "  concurrency: 1025\n"
                       "  shutdown_grace_ms: -1\n"
                       "broker:\n"
                       "  default_max_attempts: 0\n"
                       "  max_payload_bytes: 99999999999999999999999\n"
                       "  retention_count: 10000001\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:2: worker.concurrency: expected an integer 1-1024, got 1025", f);
    assert_problem("%s:3: worker.shutdown_grace_ms: expected an integer 0-3600000, got -1", f);
    assert_problem("%s:5: broker.default_max_attempts: expected an integer 1-100, got 0", f);
    assert_problem("%s:6: broker.max_payload_bytes: expected an integer 1024-67108864, got 1e+23",
                   f);
    assert_problem("%s:7: broker.retention_count: expected an integer 0-10000000, got 10000001", f);
    assert_int_equal(problems.count, 5);
}

static void range_limits_are_inclusive(void **state)
{
    assert_ok(load_yaml("worker:\n  concurrency: 1024\n  registry_ttl_ms: 1000\n"
                        "broker:\n  retention_count: 0\n  lease_ms: 100\n",
                        NULL));
    assert_int_equal(cfg.worker.concurrency, 1024);
    assert_int_equal(cfg.broker.lease_ms, 100);
}

static void heartbeat_must_be_shorter_than_the_lease(void **state)
{
    char *env[] = {"KILN_WORKER_HEARTBEAT_MS=30000", NULL};
    assert_int_equal(load_yaml(NULL, env), KILN_EINVAL);
    assert_problem("environment KILN_WORKER_HEARTBEAT_MS: expected 0 (a third of the lease) or "
                   "less than broker.lease_ms (30000), got 30000");
}

static void backoff_base_must_not_exceed_its_maximum(void **state)
{
    assert_int_equal(load_yaml("broker:\n  backoff_base_ms: 5000\n  backoff_max_ms: 100\n", NULL),
                     KILN_EINVAL);
    assert_problem("%s:2: broker.backoff_base_ms: expected at most broker.backoff_max_ms (100), "
                   "got 5000",
                   file_path);
}

static void unknown_keys_are_refused_with_a_did_you_mean(void **state)
{
    int rc = load_yaml("wroker:\n"
                       "  concurrency: 2\n"
                       "worker:\n"
                       "  concurency: 2\n"
                       "  lease_ms: 100\n"
                       "  colour: blue\n"
                       "concurrency: 3\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:1: wroker: unknown key; did you mean worker?", f);
    assert_problem("%s:4: worker.concurency: unknown key; did you mean worker.concurrency?", f);
    assert_problem("%s:5: worker.lease_ms: unknown key; did you mean broker.lease_ms?", f);
    assert_problem("%s:6: worker.colour: unknown key; expected one of id, connectors, "
                   "capabilities, concurrency, heartbeat_ms, shutdown_grace_ms, registry_ttl_ms, "
                   "prefetch, active_windows, health_interval_ms",
                   f);
    assert_problem("%s:7: concurrency: unknown key; did you mean worker.concurrency?", f);
    assert_int_equal(problems.count, 5);
}

static void json_file_loads_like_yaml(void **state)
{
    assert_ok(load_yaml("redis:\n  url: redis://r:6379\n"
                        "worker:\n  connectors: [gpt, simulation]\n  concurrency: 2\n"
                        "  capabilities:\n    gpu_memory_gb: 24\n    models: [sdxl]\n"
                        "connectors:\n  gpt:\n    type: openai\n    base_url: http://x/v1\n",
                        NULL));
    json_t *from_yaml = kiln_config_to_json_redacted(&cfg);
    kiln_config_free(&cfg);
    const char *json_path =
        write_file("kiln.json", "{\n"
                                "  \"redis\": {\"url\": \"redis://r:6379\"},\n"
                                "  \"worker\": {\n"
                                "    \"connectors\": [\"gpt\", \"simulation\"],\n"
                                "    \"concurrency\": 2,\n"
                                "    \"capabilities\": {\"gpu_memory_gb\": 24, "
                                "\"models\": [\"sdxl\"]}\n"
                                "  },\n"
                                "  \"connectors\": {\"gpt\": {\"type\": "
                                "\"openai\", \"base_url\": \"http://x/v1\"}}\n"
                                "}\n");
    assert_ok(kiln_config_load(&cfg, json_path, no_env, &problems));
    json_t *from_json = kiln_config_to_json_redacted(&cfg);
    assert_true(json_equal(from_yaml, from_json));
    json_decref(from_yaml);
    json_decref(from_json);
}

static void json_file_problems_have_lines_too(void **state)
{
    const char *path = write_file("kiln.json", "{\n"
                                               "  \"worker\": {\n"
                                               "    \"concurrency\": \"many\"\n"
                                               "  }\n"
                                               "}\n");
    assert_int_equal(kiln_config_load(&cfg, path, no_env, &problems), KILN_EINVAL);
    assert_problem("%s:3: worker.concurrency: expected an integer 1-1024, got \"many\"", path);
}

static void malformed_yaml_is_refused_with_its_line(void **state)
{
    assert_int_equal(
        load_yaml("worker:\n  concurrency: 2\n  id: [unclosed\nlog:\n  level: info\n", NULL),
        KILN_EINVAL);
    assert_int_equal(problems.count, 1);
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s:", file_path);
    assert_true(strncmp(problems.items[0], prefix, strlen(prefix)) == 0);
    assert_problem_has("invalid YAML", NULL);
    /* The error names a line number right after the path. */
    int line = atoi(problems.items[0] + strlen(prefix));
    assert_true(line >= 3 && line <= 5);
}

static void malformed_json_is_refused_with_its_line(void **state)
{
    const char *path =
        write_file("kiln.json", "{\n  \"worker\": {\n    \"concurrency\": 2,,\n  }\n}\n");
    assert_int_equal(kiln_config_load(&cfg, path, no_env, &problems), KILN_EINVAL);
    char want[600];
    snprintf(want, sizeof want, "%s:3: invalid YAML", path);
    assert_problem_has(want, NULL);
}

static void yaml_aliases_are_refused(void **state)
{
    assert_int_equal(load_yaml("base: &b\n  concurrency: 2\nworker: *b\n", NULL), KILN_EINVAL);
    assert_int_equal(problems.count, 1);
    assert_problem_has("kiln.yaml:1: YAML anchors (&b) are not allowed", NULL);
    kiln_problems_clear(&problems);
    kiln_config_free(&cfg);
    assert_int_equal(load_yaml("worker:\n  id: *nothing\n", NULL), KILN_EINVAL);
    assert_problem_has("kiln.yaml:2:", "aliases");
}

static void yaml_tags_are_refused(void **state)
{
    assert_int_equal(load_yaml("worker:\n  concurrency: !!str 4\n", NULL), KILN_EINVAL);
    assert_problem_has("kiln.yaml:2: YAML tags (tag:yaml.org,2002:str) are not allowed", NULL);
}

static void duplicate_keys_are_refused(void **state)
{
    assert_int_equal(load_yaml("worker:\n  concurrency: 2\n  concurrency: 3\n", NULL), KILN_EINVAL);
    assert_problem_has("kiln.yaml:3: duplicate key \"concurrency\" (first on line 2)", NULL);
}

static void a_second_document_is_refused(void **state)
{
    assert_int_equal(load_yaml("worker:\n  concurrency: 2\n---\nworker:\n  concurrency: 3\n", NULL),
                     KILN_EINVAL);
    assert_problem_has("kiln.yaml:3: a second YAML document", NULL);
}

static void oversized_file_is_refused(void **state)
{
    size_t size = 1024 * 1024 + 1;
    char *text = malloc(size + 1);
    assert_non_null(text);
    memset(text, '#', size);
    for (size_t i = 79; i < size; i += 80)
        text[i] = '\n';
    text[size] = '\0';
    assert_int_equal(load_yaml(text, NULL), KILN_EINVAL);
    free(text);
    assert_int_equal(problems.count, 1);
    assert_problem_has("kiln.yaml: the file is 1048577 bytes, over the limit of 1048576", NULL);
}

static void a_file_of_exactly_one_mebibyte_is_accepted(void **state)
{
    size_t size = 1024 * 1024;
    char *text = malloc(size + 1);
    assert_non_null(text);
    memset(text, '#', size);
    for (size_t i = 79; i < size; i += 80)
        text[i] = '\n';
    text[size - 1] = '\n';
    text[size] = '\0';
    assert_ok(load_yaml(text, NULL));
    free(text);
}

static void nesting_deeper_than_32_is_refused(void **state)
{
    /* The top-level mapping (1), worker (2), capabilities (3), 30 lists: 33. */
    char text[512] = "worker:\n  capabilities: {a: ";
    for (int i = 0; i < 30; i++)
        strcat(text, "[");
    for (int i = 0; i < 30; i++)
        strcat(text, "]");
    strcat(text, "}\n");
    assert_int_equal(load_yaml(text, NULL), KILN_EINVAL);
    assert_problem_has("kiln.yaml:2: nesting deeper than 32 levels", NULL);
}

static void nesting_of_32_is_accepted(void **state)
{
    /* The top-level mapping (1), worker (2), capabilities (3), 29 lists: 32. */
    char text[512] = "worker:\n  capabilities: {a: ";
    for (int i = 0; i < 29; i++)
        strcat(text, "[");
    for (int i = 0; i < 29; i++)
        strcat(text, "]");
    strcat(text, "}\n");
    assert_ok(load_yaml(text, NULL));
}

static void empty_file_and_empty_values_keep_the_defaults(void **state)
{
    assert_ok(load_yaml("# nothing here yet\n", NULL));
    assert_int_equal(cfg.worker.concurrency, 1);
    kiln_config_free(&cfg);
    assert_ok(load_yaml("worker:\n  concurrency:\n  id: ~\nbroker:\n", NULL));
    assert_int_equal(cfg.worker.concurrency, 1);
    assert_null(cfg.worker.id);
}

static void a_top_level_that_is_not_a_mapping_is_refused(void **state)
{
    assert_int_equal(load_yaml("- worker\n", NULL), KILN_EINVAL);
    assert_problem_has("kiln.yaml:1: expected a mapping of sections", "got a list");
}

static void rediss_urls_are_refused_as_not_supported_yet(void **state)
{
    char *env[] = {"KILN_REDIS_URL=rediss://:hunter2@cache:6380", NULL};
    assert_int_equal(load_yaml(NULL, env), KILN_EINVAL);
    assert_problem_has("environment KILN_REDIS_URL: TLS (rediss://) is not supported yet",
                       "rediss://:***@cache:6380");
    for (size_t i = 0; i < problems.count; i++)
        assert_null(strstr(problems.items[i], "hunter2"));
}

static void malformed_redis_urls_are_refused_without_showing_the_password(void **state)
{
    const char *bad[] = {"http://h:1",   "redis://",        "redis://:pw@",
                         "redis://h:0",  "redis://h:70000", "redis://h:12x",
                         "redis://h/db", "redis://h h",     "redis://h/16"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char var[128];
        snprintf(var, sizeof var, "KILN_REDIS_URL=%s", bad[i]);
        char *env[] = {var, NULL};
        assert_int_equal(kiln_config_load(&cfg, NULL, env, &problems), KILN_EINVAL);
        assert_problem_has("environment KILN_REDIS_URL: expected a URL redis://", NULL);
        assert_null(strstr(problems.items[0], ":pw@"));
        kiln_problems_clear(&problems);
        kiln_config_free(&cfg);
    }
    const char *good[] = {"redis://h", "redis://h:6379", "redis://:pw@h:6379/3",
                          "redis://user:pw@10.1.2.3", "redis://h/15"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char var[128];
        snprintf(var, sizeof var, "KILN_REDIS_URL=%s", good[i]);
        char *env[] = {var, NULL};
        assert_ok(kiln_config_load(&cfg, NULL, env, &problems));
        assert_string_equal(cfg.redis_url, good[i]);
        kiln_config_free(&cfg);
    }
}

static void connector_names_and_types_are_checked(void **state)
{
    int rc = load_yaml("connectors:\n"
                       "  Bad_Name:\n"
                       "    type: openai\n"
                       "  notype:\n"
                       "    base_url: http://x\n"
                       "  badtype:\n"
                       "    type: Open AI\n"
                       "  scalar: 5\n"
                       "  good:\n"
                       "    type: exec\n"
                       "    argv: [/bin/cat]\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:2: connectors.Bad_Name: expected a connector name matching "
                   "[a-z0-9][a-z0-9_-]{0,63}, got \"Bad_Name\"",
                   f);
    assert_problem("%s:4: connectors.notype: missing type; add type: <connector type> "
                   "(simulation, exec, openai, ...)",
                   f);
    assert_problem("%s:7: connectors.badtype.type: expected a connector type of [a-z0-9_-] "
                   "(1-64 characters), got \"Open AI\"",
                   f);
    assert_problem("%s:8: connectors.scalar: expected a mapping with a type, got 5", f);
    assert_int_equal(problems.count, 4);
}

static void worker_connector_names_are_checked_and_duplicates_refused(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=openai,Bad!,openai", NULL};
    int rc = load_yaml("worker:\n  connectors:\n    - simulation\n    - exec\n    - simulation\n"
                       "    - 7\n",
                       env);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:5: worker.connectors[2]: \"simulation\" is listed twice; list each "
                   "connector once",
                   f);
    assert_problem("%s:6: worker.connectors[3]: expected a connector name matching "
                   "[a-z0-9][a-z0-9_-]{0,63}, got 7",
                   f);
    assert_problem("environment WORKER_CONNECTORS: expected a connector name matching "
                   "[a-z0-9][a-z0-9_-]{0,63}, got \"Bad!\"");
    assert_problem("environment WORKER_CONNECTORS: \"openai\" is listed twice; list each "
                   "connector once");
    assert_int_equal(problems.count, 4);
}

static void names_without_a_definition_are_connectors_of_that_type(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=simulation,gpt", NULL};
    assert_ok(load_yaml("connectors:\n"
                        "  gpt:\n"
                        "    type: openai\n"
                        "    base_url: http://localhost:9/v1\n"
                        "    model: gpt-4o\n",
                        env));
    const kiln_connector_config_t *sim = kiln_config_connector(&cfg, "simulation");
    assert_non_null(sim);
    assert_string_equal(sim->name, "simulation");
    assert_string_equal(sim->type, "simulation");
    assert_true(json_is_object(sim->options));
    assert_int_equal(json_object_size(sim->options), 0);
    const kiln_connector_config_t *gpt = kiln_config_connector(&cfg, "gpt");
    assert_non_null(gpt);
    assert_string_equal(gpt->type, "openai");
    assert_null(json_object_get(gpt->options, "type"));
    assert_string_equal(json_string_value(json_object_get(gpt->options, "model")), "gpt-4o");
    assert_null(kiln_config_connector(&cfg, "ollama"));
}

static void capabilities_from_the_environment_must_be_a_JSON_object(void **state)
{
    char *env[] = {"KILN_WORKER_CAPABILITIES=[1,2]", NULL};
    assert_int_equal(load_yaml(NULL, env), KILN_EINVAL);
    assert_problem("environment KILN_WORKER_CAPABILITIES: expected a JSON object nested at most 32 "
                   "deep, got \"[1,2]\"");
    kiln_problems_clear(&problems);
    kiln_config_free(&cfg);
    char *broken[] = {"KILN_WORKER_CAPABILITIES={gpu: 1}", NULL};
    assert_int_equal(load_yaml(NULL, broken), KILN_EINVAL);
    assert_problem_has("environment KILN_WORKER_CAPABILITIES: expected a JSON object, got "
                       "\"{gpu: 1}\" (",
                       NULL);
}

static void active_windows_load_canonical_and_bad_ones_name_the_setting(void **state)
{
    assert_ok(load_yaml("worker:\n  active_windows: [\"22:00-06:00\", \" 12:00-13:00\"]\n", NULL));
    assert_string_equal(cfg.worker.active_windows, "22:00-06:00,12:00-13:00");
    kiln_config_free(&cfg);
    char *env[] = {"KILN_WORKER_ACTIVE_WINDOWS=22:00-25:00", NULL};
    assert_int_equal(load_yaml(NULL, env), KILN_EINVAL);
    assert_problem_has("environment KILN_WORKER_ACTIVE_WINDOWS: expected windows like",
                       "got \"22:00-25:00\"");
}

static void redacted_show_hides_password_in_redis_url_and_secret_options(void **state)
{
    char *env[] = {"KILN_REDIS_URL=redis://:hunter2@cache:6379", NULL};
    assert_ok(load_yaml("worker:\n"
                        "  connectors: [gpt]\n"
                        "  capabilities:\n"
                        "    api_key_looking: shown\n"
                        "connectors:\n"
                        "  gpt:\n"
                        "    type: openai\n"
                        "    api_key: sk-live-1\n"
                        "    Auth_Token: tok-2\n"
                        "    client_SECRET: sec-3\n"
                        "    proxy_password: pw-4\n"
                        "    empty_key: \"\"\n"
                        "    base_url: https://user:pw-5@api.example/v1\n"
                        "    nested:\n"
                        "      webhook_secret: sec-6\n"
                        "    model: gpt-4o\n",
                        env));
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    char *text = json_dumps(shown, JSON_SORT_KEYS);
    const char *secrets[] = {"hunter2", "sk-live-1", "tok-2", "sec-3", "pw-4", "pw-5", "sec-6"};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        if (strstr(text, secrets[i]))
            fail_msg("secret %s is shown: %s", secrets[i], text);
    }
    json_t *gpt = json_object_get(json_object_get(shown, "connectors"), "gpt");
    assert_string_equal(json_string_value(json_object_get(json_object_get(shown, "redis"), "url")),
                        "redis://:***@cache:6379");
    assert_string_equal(json_string_value(json_object_get(gpt, "api_key")), "***");
    assert_string_equal(json_string_value(json_object_get(gpt, "Auth_Token")), "***");
    assert_string_equal(json_string_value(json_object_get(gpt, "empty_key")), "");
    assert_string_equal(json_string_value(json_object_get(gpt, "base_url")),
                        "https://user:***@api.example/v1");
    assert_string_equal(json_string_value(json_object_get(gpt, "model")), "gpt-4o");
    assert_string_equal(json_string_value(json_object_get(gpt, "type")), "openai");
    /* Capabilities are shown as they are. */
    assert_non_null(strstr(text, "\"api_key_looking\": \"shown\""));
    /* The config itself keeps the real values. */
    assert_string_equal(cfg.redis_url, "redis://:hunter2@cache:6379");
    free(text);
    json_decref(shown);
}

static void shown_config_loads_back_as_a_config_file(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=simulation", "KILN_WORKER_ID=w-9", NULL};
    assert_ok(load_yaml("broker:\n  lease_ms: 4000\nconnectors:\n  e:\n    type: exec\n"
                        "    argv: [/bin/cat]\n",
                        env));
    json_t *first = kiln_config_to_json_redacted(&cfg);
    char *text = json_dumps(first, JSON_INDENT(2));
    kiln_config_free(&cfg);
    const char *path = write_file("shown.json", text);
    free(text);
    assert_ok(kiln_config_load(&cfg, path, no_env, &problems));
    json_t *second = kiln_config_to_json_redacted(&cfg);
    assert_true(json_equal(first, second));
    json_decref(first);
    json_decref(second);
}

static void problems_are_bounded_at_200_then_counted(void **state)
{
    for (int i = 0; i < 250; i++)
        kiln_problems_add(&problems, "problem %d", i);
    assert_int_equal(problems.count, 201);
    assert_string_equal(problems.items[199], "problem 199");
    assert_string_equal(problems.items[200], "... and 50 more problems");
}

static void a_file_with_hundreds_of_problems_reports_200_and_counts_the_rest(void **state)
{
    size_t size = 250 * 16;
    char *text = calloc(1, size);
    assert_non_null(text);
    for (int i = 0; i < 250; i++)
        snprintf(text + strlen(text), size - strlen(text), "k%d: %d\n", i, i);
    assert_int_equal(load_yaml(text, NULL), KILN_EINVAL);
    free(text);
    assert_int_equal(problems.count, 201);
    assert_problem("%s:200: k199: unknown key; expected one of redis, machine, log, broker, "
                   "worker, connectors, services, templates, hub",
                   file_path);
    assert_string_equal(problems.items[200], "... and 50 more problems");
}

static void problems_are_appended_to_a_list_that_already_has_some(void **state)
{
    kiln_problems_add(&problems, "--log-level: earlier");
    char *env[] = {"KILN_LOG_LEVEL=chatty", NULL};
    assert_int_equal(load_yaml(NULL, env), KILN_EINVAL);
    assert_int_equal(problems.count, 2);
    assert_string_equal(problems.items[0], "--log-level: earlier");
    assert_problem("environment KILN_LOG_LEVEL: expected debug, info, warn or error, got "
                   "\"chatty\"");
}

static void control_characters_in_values_are_escaped_in_problems(void **state)
{
    char *env[] = {"KILN_MACHINE_ID=a\x1b[31mred", NULL};
    assert_int_equal(load_yaml(NULL, env), KILN_EINVAL);
    assert_problem("environment KILN_MACHINE_ID: expected a name of letters, digits, '.', '_' or "
                   "'-' (1-128 characters), got \"a\\x1b[31mred\"");
}

static void machine_settings_default_to_discovery_and_one_instance_per_gpu(void **state)
{
    assert_ok(load_yaml(NULL, NULL));
    assert_int_equal(cfg.machine.type, KILN_MACHINE_AUTO);
    assert_int_equal(cfg.machine.gpu_count, -1);
    assert_true(cfg.machine.has_gpu);
    assert_int_equal(cfg.machine.ram_gb, 0);
    assert_int_equal(cfg.machine.instances_per_gpu, 1);
    assert_int_equal(cfg.machine.api_workers, 1);
    assert_int_equal(cfg.machine.health_port, 9090);
    assert_int_equal(cfg.machine.install_timeout_s, 300);
    assert_int_equal(cfg.machine.n_pools, 0);
    assert_int_equal(cfg.n_services, 0);
    assert_int_equal(cfg.templates.comfyui.port, 8188);
    assert_int_equal(cfg.templates.a1111.port, 7860);
    assert_int_equal(cfg.templates.ollama.port, 11434);
    assert_int_equal(cfg.templates.comfyui.n_command, 6);
    assert_string_equal(cfg.templates.comfyui.command[5], "{port}");
    assert_null(cfg.templates.setup.command);
}

static void machine_legacy_names_of_the_earlier_system_are_honoured(void **state)
{
    char *env[] = {"MACHINE_TYPE=gpu",
                   "MACHINE_GPU_COUNT=2",
                   "MACHINE_HAS_GPU=true",
                   "MACHINE_RAM_GB=32",
                   "PM2_INSTANCES_PER_GPU=2",
                   "MACHINE_HEALTH_PORT=9191",
                   "SERVICE_INSTALL_TIMEOUT=600",
                   "MACHINE_POOLS=fast, heavy,",
                   NULL};
    assert_ok(load_yaml(NULL, env));
    assert_int_equal(cfg.machine.type, KILN_MACHINE_GPU);
    assert_int_equal(cfg.machine.gpu_count, 2);
    assert_true(cfg.machine.has_gpu);
    assert_int_equal(cfg.machine.ram_gb, 32);
    assert_int_equal(cfg.machine.instances_per_gpu, 2);
    assert_int_equal(cfg.machine.health_port, 9191);
    assert_int_equal(cfg.machine.install_timeout_s, 600);
    assert_int_equal(cfg.machine.n_pools, 2);
    assert_string_equal(cfg.machine.pools[0], "fast");
    assert_string_equal(cfg.machine.pools[1], "heavy");
}

static void machine_KILN_names_win_over_INSTANCES_PER_GPU_over_PM2_INSTANCES_PER_GPU(void **state)
{
    char *env[] = {"PM2_INSTANCES_PER_GPU=2",
                   "INSTANCES_PER_GPU=3",
                   "MACHINE_TYPE=gpu",
                   "KILN_MACHINE_TYPE=hybrid",
                   "MACHINE_HAS_GPU=yes",
                   "KILN_MACHINE_HAS_GPU=off",
                   "KILN_MACHINE_API_WORKERS=4",
                   "KILN_MACHINE_INSTALL_TIMEOUT_S=5",
                   NULL};
    assert_ok(load_yaml("machine:\n  instances_per_gpu: 1\n", env));
    assert_int_equal(cfg.machine.instances_per_gpu, 3);
    assert_int_equal(cfg.machine.type, KILN_MACHINE_HYBRID);
    assert_false(cfg.machine.has_gpu);
    assert_int_equal(cfg.machine.api_workers, 4);
    assert_int_equal(cfg.machine.install_timeout_s, 5);
    kiln_config_free(&cfg);
    char *kiln[] = {"PM2_INSTANCES_PER_GPU=2", "INSTANCES_PER_GPU=3",
                    "KILN_MACHINE_INSTANCES_PER_GPU=4", NULL};
    assert_ok(load_yaml(NULL, kiln));
    assert_int_equal(cfg.machine.instances_per_gpu, 4);
}

static void bad_machine_values_are_refused_with_file_and_line(void **state)
{
    char *env[] = {"PM2_INSTANCES_PER_GPU=17", "MACHINE_HAS_GPU=maybe", NULL};
    int rc = load_yaml("machine:\n"
                       "  type: quantum\n"
                       "  gpu_count: 65\n"
                       "  has_gpu: \"no\"\n"
                       "  health_port: 80\n"
                       "  pools: [Fast]\n"
                       "  install_timeout_s: 0\n",
                       env);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:2: machine.type: expected auto, gpu, api or hybrid, got \"quantum\"", f);
    assert_problem("%s:3: machine.gpu_count: expected an integer -1-64, got 65", f);
    assert_problem("%s:4: machine.has_gpu: expected true or false, got \"no\"", f);
    assert_problem("%s:5: machine.health_port: expected an integer 1024-65535, got 80", f);
    assert_problem("%s:6: machine.pools[0]: expected a pool name matching "
                   "[a-z0-9][a-z0-9_-]{0,63}, got \"Fast\"",
                   f);
    assert_problem("%s:7: machine.install_timeout_s: expected an integer 1-86400, got 0", f);
    assert_problem("environment PM2_INSTANCES_PER_GPU: expected an integer 1-16, got \"17\"");
    assert_problem("environment MACHINE_HAS_GPU: expected true or false (or 1/0, yes/no, "
                   "on/off), got \"maybe\"");
    assert_int_equal(problems.count, 8);
}

static void gpu_count_with_has_gpu_false_is_refused(void **state)
{
    char *env[] = {"MACHINE_HAS_GPU=false", NULL};
    assert_int_equal(load_yaml("machine:\n  gpu_count: 2\n", env), KILN_EINVAL);
    assert_problem("%s:2: machine.gpu_count: expected -1 or 0 when machine.has_gpu is false "
                   "(environment MACHINE_HAS_GPU), got 2; remove one of the two",
                   file_path);
}

static void services_load_with_argv_env_dependencies_readiness_and_restart(void **state)
{
    assert_ok(load_yaml("services:\n"
                        "  web:\n"
                        "    command: [/usr/bin/web, --port, \"{port}\"]\n"
                        "    env: {MODE: prod, WORKERS: 4, DEBUG: false}\n"
                        "    cwd: /srv/web\n"
                        "    depends_on: [db]\n"
                        "    ready: {http: \"http://127.0.0.1:{port}/health\"}\n"
                        "    restart: on-failure\n"
                        "    port: 3000\n"
                        "    gpu: 1\n"
                        "  db:\n"
                        "    command: [/usr/bin/db]\n"
                        "    ready: {tcp: \"127.0.0.1:5432\"}\n"
                        "  probe:\n"
                        "    command: [/bin/probe]\n"
                        "    ready: {command: [/bin/check, --quick]}\n",
                        NULL));
    assert_int_equal(cfg.n_services, 3);
    const kiln_service_config_t *web = &cfg.services[0];
    assert_string_equal(web->name, "web");
    assert_int_equal(web->n_command, 3);
    assert_string_equal(web->command[2], "{port}");
    assert_null(web->command[3]);
    assert_int_equal(web->n_env, 3);
    assert_string_equal(web->env[0], "MODE=prod");
    assert_string_equal(web->env[1], "WORKERS=4");
    assert_string_equal(web->env[2], "DEBUG=false");
    assert_string_equal(web->cwd, "/srv/web");
    assert_int_equal(web->n_depends_on, 1);
    assert_string_equal(web->depends_on[0], "db");
    assert_int_equal(web->ready.kind, KILN_READY_HTTP);
    assert_string_equal(web->ready.target, "http://127.0.0.1:{port}/health");
    assert_int_equal(web->restart, KILN_RESTART_ON_FAILURE);
    assert_int_equal(web->port, 3000);
    assert_int_equal(web->gpu, 1);
    const kiln_service_config_t *db = &cfg.services[1];
    assert_int_equal(db->ready.kind, KILN_READY_TCP);
    assert_int_equal(db->restart, KILN_RESTART_ALWAYS);
    assert_int_equal(db->port, 0);
    assert_int_equal(db->gpu, -1);
    assert_int_equal(cfg.services[2].ready.kind, KILN_READY_COMMAND);
    assert_string_equal(cfg.services[2].ready.command[1], "--quick");
}

static void bad_services_are_refused_with_file_and_line(void **state)
{
    int rc = load_yaml("services:\n"
                       "  shell:\n"
                       "    command: \"python3 app.py && rm -rf /\"\n"
                       "  noport:\n"
                       "    command: [/bin/x]\n"
                       "    port: 80\n"
                       "  flaky:\n"
                       "    command: [/bin/x]\n"
                       "    restart: sometimes\n"
                       "  ftp:\n"
                       "    command: [/bin/x]\n"
                       "    ready: {http: \"ftp://h/\"}\n"
                       "  nocommand:\n"
                       "    cwd: /tmp\n"
                       "  typo:\n"
                       "    comand: [/bin/x]\n"
                       "  selfish:\n"
                       "    command: [/bin/x]\n"
                       "    depends_on: [selfish]\n"
                       "  badenv:\n"
                       "    command: [/bin/x]\n"
                       "    env: {\"1BAD\": x}\n"
                       "  Web:\n"
                       "    command: [/bin/x]\n"
                       "  emptyarg:\n"
                       "    command: [/bin/x, \"\"]\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:3: services.shell.command: expected a command as a list of 1-256 strings "
                   "(argv; no shell), e.g. [\"python3\", \"main.py\"], got \"python3 app.py && "
                   "rm -rf /\"",
                   f);
    assert_problem("%s:6: services.noport.port: expected a port 1024-65535, got 80", f);
    assert_problem("%s:9: services.flaky.restart: expected always, on-failure or never, got "
                   "\"sometimes\"",
                   f);
    assert_problem("%s:12: services.ftp.ready.http: expected an http:// or https:// URL, got "
                   "\"ftp://h/\"",
                   f);
    assert_problem("%s:13: services.nocommand: missing command; add command: [program, args...] "
                   "(argv, no shell)",
                   f);
    assert_problem("%s:16: services.typo.comand: unknown key; expected one of command, env, cwd, "
                   "depends_on, ready, restart, backoff_ms, ready_timeout_ms, stop_timeout_ms, "
                   "memory_limit_mb, port, gpu, downloads",
                   f);
    assert_problem("%s:19: services.selfish.depends_on[0]: \"selfish\" is the service itself; "
                   "list each other service once",
                   f);
    assert_problem_has(":22: services.badenv.env.1BAD: expected a variable name", "\"1BAD\"");
    assert_problem("%s:23: services.Web: expected a service name matching "
                   "[a-z0-9][a-z0-9_-]{0,63}, got \"Web\"",
                   f);
    assert_problem("%s:26: services.emptyarg.command[1]: expected a non-empty string of at most "
                   "4096 bytes, got \"\"",
                   f);
    assert_int_equal(problems.count, 10);
}

static void service_downloads_load_with_url_sha256_and_path(void **state)
{
    (void)state;
    assert_ok(load_yaml(
        "services:\n"
        "  painter:\n"
        "    command: [/bin/x]\n"
        "    downloads:\n"
        "      - url: https://user:pw@models.example/sd.safetensors\n"
        "        sha256: "
        "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n"
        "        path: models/checkpoints/sd.safetensors\n"
        "      - {url: \"http://h/lora.bin?X-Amz-Signature=s1gn\", path: /opt/lora.bin}\n",
        NULL));
    const kiln_service_config_t *s = &cfg.services[0];
    assert_int_equal(s->n_downloads, 2);
    assert_string_equal(s->downloads[0].url, "https://user:pw@models.example/sd.safetensors");
    /* Stored lowercase, as kiln_download and sha256sum print it. */
    assert_string_equal(s->downloads[0].sha256,
                        "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    assert_string_equal(s->downloads[0].path, "models/checkpoints/sd.safetensors");
    assert_null(s->downloads[1].sha256);
    assert_string_equal(s->downloads[1].url, "http://h/lora.bin?X-Amz-Signature=s1gn");
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    char *text = json_dumps(shown, 0);
    assert_null(strstr(text, ":pw@"));
    assert_null(strstr(text, "s1gn"));
    assert_non_null(strstr(text, "lora.bin"));
    free(text);
    json_decref(shown);
}

static void bad_downloads_are_refused_naming_the_entry_and_the_fix(void **state)
{
    (void)state;
    int rc = load_yaml("services:\n"
                       "  a:\n"
                       "    command: [/bin/x]\n"
                       "    downloads: {url: http://h/x}\n"
                       "  b:\n"
                       "    command: [/bin/x]\n"
                       "    downloads:\n"
                       "      - {url: \"ftp://h/x\", path: x}\n"
                       "      - {url: \"http://h/x\", path: y, sha256: abc}\n"
                       "      - {url: \"http://h/x\"}\n"
                       "      - {url: \"http://h/x\", path: dir/}\n"
                       "      - {url: \"http://h/x\", path: z, size: 3}\n"
                       "  c:\n"
                       "    command: [/bin/x]\n"
                       "    downloads:\n"
                       "      - {url: \"http://h/1\", path: same}\n"
                       "      - {url: \"http://h/2\", path: same}\n"
                       "  a-very-long-service-name-that-leaves-no-room-for-the-suffix-x:\n"
                       "    command: [/bin/x]\n"
                       "    downloads: [{url: \"http://h/x\", path: x}]\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    const char *f = file_path;
    assert_problem("%s:4: services.a.downloads: expected a list of at most 64 {url, sha256, "
                   "path} mappings, got a mapping",
                   f);
    assert_problem("%s:8: services.b.downloads[0].url: expected an http:// or https:// URL, got "
                   "\"ftp://h/x\"",
                   f);
    assert_problem_has("services.b.downloads[1].sha256: expected 64 hex digits", "\"abc\"");
    assert_problem_has("services.b.downloads[2]: missing path", "each download needs url and path");
    assert_problem_has("services.b.downloads[3].path: expected a file path", "\"dir/\"");
    assert_problem_has("services.b.downloads[4].size: unknown key", "use url, sha256 or path");
    assert_problem_has("services.c.downloads[1].path: same is also the path of entry 0",
                       "give each download its own path");
    assert_problem_has("downloads: a service with downloads needs a name of at most 54 characters",
                       "shorten the name");
}

static void service_backoff_ms_sets_the_first_restart_delay_and_zero_is_allowed(void **state)
{
    assert_ok(load_yaml("services:\n"
                        "  fast:\n"
                        "    command: [/bin/x]\n"
                        "    backoff_ms: 0\n"
                        "  slow:\n"
                        "    command: [/bin/x]\n"
                        "    backoff_ms: 2500\n"
                        "  plain:\n"
                        "    command: [/bin/x]\n",
                        NULL));
    assert_int_equal(cfg.n_services, 3);
    assert_int_equal(cfg.services[0].backoff_ms, 0);
    assert_int_equal(cfg.services[1].backoff_ms, 2500);
    assert_int_equal(cfg.services[2].backoff_ms, -1); /* the supervisor's default */
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    const json_t *services = json_object_get(shown, "services");
    const json_t *fast = json_object_get(json_object_get(services, "fast"), "backoff_ms");
    assert_true(json_is_integer(fast));
    assert_int_equal(json_integer_value(fast), 0);
    assert_null(json_object_get(json_object_get(services, "plain"), "backoff_ms"));
    json_decref(shown);
}

static void service_ready_timeout_ms_sets_the_readiness_deadline(void **state)
{
    assert_ok(load_yaml("services:\n"
                        "  quick:\n"
                        "    command: [/bin/x]\n"
                        "    ready: {tcp: \"127.0.0.1:9\"}\n"
                        "    ready_timeout_ms: 5000\n"
                        "  plain:\n"
                        "    command: [/bin/x]\n",
                        NULL));
    assert_int_equal(cfg.services[0].ready_timeout_ms, 5000);
    assert_int_equal(cfg.services[1].ready_timeout_ms, -1); /* the supervisor's default */
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    const json_t *quick = json_object_get(json_object_get(shown, "services"), "quick");
    assert_int_equal(json_integer_value(json_object_get(quick, "ready_timeout_ms")), 5000);
    json_decref(shown);
}

static void bad_service_ready_timeout_ms_is_refused_with_file_and_line(void **state)
{
    int rc = load_yaml("services:\n"
                       "  zero:\n"
                       "    command: [/bin/x]\n"
                       "    ready_timeout_ms: 0\n"
                       "  text:\n"
                       "    command: [/bin/x]\n"
                       "    ready_timeout_ms: 2m\n"
                       "  huge:\n"
                       "    command: [/bin/x]\n"
                       "    ready_timeout_ms: 86400001\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    assert_problem(
        "%s:4: services.zero.ready_timeout_ms: expected milliseconds 100-86400000, got 0",
        file_path);
    assert_problem("%s:7: services.text.ready_timeout_ms: expected milliseconds 100-86400000, got "
                   "\"2m\"",
                   file_path);
    assert_problem("%s:10: services.huge.ready_timeout_ms: expected milliseconds 100-86400000, got "
                   "86400001",
                   file_path);
}

static void service_stop_timeout_and_memory_limit_reach_the_config(void **state)
{
    assert_ok(load_yaml("services:\n"
                        "  big:\n"
                        "    command: [/bin/x]\n"
                        "    stop_timeout_ms: 0\n"
                        "    memory_limit_mb: 2048\n"
                        "  plain:\n"
                        "    command: [/bin/x]\n",
                        NULL));
    assert_int_equal(cfg.services[0].stop_timeout_ms, 0); /* SIGKILL at once */
    assert_int_equal(cfg.services[0].memory_limit_mb, 2048);
    assert_int_equal(cfg.services[1].stop_timeout_ms, -1);
    assert_int_equal(cfg.services[1].memory_limit_mb, -1);
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    const json_t *big = json_object_get(json_object_get(shown, "services"), "big");
    assert_int_equal(json_integer_value(json_object_get(big, "stop_timeout_ms")), 0);
    assert_int_equal(json_integer_value(json_object_get(big, "memory_limit_mb")), 2048);
    json_decref(shown);
}

static void bad_service_stop_timeout_and_memory_limit_are_refused(void **state)
{
    int rc = load_yaml("services:\n"
                       "  a:\n"
                       "    command: [/bin/x]\n"
                       "    stop_timeout_ms: -5\n"
                       "  b:\n"
                       "    command: [/bin/x]\n"
                       "    stop_timeout_ms: 3600001\n"
                       "  c:\n"
                       "    command: [/bin/x]\n"
                       "    memory_limit_mb: 0\n"
                       "  d:\n"
                       "    command: [/bin/x]\n"
                       "    memory_limit_mb: 2GB\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    assert_problem("%s:4: services.a.stop_timeout_ms: expected milliseconds 0-3600000, got -5",
                   file_path);
    assert_problem("%s:7: services.b.stop_timeout_ms: expected milliseconds 0-3600000, got 3600001",
                   file_path);
    assert_problem("%s:10: services.c.memory_limit_mb: expected megabytes 1-1048576, got 0",
                   file_path);
    assert_problem("%s:13: services.d.memory_limit_mb: expected megabytes 1-1048576, got \"2GB\"",
                   file_path);
}

static void machine_api_token_comes_from_yaml_or_env_and_is_never_shown(void **state)
{
    assert_ok(load_yaml("machine:\n  api_token: \"file-token-123\"\n", NULL));
    assert_string_equal(cfg.machine.api_token, "file-token-123");
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    char *text = json_dumps(shown, 0);
    assert_null(strstr(text, "file-token-123"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(shown, "machine"), "api_token")), "***");
    free(text);
    json_decref(shown);
    kiln_config_free(&cfg);
    char *env[] = {"KILN_MACHINE_API_TOKEN=env-token-456", NULL};
    assert_ok(load_yaml("machine:\n  api_token: \"file-token-123\"\n", env));
    assert_string_equal(cfg.machine.api_token, "env-token-456"); /* the environment wins */
}

static void bad_machine_api_token_is_refused_without_echoing_it(void **state)
{
    int rc = load_yaml("machine:\n  api_token: \"pw 1\"\n", NULL);
    assert_int_equal(rc, KILN_EINVAL);
    assert_problem("%s:2: machine.api_token: expected a token of 8-256 visible ASCII characters "
                   "(no spaces; it goes in an Authorization header), got a value of 4 characters",
                   file_path);
    for (size_t i = 0; i < problems.count; i++)
        assert_null(strstr(problems.items[i], "pw 1"));
}

static void bad_service_backoff_ms_is_refused_with_file_and_line(void **state)
{
    int rc = load_yaml("services:\n"
                       "  negative:\n"
                       "    command: [/bin/x]\n"
                       "    backoff_ms: -1\n"
                       "  text:\n"
                       "    command: [/bin/x]\n"
                       "    backoff_ms: soon\n"
                       "  huge:\n"
                       "    command: [/bin/x]\n"
                       "    backoff_ms: 3600001\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    assert_problem("%s:4: services.negative.backoff_ms: expected milliseconds 0-3600000, got -1",
                   file_path);
    assert_problem("%s:7: services.text.backoff_ms: expected milliseconds 0-3600000, got \"soon\"",
                   file_path);
    assert_problem("%s:10: services.huge.backoff_ms: expected milliseconds 0-3600000, got 3600001",
                   file_path);
    assert_int_equal(problems.count, 3);
}

static void templates_override_ports_and_commands_and_refuse_unknown_keys(void **state)
{
    assert_ok(load_yaml("templates:\n"
                        "  comfyui:\n"
                        "    base_port: 9188\n"
                        "    command: [/opt/venv/bin/python, main.py, --port, \"{port}\"]\n"
                        "    cwd: /opt/ComfyUI\n"
                        "  setup:\n"
                        "    command: [/opt/setup.sh]\n"
                        "  ollama:\n"
                        "    port: 11500\n",
                        NULL));
    assert_int_equal(cfg.templates.comfyui.port, 9188);
    assert_int_equal(cfg.templates.comfyui.n_command, 4);
    assert_string_equal(cfg.templates.comfyui.command[0], "/opt/venv/bin/python");
    assert_string_equal(cfg.templates.comfyui.cwd, "/opt/ComfyUI");
    assert_string_equal(cfg.templates.setup.command[0], "/opt/setup.sh");
    assert_int_equal(cfg.templates.ollama.port, 11500);
    assert_int_equal(cfg.templates.a1111.port, 7860);
    kiln_config_free(&cfg);
    int rc = load_yaml("templates:\n"
                       "  comfyui:\n"
                       "    port: 9188\n"
                       "    base_port: 70000\n"
                       "  invokeai:\n"
                       "    base_port: 9090\n",
                       NULL);
    assert_int_equal(rc, KILN_EINVAL);
    assert_problem("%s:3: templates.comfyui.port: unknown key; expected one of base_port, "
                   "command, cwd, env",
                   file_path);
    assert_problem("%s:4: templates.comfyui.base_port: expected a port 1024-65535, got 70000",
                   file_path);
    assert_problem("%s:5: templates.invokeai: unknown key; expected one of setup, comfyui, "
                   "a1111, ollama, playwright",
                   file_path);
    assert_int_equal(problems.count, 3);
}

static void KILN_CONNECTOR_URLS_points_connectors_at_their_instances(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui,a1111",
                   "KILN_CONNECTOR_URLS=comfyui=http://127.0.0.1:8189,a1111=http://127.0.0.1:7861",
                   NULL};
    assert_ok(load_yaml("connectors:\n  comfyui:\n    type: comfyui\n"
                        "    base_url: http://127.0.0.1:8188\n    timeout_ms: 5\n",
                        env));
    const kiln_connector_config_t *c = kiln_config_connector(&cfg, "comfyui");
    assert_string_equal(json_string_value(json_object_get(c->options, "base_url")),
                        "http://127.0.0.1:8189");
    assert_int_equal(json_integer_value(json_object_get(c->options, "timeout_ms")), 5);
    const kiln_connector_config_t *a = kiln_config_connector(&cfg, "a1111");
    assert_string_equal(a->type, "a1111");
    assert_string_equal(json_string_value(json_object_get(a->options, "base_url")),
                        "http://127.0.0.1:7861");
    kiln_config_free(&cfg);
    char *bad[] = {"KILN_CONNECTOR_URLS=comfyui=ftp://x,=http://y", NULL};
    assert_int_equal(load_yaml(NULL, bad), KILN_EINVAL);
    assert_problem("environment KILN_CONNECTOR_URLS: expected NAME=URL entries separated by "
                   "commas (a connector name, an http:// or https:// URL), got "
                   "\"comfyui=ftp://x\"");
    assert_int_equal(problems.count, 2);
}

static void shown_machine_services_and_templates_load_back(void **state)
{
    char *env[] = {"MACHINE_TYPE=hybrid", "MACHINE_POOLS=fast", "MACHINE_HAS_GPU=0", NULL};
    assert_ok(load_yaml("services:\n"
                        "  web:\n"
                        "    command: [/usr/bin/web]\n"
                        "    env: {PORT: 1}\n"
                        "    ready: {command: [/bin/true]}\n"
                        "    depends_on: [db]\n"
                        "    gpu: 0\n"
                        "  db:\n"
                        "    command: [/usr/bin/db]\n"
                        "    ready: {tcp: \"h:1\"}\n"
                        "templates:\n  setup:\n    command: [/bin/setup]\n",
                        env));
    json_t *first = kiln_config_to_json_redacted(&cfg);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(first, "machine"), "type")), "hybrid");
    assert_true(json_is_false(json_object_get(json_object_get(first, "machine"), "has_gpu")));
    char *text = json_dumps(first, JSON_INDENT(2));
    kiln_config_free(&cfg);
    const char *path = write_file("shown.json", text);
    free(text);
    assert_ok(kiln_config_load(&cfg, path, no_env, &problems));
    json_t *second = kiln_config_to_json_redacted(&cfg);
    assert_true(json_equal(first, second));
    json_decref(first);
    json_decref(second);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(defaults_apply_when_there_is_no_file_and_no_environment),
        TEST(kiln_yaml_in_the_current_directory_is_read_when_no_path_is_given),
        TEST(a_missing_explicit_file_is_a_problem),
        TEST(env_overrides_file_overrides_defaults),
        TEST(every_scalar_setting_has_a_KILN_environment_name),
        TEST(legacy_names_HUB_REDIS_URL_MACHINE_ID_WORKER_CONNECTORS_are_honoured),
        TEST(KILN_names_win_over_legacy_names),
        TEST(empty_environment_values_count_as_unset),
        TEST(bad_config_reports_every_problem_with_file_line_field_expected_actual),
        TEST(file_and_environment_problems_are_reported_together),
        TEST(wrong_types_are_refused),
        TEST(out_of_range_numbers_are_refused),
        TEST(range_limits_are_inclusive),
        TEST(heartbeat_must_be_shorter_than_the_lease),
        TEST(backoff_base_must_not_exceed_its_maximum),
        TEST(unknown_keys_are_refused_with_a_did_you_mean),
        TEST(json_file_loads_like_yaml),
        TEST(json_file_problems_have_lines_too),
        TEST(malformed_yaml_is_refused_with_its_line),
        TEST(malformed_json_is_refused_with_its_line),
        TEST(yaml_aliases_are_refused),
        TEST(yaml_tags_are_refused),
        TEST(duplicate_keys_are_refused),
        TEST(a_second_document_is_refused),
        TEST(oversized_file_is_refused),
        TEST(a_file_of_exactly_one_mebibyte_is_accepted),
        TEST(nesting_deeper_than_32_is_refused),
        TEST(nesting_of_32_is_accepted),
        TEST(empty_file_and_empty_values_keep_the_defaults),
        TEST(a_top_level_that_is_not_a_mapping_is_refused),
        TEST(rediss_urls_are_refused_as_not_supported_yet),
        TEST(malformed_redis_urls_are_refused_without_showing_the_password),
        TEST(connector_names_and_types_are_checked),
        TEST(worker_connector_names_are_checked_and_duplicates_refused),
        TEST(names_without_a_definition_are_connectors_of_that_type),
        TEST(capabilities_from_the_environment_must_be_a_JSON_object),
        TEST(active_windows_load_canonical_and_bad_ones_name_the_setting),
        TEST(redacted_show_hides_password_in_redis_url_and_secret_options),
        TEST(shown_config_loads_back_as_a_config_file),
        TEST(problems_are_bounded_at_200_then_counted),
        TEST(a_file_with_hundreds_of_problems_reports_200_and_counts_the_rest),
        TEST(problems_are_appended_to_a_list_that_already_has_some),
        TEST(control_characters_in_values_are_escaped_in_problems),
        TEST(machine_settings_default_to_discovery_and_one_instance_per_gpu),
        TEST(machine_legacy_names_of_the_earlier_system_are_honoured),
        TEST(machine_KILN_names_win_over_INSTANCES_PER_GPU_over_PM2_INSTANCES_PER_GPU),
        TEST(bad_machine_values_are_refused_with_file_and_line),
        TEST(gpu_count_with_has_gpu_false_is_refused),
        TEST(services_load_with_argv_env_dependencies_readiness_and_restart),
        TEST(bad_services_are_refused_with_file_and_line),
        TEST(service_downloads_load_with_url_sha256_and_path),
        TEST(bad_downloads_are_refused_naming_the_entry_and_the_fix),
        TEST(service_backoff_ms_sets_the_first_restart_delay_and_zero_is_allowed),
        TEST(bad_service_backoff_ms_is_refused_with_file_and_line),
        TEST(machine_api_token_comes_from_yaml_or_env_and_is_never_shown),
        TEST(bad_machine_api_token_is_refused_without_echoing_it),
        TEST(service_stop_timeout_and_memory_limit_reach_the_config),
        TEST(bad_service_stop_timeout_and_memory_limit_are_refused),
        TEST(service_ready_timeout_ms_sets_the_readiness_deadline),
        TEST(bad_service_ready_timeout_ms_is_refused_with_file_and_line),
        TEST(templates_override_ports_and_commands_and_refuse_unknown_keys),
        TEST(KILN_CONNECTOR_URLS_points_connectors_at_their_instances),
        TEST(shown_machine_services_and_templates_load_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
