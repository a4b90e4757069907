/*
 * kiln machine plan | gpus: show the services the machine agent would run
 * (starting nothing) and the GPUs it found.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "cli/table.h"
#include "kiln/gpu.h"
#include "kiln/plan.h"

#define COMMAND_TEXT_MAX 2048

static const char usage_text[] =
    "usage: kiln machine plan [--json] [--gpus N] [global options]\n"
    "       kiln machine gpus [--json] [global options]\n"
    "       kiln machine run [--state-dir DIR] [--gpus N] [global options]\n"
    "       kiln machine reload [--state-dir DIR]\n"
    "       kiln machine download --service NAME [global options]\n"
    "\n"
    "  run    run the machine agent: start and supervise the plan, publish\n"
    "         status and events to Redis (see kiln machine run --help)\n"
    "  reload make a running agent reload its configuration\n"
    "  plan   print the service plan (shared-setup, comfyui-gpuN, worker-gpuN,\n"
    "         worker-apiN, your services) built from the configuration and the\n"
    "         GPUs; starts nothing\n"
    "  gpus   list the GPUs discovered (NVML, else nvidia-smi, else none)\n"
    "  download fetch services.NAME.downloads (the step the agent runs before\n"
    "         NAME; see docs/downloads.md)\n"
    "\n"
    "See docs/machine.md.\n";

static const char plan_help[] =
    "usage: kiln machine plan [--json] [--gpus N] [global options]\n"
    "\n"
    "Builds the plan the machine agent would run and prints it as a table:\n"
    "NAME KIND PORT GPU DEPENDS COMMAND, in start order. Starts nothing.\n"
    "\n"
    "options:\n"
    "  --gpus N   pretend the machine has N GPUs (0-64) instead of discovering\n"
    "             them, to try a configuration on another machine\n"
    "  --json     print the plan as JSON: {\"machine_id\", \"machine_type\", \"gpus\",\n"
    "             \"services\": [{\"name\", \"kind\", \"argv\", \"env\", \"cwd\", \"port\",\n"
    "             \"gpu\", \"depends_on\", \"ready\", \"restart\"}]}; secrets are \"***\"\n"
    "  -c/--config PATH, --redis URL, --log-format, --log-level, -h/--help\n"
    "\n"
    "exit codes: 0 shown, 2 bad configuration or a plan that cannot run (port\n"
    "collision, GPU connector without GPUs, unknown dependency, cycle)\n";

static const char gpus_help[] =
    "usage: kiln machine gpus [--json] [global options]\n"
    "\n"
    "Lists the GPUs kiln finds: INDEX NAME MEMORY UTIL TEMP UUID. machine.gpu_count\n"
    "(MACHINE_GPU_COUNT) overrides the count and machine.has_gpu false\n"
    "(MACHINE_HAS_GPU) hides them all, as for the plan.\n"
    "  --json   print them as a JSON array (index, name, uuid, memory_total_mb,\n"
    "           memory_used_mb, utilization_pct, temperature_c)\n";

/* A list of n made-up GPUs for --gpus: what the plan needs (positions and
 * indexes), nothing measured. */
static int pretend_gpus(long n, kiln_gpu_list_t *list)
{
    memset(list, 0, sizeof *list);
    snprintf(list->source, sizeof list->source, "--gpus");
    if (n == 0)
        return 0;
    list->gpus = calloc((size_t)n, sizeof *list->gpus);
    if (!list->gpus)
        return KILN_ENOMEM;
    for (long i = 0; i < n; i++) {
        list->gpus[i].index = (int)i;
        snprintf(list->gpus[i].name, sizeof list->gpus[i].name, "pretend GPU %ld", i);
        list->gpus[i].utilization_pct = -1;
        list->gpus[i].temperature_c = -1;
    }
    list->count = (size_t)n;
    return 0;
}

/* Discovers the GPUs the configuration allows. */
static int discover_gpus(const kiln_config_t *cfg, kiln_gpu_list_t *list, kiln_err_t *err)
{
    memset(list, 0, sizeof *list);
    if (!cfg->machine.has_gpu) {
        snprintf(list->source, sizeof list->source, "config");
        return 0;
    }
    kiln_gpu_options_t opts = {.override_count = cfg->machine.gpu_count};
    return kiln_gpu_discover(&opts, list, err);
}

/* An argument as a reader would type it: quoted when it holds blanks or
 * characters a shell treats specially. Display only: nothing runs it. */
