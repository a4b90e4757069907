/*
 * Files a connector saves for a job under its outputs folder (the openai
 * connector's base64 images, the comfyui connector's downloads): the folder
 * checked at init, one folder per job, names that cannot leave it, and
 * files written under a temporary name and renamed, so a reader never sees
 * half a file.
 */
#ifndef KILN_CONNECTORS_OUTPUTS_H
#define KILN_CONNECTORS_OUTPUTS_H

#include <stddef.h>

#include "kiln/connector.h"
#include "kiln/err.h"

/* Checks that dir (the value of connectors.<name>.outputs_dir) is an
 * absolute path to an existing, writable folder. Returns 0, or KILN_EINVAL
 * naming the option and the fix. */
int kiln_outputs_check_dir(const kiln_connector_config_t *cfg, const char *dir, kiln_err_t *err);

/* Writes name (may be NULL or empty: fallback is used) into out as one safe
 * path component: characters other than [A-Za-z0-9._-] become '_', a
 * leading '.' becomes '_', so "..", "/" and hidden names cannot occur. The
 * text is cut to size - 1 bytes. */
void kiln_outputs_safe_name(const char *name, const char *fallback, char *out, size_t size);

/* Writes bytes to path through "path.tmp" and a rename (no symlink is
 * followed at the temporary name). Returns 0, or -1 with the reason in why. */
int kiln_outputs_write_file(const char *path, const void *bytes, size_t len, char *why,
                            size_t why_size);

#endif
