/*
 * Dependency order for a plan: every dependency must name a planned service,
 * cycles are refused naming the whole cycle, and the services are sorted so
 * each follows what it depends on while keeping the build order wherever it
 * already does (a stable topological sort, so plans stay deterministic).
 * Plans are at most KILN_PLAN_MAX_SERVICES long, so the quadratic scan is
 * cheap and keeps the code obvious.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/plan.h"

static size_t index_of(const kiln_plan_t *plan, const char *name)
{
    for (size_t i = 0; i < plan->count; i++) {
        if (strcmp(plan->services[i].name, name) == 0)
            return i;
    }
    return (size_t)-1;
}

/* Names the cycle through the unplaced services (every one left is on a
 * cycle or behind one): follows unplaced dependencies from the first until a
 * service repeats. */
static int report_cycle(const kiln_plan_t *plan, const bool *placed, kiln_err_t *err)
{
    size_t n = plan->count, *path = calloc(n + 1, sizeof *path), len = 0, at = 0;
    if (!path)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    while (placed[at])
        at++;
    for (;;) {
        for (size_t i = 0; i < len; i++) {
            if (path[i] != at)
                continue;
            char text[768] = "";
            for (size_t j = i; j < len; j++)
                snprintf(text + strlen(text), sizeof text - strlen(text), "%s -> ",
                         plan->services[path[j]].name);
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s",
                     plan->services[at].name);
            int rc = kiln_err_set(err, KILN_EINVAL,
                                  "services.%s.depends_on: dependency cycle %s; remove one of "
                                  "these dependencies",
                                  plan->services[at].name, text);
            free(path);
            return rc;
        }
        path[len++] = at;
        const kiln_plan_service_t *s = &plan->services[at];
        for (size_t d = 0; d < s->n_depends_on; d++) {
            size_t dep = index_of(plan, s->depends_on[d]);
            if (!placed[dep]) {
                at = dep;
                break;
            }
        }
    }
}

/* Checks every dependency names a planned service and reorders the plan so
 * each service follows its dependencies, keeping the build order wherever
 * it already does (so the output is stable). */
int kiln_plan_order(kiln_plan_t *plan, kiln_err_t *err)
{
    size_t n = plan->count;
    for (size_t i = 0; i < n; i++) {
        const kiln_plan_service_t *s = &plan->services[i];
        for (size_t d = 0; d < s->n_depends_on; d++) {
            if (index_of(plan, s->depends_on[d]) == (size_t)-1)
                return kiln_err_set(err, KILN_EINVAL,
                                    "services.%s.depends_on: unknown service \"%s\"; depend on a "
                                    "service of the plan (kiln machine plan lists them)",
                                    s->name, s->depends_on[d]);
        }
    }
    bool *placed = calloc(n + 1, sizeof *placed);
    kiln_plan_service_t *ordered = calloc(n + 1, sizeof *ordered);
    if (!placed || !ordered) {
        free(placed);
        free(ordered);
        return kiln_err_set(err, KILN_ENOMEM, "out of memory");
    }
    size_t done = 0;
    while (done < n) {
        size_t next = (size_t)-1;
        for (size_t i = 0; i < n && next == (size_t)-1; i++) {
            bool ready = !placed[i];
            const kiln_plan_service_t *s = &plan->services[i];
            for (size_t d = 0; ready && d < s->n_depends_on; d++)
                ready = placed[index_of(plan, s->depends_on[d])];
            if (ready)
                next = i;
        }
        if (next == (size_t)-1) {
            int rc = report_cycle(plan, placed, err);
            free(placed);
            free(ordered);
            return rc;
        }
        placed[next] = true;
        ordered[done++] = plan->services[next];
    }
    free(plan->services);
    plan->services = ordered;
    free(placed);
    return 0;
}