static void append_arg(char *out, size_t size, const char *arg)
{
    size_t len = strlen(out);
    bool plain = *arg && strspn(arg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-_./:=,@+%") == strlen(arg);
    snprintf(out + len, size - len, "%s%s%s%s", len ? " " : "", plain ? "" : "'", arg,
             plain ? "" : "'");
}

static int add_plan_row(kiln_table_t *t, const kiln_plan_service_t *s)
{
    char port[16] = "-", gpu[16] = "-", depends[1024] = "", command[COMMAND_TEXT_MAX] = "";
    if (s->port)
        snprintf(port, sizeof port, "%d", s->port);
    if (s->gpu >= 0)
        snprintf(gpu, sizeof gpu, "%d", s->gpu);
    for (size_t i = 0; i < s->n_depends_on; i++)
        snprintf(depends + strlen(depends), sizeof depends - strlen(depends), "%s%s", i ? "," : "",
                 s->depends_on[i]);
    for (size_t i = 0; i < s->argc; i++)
        append_arg(command, sizeof command, s->argv[i]);
    const char *cells[] = {s->name, kiln_plan_kind_name(s->kind), port,
                           gpu,     *depends ? depends : "-",     command};
    return kiln_table_add_row(t, cells);
}

static int print_plan_table(const kiln_plan_t *plan, const char *gpu_source)
{
    static const char *const headers[] = {"NAME", "KIND", "PORT", "GPU", "DEPENDS", "COMMAND"};
    static const char *const types[] = {"auto", "gpu", "api", "hybrid"};
    kiln_table_t t;
    if (kiln_table_init(&t, 6, headers) != 0)
        return kiln_cli_report("machine plan", KILN_ENOMEM, NULL);
    kiln_table_align_right(&t, 2);
    kiln_table_align_right(&t, 3);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < plan->count; i++)
        rc = add_plan_row(&t, &plan->services[i]);
    if (rc == 0) {
        char id[160];
        kiln_cli_sanitize(plan->machine_id, id, sizeof id);
        printf("machine %s: type %s, %zu GPU%s (%s), %zu service%s\n", id,
               types[plan->machine_type & 3], plan->n_gpus, plan->n_gpus == 1 ? "" : "s",
               gpu_source, plan->count, plan->count == 1 ? "" : "s");
        kiln_table_print(&t, stdout);
    }
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("machine plan", rc, NULL);
}

static int parse_gpus_flag(const char *text, long *out)
{
    char *end;
    long n = strtol(text, &end, 10);
    if (!*text || *end || n < 0 || n > 64) {
        fprintf(stderr, "kiln machine plan: --gpus: expected an integer 0-64, got \"%s\"\n", text);
        return KILN_EXIT_USAGE;
    }
    *out = n;
    return 0;
}

static int run_plan(const kiln_cli_globals_t *g, long pretend)
{
    kiln_config_t cfg;
    kiln_gpu_list_t gpus = {0};
    kiln_plan_t plan = {0};
    kiln_err_t err = {0};
    int rc = kiln_cli_load_config(g, &cfg);
    if (rc != 0)
        goto out;
    if (pretend >= 0) {
        cfg.machine.has_gpu = true;
        rc = pretend_gpus(pretend, &gpus);
    } else {
        rc = discover_gpus(&cfg, &gpus, &err);
    }
    if (rc == 0)
        rc = kiln_plan_build(&cfg, &gpus, &plan, &err);
    if (rc != 0) {
        rc = kiln_cli_report("machine plan", rc, &err);
        goto out;
    }
    if (g->json) {
        json_t *shown = kiln_plan_to_json(&plan);
        json_object_set_new(shown, "gpu_source", json_string(gpus.source));
        char *text = json_dumps(shown, JSON_INDENT(2));
        if (text)
            puts(text);
        free(text);
        json_decref(shown);
        rc = fflush(stdout) == 0 ? KILN_EXIT_OK : KILN_EXIT_FAILED;
    } else {
        rc = print_plan_table(&plan, gpus.source);
    }
out:
    kiln_plan_free(&plan);
    kiln_gpu_list_free(&gpus);
    kiln_config_free(&cfg);
    return rc;
}

