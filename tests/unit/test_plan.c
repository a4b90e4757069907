/*
 * The service plan: which services a machine runs for its connectors and
 * GPUs, on which ports and GPUs, in which order, with which argv and
 * environment. Configs are loaded through kiln_config_load, as the agent
 * loads them.
 */
#include "kiln_test.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/config.h"
#include "kiln/err.h"
#include "kiln/plan.h"

#define KILN_PATH "/usr/bin/kiln"

static char tmp_dir[256];
static kiln_config_t cfg;
static kiln_gpu_list_t gpus;
static kiln_plan_t plan;
static kiln_err_t err;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    kiln_test_tmpdir(tmp_dir, sizeof tmp_dir);
    memset(&cfg, 0, sizeof cfg);
    memset(&gpus, 0, sizeof gpus);
    memset(&plan, 0, sizeof plan);
    memset(&err, 0, sizeof err);
    return 0;
}

static int teardown(void **state)
{
    kiln_plan_free(&plan);
    free(gpus.gpus);
    kiln_config_free(&cfg);
    nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Loads yaml (may be NULL) and env (NULL-terminated, machine id m1 added). */
static void load(const char *yaml, char **env)
{
    char path[512], *vars[32] = {"KILN_MACHINE_ID=m1"};
    size_t n = 1;
    for (size_t i = 0; env && env[i] && n < 31; i++)
        vars[n++] = env[i];
    vars[n] = NULL;
    if (yaml) {
        snprintf(path, sizeof path, "%s/kiln.yaml", tmp_dir);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(yaml, f);
        fclose(f);
    }
    kiln_problems_t problems = {0};
    int rc = kiln_config_load(&cfg, yaml ? path : NULL, vars, &problems);
    for (size_t i = 0; i < problems.count; i++)
        fprintf(stderr, "config problem: %s\n", problems.items[i]);
    kiln_problems_clear(&problems);
    assert_int_equal(rc, 0);
}

/* A GPU list of n GPUs whose CUDA indexes are first, first+1, ... */
static void make_gpus(size_t n, int first)
{
    gpus.gpus = calloc(n + 1, sizeof *gpus.gpus);
    assert_non_null(gpus.gpus);
    gpus.count = n;
    snprintf(gpus.source, sizeof gpus.source, "config");
    for (size_t i = 0; i < n; i++) {
        gpus.gpus[i].index = first + (int)i;
        gpus.gpus[i].memory_total_mb = 24576;
    }
}

static int build(void)
{
    kiln_plan_options_t opts = {.kiln_path = KILN_PATH};
    return kiln_plan_build_with(&cfg, &gpus, &opts, &plan, &err);
}

static void build_ok(void)
{
    int rc = build();
    if (rc != 0)
        fail_msg("plan failed: %s", err.msg);
}

static void assert_names(const char *const *names, size_t n)
{
    for (size_t i = 0; i < n && i < plan.count; i++) {
        if (strcmp(plan.services[i].name, names[i]) != 0)
            fail_msg("service %zu is %s, expected %s", i, plan.services[i].name, names[i]);
    }
    assert_int_equal(plan.count, n);
}

static const kiln_plan_service_t *service(const char *name)
{
    const kiln_plan_service_t *s = kiln_plan_find(&plan, name);
    if (!s)
        fail_msg("no service %s in the plan", name);
    return s;
}

/* The value of NAME in s's environment, or NULL. */
static const char *env_of(const kiln_plan_service_t *s, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < s->n_env; i++) {
        if (strncmp(s->env[i], name, n) == 0 && s->env[i][n] == '=')
            return s->env[i] + n + 1;
    }
    return NULL;
}

static void assert_argv(const kiln_plan_service_t *s, const char *const *want, size_t n)
{
    for (size_t i = 0; i < n && i < s->argc; i++) {
        if (strcmp(s->argv[i], want[i]) != 0)
            fail_msg("%s argv[%zu] is \"%s\", expected \"%s\"", s->name, i, s->argv[i], want[i]);
    }
    assert_int_equal(s->argc, n);
    assert_null(s->argv[n]);
}

