/*
 * yaml_tree: loads a YAML or JSON file (JSON is YAML flow syntax, so libyaml
 * reads both) into a jansson value, remembering the line of every key and
 * list item so that configuration errors can say "kiln.yaml:12:".
 *
 * The loader treats its input as hostile: it refuses files over
 * KILN_YAML_MAX_BYTES, nesting deeper than KILN_YAML_MAX_DEPTH, anchors,
 * aliases, explicit tags, duplicate keys, keys that are not plain strings and
 * more than one document. Scalars resolve as in the YAML 1.2 core schema:
 * quoted scalars are strings; plain ones may be null, booleans, integers or
 * floats.
 */
#ifndef KILN_YAML_TREE_H
#define KILN_YAML_TREE_H

#include <jansson.h>
#include <stddef.h>

#include "kiln/err.h"

#define KILN_YAML_MAX_BYTES (1024 * 1024)
#define KILN_YAML_MAX_DEPTH 32
#define KILN_YAML_MAX_KEY   256

typedef struct kiln_yaml_doc {
    json_t *root;  /* owned; JSON null for an empty document */
    json_t *lines; /* owned; object: "a.b[2].c" -> 1-based line of that key or item */
} kiln_yaml_doc_t;

/* Reads and parses the file at path. On success returns 0 and fills doc,
 * which the caller releases with kiln_yaml_doc_free. On failure returns
 * KILN_ENOTFOUND (no such file), KILN_EIO (unreadable), KILN_ETOOBIG (over
 * the size limit) or KILN_EINVAL (not acceptable YAML), with a message in err
 * that starts with the path (and the line when there is one); doc is left
 * empty. */
int kiln_yaml_load_file(const char *path, kiln_yaml_doc_t *doc, kiln_err_t *err);

/* Parses len bytes of text as above; name is the file name used in messages. */
int kiln_yaml_load_string(const char *text, size_t len, const char *name, kiln_yaml_doc_t *doc,
                          kiln_err_t *err);

/* The 1-based line of the key or item at path ("worker.concurrency",
 * "worker.connectors[1]"), or 0 when unknown. */
int kiln_yaml_line(const kiln_yaml_doc_t *doc, const char *path);

/* Releases what doc owns (not doc itself); doc may be empty. */
void kiln_yaml_doc_free(kiln_yaml_doc_t *doc);

#endif