static int print_gpus_table(const kiln_gpu_list_t *list)
{
    static const char *const headers[] = {"INDEX", "NAME", "MEMORY", "UTIL", "TEMP", "UUID"};
    kiln_table_t t;
    if (kiln_table_init(&t, 6, headers) != 0)
        return kiln_cli_report("machine gpus", KILN_ENOMEM, NULL);
    kiln_table_align_right(&t, 0);
    kiln_table_align_right(&t, 2);
    kiln_table_align_right(&t, 3);
    kiln_table_align_right(&t, 4);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < list->count; i++) {
        const kiln_gpu_t *gpu = &list->gpus[i];
        char index[16], memory[48] = "-", util[16] = "-", temp[16] = "-";
        snprintf(index, sizeof index, "%d", gpu->index);
        if (gpu->memory_total_mb)
            snprintf(memory, sizeof memory, "%llu/%llu MiB",
                     (unsigned long long)gpu->memory_used_mb,
                     (unsigned long long)gpu->memory_total_mb);
        if (gpu->utilization_pct >= 0)
            snprintf(util, sizeof util, "%d%%", gpu->utilization_pct);
        if (gpu->temperature_c >= 0)
            snprintf(temp, sizeof temp, "%dC", gpu->temperature_c);
        const char *cells[] = {index, gpu->name, memory, util, temp, *gpu->uuid ? gpu->uuid : "-"};
        rc = kiln_table_add_row(&t, cells);
    }
    if (rc == 0) {
        printf("%zu GPU%s (%s)\n", list->count, list->count == 1 ? "" : "s", list->source);
        if (list->count)
            kiln_table_print(&t, stdout);
    }
    kiln_table_free(&t);
    return rc == 0 ? KILN_EXIT_OK : kiln_cli_report("machine gpus", rc, NULL);
}

static int run_gpus(const kiln_cli_globals_t *g)
{
    kiln_config_t cfg;
    kiln_gpu_list_t gpus = {0};
    kiln_err_t err = {0};
    int rc = kiln_cli_load_config(g, &cfg);
    if (rc == 0 && (rc = discover_gpus(&cfg, &gpus, &err)) != 0)
        rc = kiln_cli_report("machine gpus", rc, &err);
    if (rc == 0 && g->json) {
        json_t *shown = kiln_gpu_list_to_json(&gpus);
        kiln_cli_print_json(shown);
        json_decref(shown);
    } else if (rc == 0) {
        rc = print_gpus_table(&gpus);
    }
    kiln_gpu_list_free(&gpus);
    kiln_config_free(&cfg);
    return rc;
}

/* Replaces this process by kiln-machine beside this program (the agent
 * without the libraries only other commands use; src/cli/machine/main.c)
 * with the same arguments. Returns only when there is none or it cannot be
 * run, and then the agent runs in this process. */
static void exec_lean_agent(char **argv)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    if (!slash || (size_t)(slash - path) + sizeof "/kiln-machine" > sizeof path)
        return;
    strcpy(slash, "/kiln-machine");
    if (access(path, X_OK) != 0)
        return;
    char *name = argv[0];
    argv[0] = path; /* what ps shows */
    execv(path, argv);
    argv[0] = name;
}

int kiln_cmd_machine(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "run") == 0) {
        exec_lean_agent(argv + 1);
        return kiln_cmd_machine_run(argc - 1, argv + 1);
    }
    if (argc > 1 && strcmp(argv[1], "reload") == 0)
        return kiln_cmd_machine_reload(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "download") == 0)
        return kiln_cmd_machine_download(argc - 1, argv + 1);
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    const char *action = argc > 1 ? argv[1] : NULL;
    if (!action || (strcmp(action, "plan") != 0 && strcmp(action, "gpus") != 0)) {
        if (!action && g.help) {
            fputs(usage_text, stdout);
            return KILN_EXIT_OK;
        }
        if (action)
            fprintf(stderr, "kiln machine: unknown action '%s'; use plan or gpus\n", action);
        fputs(usage_text, stderr);
        return KILN_EXIT_USAGE;
    }
    bool plan = strcmp(action, "plan") == 0;
    if (g.help) {
        fputs(plan ? plan_help : gpus_help, stdout);
        return KILN_EXIT_OK;
    }
    long pretend = -1;
    for (int i = 2; i < argc; i++) {
        if (plan && strcmp(argv[i], "--gpus") == 0 && i + 1 < argc) {
            if ((rc = parse_gpus_flag(argv[++i], &pretend)) != 0)
                return rc;
        } else if (plan && strncmp(argv[i], "--gpus=", 7) == 0) {
            if ((rc = parse_gpus_flag(argv[i] + 7, &pretend)) != 0)
                return rc;
        } else {
            fprintf(stderr, "kiln machine %s: unexpected argument '%s'\n", action, argv[i]);
            fputs(plan ? plan_help : gpus_help, stderr);
            return KILN_EXIT_USAGE;
        }
    }
    return plan ? run_plan(&g, pretend) : run_gpus(&g);
}
