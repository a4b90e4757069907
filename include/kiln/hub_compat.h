/*
 * Requirements in the format of the earlier system's clients
 * (positive_requirements / negative_requirements), mapped onto kiln's
 * requirement language (docs/requirements.md). The mapping is documented in
 * docs/hub-compat.md.
 */
#ifndef KILN_HUB_COMPAT_H
#define KILN_HUB_COMPAT_H

#include <jansson.h>

#include "kiln/hub_error.h"

#define KILN_COMPAT_MAX_DEPTH 8   /* nesting of capability objects */
#define KILN_COMPAT_MAX_ITEMS 256 /* keys plus array items, over both inputs */

/* Maps positive and negative (borrowed; either may be NULL or JSON null)
 * onto a kiln requirements object in *out (caller owns; {} when both are
 * empty). A job with only negative requirements is valid. On bad input
 * returns KILN_EINVAL (KILN_ETOOBIG past the bounds) with e naming the field,
 * e.g. "positive_requirements.hardware.gpu_memory_gb". */
int kiln_hub_compat_requirements(json_t *positive, json_t *negative, json_t **out,
                                 kiln_hub_error_t *e);

#endif