static void assert_depends(const kiln_plan_service_t *s, const char *const *want, size_t n)
{
    assert_int_equal(s->n_depends_on, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(s->depends_on[i], want[i]);
}

static void assert_err_has(int rc, const char *a, const char *b)
{
    assert_int_equal(rc, KILN_EINVAL);
    if (!strstr(err.msg, a) || (b && !strstr(err.msg, b)))
        fail_msg("error \"%s\" does not name \"%s\"%s%s", err.msg, a, b ? " and " : "", b ? b : "");
    assert_int_equal(plan.count, 0);
    assert_null(plan.services);
}

static void
two_gpus_with_comfyui_give_comfyui_and_worker_per_gpu_with_cuda_visible_devices(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui", NULL};
    load(NULL, env);
    make_gpus(2, 0);
    build_ok();
    static const char *const names[] = {"comfyui-gpu0", "comfyui-gpu1", "worker-gpu0",
                                        "worker-gpu1"};
    assert_names(names, 4);
    assert_int_equal(plan.machine_type, KILN_MACHINE_GPU);
    assert_int_equal(plan.n_gpus, 2);
    for (int g = 0; g < 2; g++) {
        char comfy[32], worker[32], id[32], port[8], url[64];
        snprintf(comfy, sizeof comfy, "comfyui-gpu%d", g);
        snprintf(worker, sizeof worker, "worker-gpu%d", g);
        snprintf(id, sizeof id, "m1-worker-gpu%d", g);
        snprintf(port, sizeof port, "%d", 8188 + g);
        snprintf(url, sizeof url, "comfyui=http://127.0.0.1:%d", 8188 + g);
        const kiln_plan_service_t *c = service(comfy), *w = service(worker);
        char visible[4];
        snprintf(visible, sizeof visible, "%d", g);
        assert_int_equal(c->kind, KILN_SERVICE_INFERENCE);
        assert_int_equal(c->port, 8188 + g);
        assert_int_equal(c->gpu, g);
        assert_string_equal(env_of(c, "CUDA_VISIBLE_DEVICES"), visible);
        assert_string_equal(env_of(c, "CUDA_DEVICE_ORDER"), "PCI_BUS_ID");
        const char *comfy_argv[] = {"python3", "main.py", "--listen", "127.0.0.1", "--port", port};
        assert_argv(c, comfy_argv, 6);
        assert_int_equal(c->ready.kind, KILN_READY_HTTP);
        assert_non_null(strstr(c->ready.target, port));
        assert_null(env_of(c, "KILN_REDIS_URL")); /* ComfyUI needs no Redis password */

        assert_int_equal(w->kind, KILN_SERVICE_WORKER);
        assert_int_equal(w->gpu, g);
        assert_int_equal(w->port, 0);
        assert_string_equal(env_of(w, "CUDA_VISIBLE_DEVICES"), visible);
        assert_string_equal(env_of(w, "KILN_CONNECTOR_URLS"), url);
        assert_string_equal(env_of(w, "KILN_REDIS_URL"), "redis://127.0.0.1:6379");
        assert_string_equal(env_of(w, "MACHINE_ID"), "m1");
        const char *const deps[] = {comfy};
        assert_depends(w, deps, 1);
        const char *worker_argv[] = {KILN_PATH,        "worker",
                                     "--connectors",   "comfyui",
                                     "--id",           id,
                                     "--concurrency",  "1",
                                     "--capabilities", "{\"gpu_memory_gb\":24}"};
        assert_argv(w, worker_argv, 10);
    }
}

static void instances_per_gpu_multiplies_instances_and_ports(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui", "PM2_INSTANCES_PER_GPU=2", NULL};
    load("templates:\n  comfyui:\n    base_port: 9000\n", env);
    make_gpus(2, 0);
    build_ok();
    static const char *const names[] = {"comfyui-gpu0-0", "comfyui-gpu0-1", "comfyui-gpu1-0",
                                        "comfyui-gpu1-1", "worker-gpu0-0",  "worker-gpu0-1",
                                        "worker-gpu1-0",  "worker-gpu1-1"};
    assert_names(names, 8);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(plan.services[i].port, 9000 + i);
        assert_int_equal(plan.services[i].gpu, i / 2);
        assert_string_equal(env_of(&plan.services[i], "CUDA_VISIBLE_DEVICES"), i < 2 ? "0" : "1");
    }
    assert_string_equal(env_of(service("worker-gpu1-1"), "KILN_CONNECTOR_URLS"),
                        "comfyui=http://127.0.0.1:9003");
    assert_string_equal(env_of(service("worker-gpu1-1"), "CUDA_VISIBLE_DEVICES"), "1");
}

