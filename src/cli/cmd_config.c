/* kiln config check | show: validate the configuration, or print it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "kiln/config.h"

static const char usage_text[] =
    "usage: kiln config check [--config PATH]\n"
    "       kiln config show [--config PATH] [--json]\n"
    "\n"
    "  check   validate the configuration (defaults < file < environment); prints\n"
    "          \"config ok: SOURCE\" and exits 0, or every problem and exits 2\n"
    "  show    print the effective configuration with secrets replaced by \"***\"\n"
    "\n"
    "The file is PATH, else ./kiln.yaml when it exists (YAML or JSON). See docs/config.md.\n";

static const char check_help[] =
    "usage: kiln config check [--config PATH]\n"
    "\n"
    "Loads the defaults, the file (PATH, else ./kiln.yaml when it exists) and the\n"
    "environment (KILN_*, HUB_REDIS_URL, MACHINE_ID, WORKER_CONNECTORS), then\n"
    "prints \"config ok: SOURCE\" and exits 0, or lists every problem on stderr,\n"
    "each with its file, line, field, what was expected and what was found, and\n"
    "exits 2.\n";

static const char show_help[] =
    "usage: kiln config show [--config PATH] [--json]\n"
    "\n"
    "Prints the effective configuration (defaults < file < environment < flags)\n"
    "as YAML, or as indented JSON with --json. Passwords in URLs and connector\n"
    "options whose names contain key, token, secret or password are shown as\n"
    "\"***\". Exits 2, listing every problem, when the configuration is invalid.\n";

static const char *source_of(const kiln_config_t *cfg)
{
    return cfg->source_path ? cfg->source_path : "defaults + environment";
}

/* A key that reads back as the same string without quotes. */
static int plain_key(const char *key)
{
    size_t n = strlen(key);
    return n > 0 && key[0] != '-' &&
           strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

static void print_scalar(const json_t *value)
{
    /* JSON scalars, strings included, are valid YAML flow scalars. */
    char *text = json_dumps(value, JSON_ENCODE_ANY);
    fputs(text ? text : "null", stdout);
    free(text);
}

static int is_nested(const json_t *v)
{
    return (json_is_object(v) && json_object_size(v) > 0) ||
           (json_is_array(v) && json_array_size(v) > 0);
}

static void print_yaml(const json_t *value, int indent)
{
    const char *key;
    json_t *child;
    size_t i;
    if (json_is_object(value)) {
        json_object_foreach((json_t *)value, key, child)
        {
            printf("%*s", indent, "");
            if (plain_key(key)) {
                fputs(key, stdout);
            } else {
                json_t *quoted = json_string(key);
                print_scalar(quoted);
                json_decref(quoted);
            }
            fputs(is_nested(child) ? ":\n" : ": ", stdout);
            if (is_nested(child))
                print_yaml(child, indent + 2);
            else
                print_scalar(child), putchar('\n');
        }
    } else if (json_is_array(value)) {
        json_array_foreach(value, i, child)
        {
            printf("%*s-%s", indent, "", is_nested(child) ? "\n" : " ");
            if (is_nested(child))
                print_yaml(child, indent + 2);
            else
                print_scalar(child), putchar('\n');
        }
    }
}

static int run_check(const kiln_cli_globals_t *g)
{
    kiln_config_t cfg;
    int rc = kiln_cli_load_config(g, &cfg);
    if (rc == 0)
        printf("config ok: %s\n", source_of(&cfg));
    kiln_config_free(&cfg);
    return rc;
}

static int run_show(const kiln_cli_globals_t *g)
{
    kiln_config_t cfg;
    int rc = kiln_cli_load_config(g, &cfg);
    if (rc != 0) {
        kiln_config_free(&cfg);
        return rc;
    }
    json_t *shown = kiln_config_to_json_redacted(&cfg);
    if (g->json) {
        char *text = json_dumps(shown, JSON_INDENT(2));
        if (text)
            puts(text);
        free(text);
    } else {
        printf("# kiln configuration from %s (secrets shown as \"***\")\n", source_of(&cfg));
        print_yaml(shown, 0);
    }
    json_decref(shown);
    kiln_config_free(&cfg);
    return fflush(stdout) == 0 ? KILN_EXIT_OK : KILN_EXIT_FAILED;
}

int kiln_cmd_config(int argc, char **argv)
{
    kiln_cli_globals_t g;
    int rc = kiln_cli_parse_globals(&argc, argv, &g);
    if (rc != 0)
        return rc;
    const char *action = argc > 1 ? argv[1] : NULL;
    if (!action || (strcmp(action, "check") != 0 && strcmp(action, "show") != 0)) {
        if (!action && g.help) {
            fputs(usage_text, stdout);
            return KILN_EXIT_OK;
        }
        if (action)
            fprintf(stderr, "kiln config: unknown action '%s'; use check or show\n", action);
        fputs(usage_text, stderr);
        return KILN_EXIT_USAGE;
    }
    bool check = strcmp(action, "check") == 0;
    if (g.help) {
        fputs(check ? check_help : show_help, stdout);
        return KILN_EXIT_OK;
    }
    if (argc > 2) {
        fprintf(stderr, "kiln config %s: unexpected argument '%s'\n", action, argv[2]);
        fputs(check ? check_help : show_help, stderr);
        return KILN_EXIT_USAGE;
    }
    return check ? run_check(&g) : run_show(&g);
}
