/*
 * Files a connector writes for a job (images that come back as base64 from
 * openai and a1111, comfyui's downloads): the outputs_dir option checked at init, base64 decoded,
 * and each file written under outputs_dir/<job id>/ through a temporary
 * name and a rename, so a reader never sees half a file.
 */
#ifndef KILN_CONNECTORS_OUTPUTS_H
#define KILN_CONNECTORS_OUTPUTS_H

#include <stdbool.h>
#include <stddef.h>

#include "kiln/connector.h"
#include "kiln/err.h"

/* Checks that dir (options.outputs_dir of cfg) is an absolute path to an
 * existing, writable folder. Returns 0, or KILN_EINVAL with a message naming
 * connectors.<name>.outputs_dir and the fix. */
int kiln_outputs_check_dir(const kiln_connector_config_t *cfg, const char *dir, kiln_err_t *err);

/* Reads folder option key of cfg (def when absent; def may be NULL, then
 * *out stays NULL) into a malloc'd absolute, resolved path (caller frees).
 * With create, the folder and its parents are made and it must be
 * writable. Returns 0, or KILN_EINVAL naming connectors.<name>.<key>. */
int kiln_outputs_option_dir(const kiln_connector_config_t *cfg, const char *key, const char *def,
                            bool create, char **out, kiln_err_t *err);

/* Decodes len bytes of base64 text into a malloc'd buffer (caller frees) of
 * *out_len bytes. NULL when the text is empty, not base64, or out of memory. */
unsigned char *kiln_outputs_decode_base64(const char *text, size_t len, size_t *out_len);

/* Writes bytes as outputs_dir/<job id>/<stem>-<index>.<ext>, the extension
 * from the bytes' signature (png, jpg, webp, else bin); the job id is made a
 * safe path component. On success *path_out is the malloc'd path (caller
 * frees) and 0 is returned; otherwise the reason is in why and the code
 * says what it was: KILN_EIO (the file system; another try may work),
 * KILN_EINVAL (the path would be too long) or KILN_ENOMEM. */
int kiln_outputs_save(const char *outputs_dir, const char *job_id, const char *stem, size_t index,
                      const unsigned char *bytes, size_t len, char **path_out, char *why,
                      size_t why_size);

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