static void api_connectors_get_api_workers_and_no_gpu_services(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=openai,replicate", "KILN_WORKER_CONCURRENCY=8", NULL};
    load("machine:\n  api_workers: 2\n  pools: [fast]\n", env);
    make_gpus(2, 0); /* GPUs present, but no connector needs one */
    build_ok();
    static const char *const names[] = {"worker-api0", "worker-api1"};
    assert_names(names, 2);
    assert_int_equal(plan.machine_type, KILN_MACHINE_API);
    assert_int_equal(plan.n_gpus, 0);
    const kiln_plan_service_t *w = service("worker-api1");
    assert_int_equal(w->kind, KILN_SERVICE_CONNECTOR);
    assert_int_equal(w->gpu, -1);
    assert_null(env_of(w, "CUDA_VISIBLE_DEVICES"));
    assert_null(env_of(w, "KILN_CONNECTOR_URLS"));
    char written[512], config_path[4096];
    snprintf(written, sizeof written, "%s/kiln.yaml", tmp_dir);
    assert_non_null(realpath(written, config_path)); /* workers get it absolute */
    const char *argv[] = {KILN_PATH,        "worker",
                          "--connectors",   "openai,replicate",
                          "--id",           "m1-worker-api1",
                          "--concurrency",  "8",
                          "--capabilities", "{\"pools\":[\"fast\"]}",
                          "--config",       config_path};
    assert_argv(w, argv, 12);
}

static void ollama_runs_once_per_machine_and_the_api_worker_gets_its_url(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=ollama,openai", NULL};
    load(NULL, env);
    make_gpus(2, 0);
    build_ok();
    static const char *const names[] = {"ollama", "worker-api0"};
    assert_names(names, 2);
    const kiln_plan_service_t *o = service("ollama"), *w = service("worker-api0");
    assert_int_equal(o->port, 11434);
    assert_int_equal(o->gpu, -1);
    assert_string_equal(env_of(o, "OLLAMA_HOST"), "127.0.0.1:11434");
    const char *argv[] = {"ollama", "serve"};
    assert_argv(o, argv, 2);
    assert_string_equal(env_of(w, "KILN_CONNECTOR_URLS"), "ollama=http://127.0.0.1:11434");
    assert_string_equal(w->argv[3], "openai,ollama");
    const char *const deps[] = {"ollama"};
    assert_depends(w, deps, 1);
}

static void playwright_service_runs_once_per_machine_ready_on_its_health(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=playwright,openai", NULL};
    load("templates:\n  playwright:\n    port: 3200\n", env);
    make_gpus(0, 0);
    build_ok();
    static const char *const names[] = {"playwright", "worker-api0"};
    assert_names(names, 2);
    assert_int_equal(plan.machine_type, KILN_MACHINE_API);
    const kiln_plan_service_t *p = service("playwright"), *w = service("worker-api0");
    assert_int_equal(p->kind, KILN_SERVICE_INFERENCE);
    assert_int_equal(p->port, 3200);
    const char *argv[] = {"node", "server.mjs", "--port", "3200"};
    assert_argv(p, argv, 4);
    assert_string_equal(p->cwd, KILN_SOURCE_DIR "/services/playwright");
    assert_int_equal(p->ready.kind, KILN_READY_HTTP);
    assert_string_equal(p->ready.target, "http://127.0.0.1:3200/health");
    assert_string_equal(env_of(w, "KILN_CONNECTOR_URLS"), "playwright=http://127.0.0.1:3200");
    assert_string_equal(w->argv[3], "openai,playwright");
    const char *const deps[] = {"playwright"};
    assert_depends(w, deps, 1);
}

