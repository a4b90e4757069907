/*
 * Capability matching in C, mirroring the broker's Lua matcher
 * (src/broker/lua/lib/10_match.lua) rule for rule, so the hub can say which
 * requirement a worker fails. The broker's script stays the one that
 * decides claims; tests/unit/test_hub_waiting.c checks the two agree.
 */
#ifndef KILN_HUB_MATCH_H
#define KILN_HUB_MATCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Whether a worker with capabilities caps (borrowed object; NULL = {}) may
 * run a job of requirements (borrowed; NULL = {}) and customer_id (may be
 * NULL). When not, reason receives the first requirement it fails, in the
 * matcher's order, e.g. "gpu_memory_gb: needs 24, has 12". */
bool kiln_hub_match(json_t *requirements, const char *customer_id, json_t *caps, char *reason,
                    size_t size);

#endif
