/*
 * kiln-machine: the machine agent on its own (`kiln machine run` execs it).
 *
 * The agent is a long-running daemon on every machine, so its memory counts.
 * Built from the same library as `kiln` but linked with --as-needed, it maps
 * no libcurl and none of libcurl's own dependencies (TLS stacks, Kerberos,
 * LDAP): downloads run in a child `kiln machine download` process, and the
 * workers it starts are `kiln` itself (plan.c finds it beside this program).
 */
#include "cli/commands.h"

int main(int argc, char **argv)
{
    return kiln_cmd_machine_run(argc, argv);
}