static void shared_setup_comes_first_and_everything_waits_for_it(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui,openai", NULL};
    load("templates:\n  setup:\n    command: [/opt/setup.sh, \"{machine_id}\"]\n", env);
    make_gpus(1, 0);
    build_ok();
    static const char *const names[] = {"shared-setup", "comfyui-gpu0", "worker-gpu0",
                                        "worker-api0"};
    assert_names(names, 4);
    const kiln_plan_service_t *s = service("shared-setup");
    assert_int_equal(s->kind, KILN_SERVICE_SETUP);
    assert_int_equal(s->restart, KILN_RESTART_NEVER);
    assert_int_equal(s->ready.kind, KILN_READY_EXIT);
    const char *argv[] = {"/opt/setup.sh", "m1"};
    assert_argv(s, argv, 2);
    assert_int_equal(s->n_depends_on, 0);
    const char *const worker_deps[] = {"shared-setup", "comfyui-gpu0"};
    assert_depends(service("worker-gpu0"), worker_deps, 2);
    const char *const setup_only[] = {"shared-setup"};
    assert_depends(service("comfyui-gpu0"), setup_only, 1);
    assert_depends(service("worker-api0"), setup_only, 1);
    assert_int_equal(plan.machine_type, KILN_MACHINE_HYBRID);
}

static void port_collision_is_refused_naming_both_services(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui", NULL};
    load("services:\n  web:\n    command: [/usr/bin/web]\n    port: 8189\n", env);
    make_gpus(2, 0);
    assert_err_has(build(), "port 8189 is wanted by both comfyui-gpu1 and services.web.port", NULL);
    kiln_config_free(&cfg);
    load("services:\n  web:\n    command: [/usr/bin/web]\n    port: 9090\n", NULL);
    assert_err_has(build(), "machine.health_port", "services.web.port");
    /* base + index past 65535 is refused before it wraps. */
    kiln_config_free(&cfg);
    load("templates:\n  comfyui:\n    base_port: 65535\n", env);
    assert_err_has(build(), "comfyui-gpu1", "outside 1024-65535");
}

static void gpu_connector_on_a_machine_without_gpus_is_refused(void **state)
{
    char *gpu_env[] = {"MACHINE_TYPE=gpu", "WORKER_CONNECTORS=comfyui", NULL};
    load(NULL, gpu_env);
    assert_err_has(build(), "comfyui runs one instance per GPU but the machine has no GPUs",
                   "MACHINE_GPU_COUNT");
    kiln_config_free(&cfg);
    /* A GPU machine with no GPUs is refused even before its connectors. */
    char *bare_gpu[] = {"MACHINE_TYPE=gpu", "WORKER_CONNECTORS=openai", NULL};
    load(NULL, bare_gpu);
    assert_err_has(build(), "machine.type is gpu but the machine has no GPUs", NULL);
    kiln_config_free(&cfg);
    /* has_gpu false hides GPUs that exist. */
    char *hidden[] = {"MACHINE_HAS_GPU=false", "WORKER_CONNECTORS=a1111", NULL};
    load(NULL, hidden);
    make_gpus(2, 0);
    assert_err_has(build(), "a1111 runs one instance per GPU", "machine.has_gpu is false");
    kiln_config_free(&cfg);
    /* An api machine refuses GPU connectors even with GPUs. */
    char *api[] = {"MACHINE_TYPE=api", "WORKER_CONNECTORS=comfyui", NULL};
    load(NULL, api);
    assert_err_has(build(), "machine.type is api", "set machine.type (MACHINE_TYPE) to gpu");
}

static void user_services_are_appended_with_their_dependencies(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui", NULL};
    load("templates:\n  setup:\n    command: [/bin/true]\n"
         "services:\n"
         "  web:\n"
         "    command: [/usr/bin/web, --port, \"{port}\"]\n"
         "    port: 3000\n"
         "    depends_on: [comfyui-gpu0, db]\n"
         "    env: {API_BASE: \"http://127.0.0.1:{port}/v1\", MACHINE_ID: override}\n"
         "    ready: {http: \"http://127.0.0.1:{port}/health\"}\n"
         "    restart: on-failure\n"
         "    ready_timeout_ms: 5000\n"
         "    stop_timeout_ms: 2500\n"
         "    memory_limit_mb: 512\n"
         "  db:\n"
         "    command: [/usr/bin/db]\n"
         "    cwd: /var/lib/db\n",
         env);
    make_gpus(1, 0);
    build_ok();
    static const char *const names[] = {"shared-setup", "comfyui-gpu0", "worker-gpu0", "db", "web"};
    assert_names(names, 5);
    const kiln_plan_service_t *web = service("web"), *db = service("db");
    assert_int_equal(web->kind, KILN_SERVICE_USER);
    const char *const web_deps[] = {"shared-setup", "comfyui-gpu0", "db"};
    assert_depends(web, web_deps, 3);
    const char *const db_deps[] = {"shared-setup"};
    assert_depends(db, db_deps, 1);
    const char *argv[] = {"/usr/bin/web", "--port", "3000"};
    assert_argv(web, argv, 3);
    assert_string_equal(env_of(web, "API_BASE"), "http://127.0.0.1:3000/v1");
    assert_string_equal(env_of(web, "MACHINE_ID"), "override"); /* the user's env wins */
    assert_string_equal(env_of(web, "KILN_REDIS_URL"), "redis://127.0.0.1:6379");
    assert_int_equal(web->ready.kind, KILN_READY_HTTP);
    assert_string_equal(web->ready.target, "http://127.0.0.1:3000/health");
    assert_int_equal(web->restart, KILN_RESTART_ON_FAILURE);
    assert_int_equal(db->restart, KILN_RESTART_ALWAYS);
    assert_string_equal(db->cwd, "/var/lib/db");
    assert_int_equal(db->port, 0);
    assert_int_equal(web->ready_timeout_ms, 5000);
    assert_int_equal(web->stop_timeout_ms, 2500);
    assert_int_equal(web->memory_limit_mb, 512);
    assert_int_equal(db->ready_timeout_ms, -1); /* the supervisor's defaults */
    assert_int_equal(db->stop_timeout_ms, -1);
    assert_int_equal(db->memory_limit_mb, -1);
}

static void user_service_may_not_take_a_generated_name_or_a_missing_gpu(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui", NULL};
    load("services:\n  comfyui-gpu0:\n    command: [/bin/x]\n", env);
    make_gpus(1, 0);
    assert_err_has(build(), "services.comfyui-gpu0: the name is taken by a generated service",
                   NULL);
    kiln_config_free(&cfg);
    load("services:\n  trainer:\n    command: [/bin/x]\n    gpu: 1\n", env);
    assert_err_has(build(), "services.trainer.gpu: GPU 1 does not exist", "use 0-0");
}

static void unknown_dependency_is_refused(void **state)
{
    load("services:\n  web:\n    command: [/bin/web]\n    depends_on: [dbx]\n", NULL);
    assert_err_has(build(), "services.web.depends_on: unknown service \"dbx\"", NULL);
}

static void dependency_cycle_is_refused(void **state)
{
    load("services:\n"
         "  a:\n    command: [/bin/a]\n    depends_on: [b]\n"
         "  b:\n    command: [/bin/b]\n    depends_on: [c]\n"
         "  c:\n    command: [/bin/c]\n    depends_on: [a]\n"
         "  free:\n    command: [/bin/free]\n",
         NULL);
    assert_err_has(build(), "dependency cycle a -> b -> c -> a", "remove one of these");
}

static void placeholders_are_substituted_as_whole_arguments_never_split(void **state)
{
    load("services:\n"
         "  web:\n"
         "    command:\n"
         "      - /bin/echo\n"
         "      - \"{port}\"\n"
         "      - \"--at={machine_id}:{port}\"\n"
         "      - \"a b {gpu}\"\n"
         "      - \"$(rm -rf /); {name} | cat\"\n"
         "      - \"{{port}\"\n"
         "      - '{\"json\": 1}'\n"
         "      - \"{kiln}\"\n"
         "    port: 9000\n"
         "    gpu: 1\n",
         NULL);
    make_gpus(2, 4); /* GPU position 1 is CUDA device 5 */
    build_ok();
    const kiln_plan_service_t *web = service("web");
    const char *argv[] = {
        "/bin/echo", "9000",          "--at=m1:9000", "a b 5", "$(rm -rf /); web | cat",
        "{port}",    "{\"json\": 1}", KILN_PATH};
    assert_argv(web, argv, 8);
    assert_int_equal(web->gpu, 1);
    assert_string_equal(env_of(web, "CUDA_VISIBLE_DEVICES"), "5");

    kiln_plan_free(&plan);
    kiln_config_free(&cfg);
    load("services:\n  web:\n    command: [/bin/echo, \"{prot}\"]\n    port: 9000\n", NULL);
    assert_err_has(build(), "services.web.command[1]: unknown placeholder {prot}", NULL);
    kiln_config_free(&cfg);
    load("services:\n  web:\n    command: [/bin/echo, \"{gpu}\"]\n", NULL);
    assert_err_has(build(), "services.web.command[1]: {gpu} is used", "add gpu: N");
}

static void plan_is_deterministic(void **state)
{
    char *env[] = {"WORKER_CONNECTORS=comfyui,a1111,ollama,openai", "INSTANCES_PER_GPU=2", NULL};
    load("machine:\n  pools: [fast, heavy]\n"
         "services:\n  web:\n    command: [/bin/web]\n    depends_on: [ollama]\n",
         env);
    make_gpus(3, 0);
    build_ok();
    json_t *first = kiln_plan_to_json(&plan);
    kiln_plan_free(&plan);
    build_ok();
    json_t *second = kiln_plan_to_json(&plan);
    char *a = json_dumps(first, 0), *b = json_dumps(second, 0);
    assert_string_equal(a, b);
    /* 3 GPUs x 2 instances x (comfyui, a1111), their 6 workers, ollama,
     * worker-api0, web. */
    assert_int_equal(plan.count, 12 + 6 + 3);
    assert_int_equal(plan.machine_type, KILN_MACHINE_HYBRID);
    free(a);
    free(b);
    json_decref(first);
    json_decref(second);
}

static void plan_json_hides_secrets(void **state)
{
    char *env[] = {"KILN_REDIS_URL=redis://:hunter2@hub:6379", "WORKER_CONNECTORS=openai", NULL};
    load("services:\n  web:\n    command: [/bin/web, \"redis://u:pw-9@h:1\"]\n"
         "    env: {OPENAI_API_KEY: sk-live-1}\n",
         env);
    build_ok();
    json_t *shown = kiln_plan_to_json(&plan);
    char *text = json_dumps(shown, 0);
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "sk-live-1"));
    assert_null(strstr(text, "pw-9"));
    assert_non_null(strstr(text, "redis://:***@hub:6379"));
    assert_string_equal(json_string_value(json_object_get(shown, "machine_type")), "api");
    /* The plan itself keeps the real values for the processes it starts. */
    assert_string_equal(env_of(service("web"), "OPENAI_API_KEY"), "sk-live-1");
    free(text);
    json_decref(shown);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(two_gpus_with_comfyui_give_comfyui_and_worker_per_gpu_with_cuda_visible_devices),
        TEST(instances_per_gpu_multiplies_instances_and_ports),
        TEST(api_connectors_get_api_workers_and_no_gpu_services),
        TEST(ollama_runs_once_per_machine_and_the_api_worker_gets_its_url),
        TEST(playwright_service_runs_once_per_machine_ready_on_its_health),
        TEST(shared_setup_comes_first_and_everything_waits_for_it),
        TEST(port_collision_is_refused_naming_both_services),
        TEST(gpu_connector_on_a_machine_without_gpus_is_refused),
        TEST(user_services_are_appended_with_their_dependencies),
        TEST(user_service_may_not_take_a_generated_name_or_a_missing_gpu),
        TEST(unknown_dependency_is_refused),
        TEST(dependency_cycle_is_refused),
        TEST(placeholders_are_substituted_as_whole_arguments_never_split),
        TEST(plan_is_deterministic),
        TEST(plan_json_hides_secrets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
