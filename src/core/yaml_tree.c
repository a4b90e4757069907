/*
 * YAML/JSON to jansson with line numbers. libyaml's event parser is a state
 * machine, not a recursion, so deep input cannot exhaust the C stack; we
 * still cap the nesting we accept and keep our own explicit stack of open
 * mappings and sequences.
 */
#include "core/yaml_tree.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* Room for KILN_YAML_MAX_DEPTH keys of KILN_YAML_MAX_KEY bytes plus their
 * separators or "[index]" suffixes. */
#define PATH_MAX_LEN (KILN_YAML_MAX_DEPTH * (KILN_YAML_MAX_KEY + 24))

typedef struct frame {
    json_t *node;    /* the open object or array (borrowed: the tree owns it) */
    char *key;       /* objects: the key waiting for its value (owned), or NULL */
    int key_line;    /* the line of that key */
    size_t path_len; /* length of this node's path in loader.path */
} frame_t;

typedef struct loader {
    const char *name;
    yaml_parser_t parser;
    kiln_yaml_doc_t *doc;
    kiln_err_t *err;
    frame_t stack[KILN_YAML_MAX_DEPTH];
    int depth;
    int documents;
    char path[PATH_MAX_LEN];
} loader_t;

static int event_line(const yaml_event_t *ev)
{
    return (int)ev->start_mark.line + 1;
}

static int parse_error(loader_t *L)
{
    yaml_parser_t *p = &L->parser;
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_MEMORY_ERROR)
        return kiln_err_set(L->err, KILN_ENOMEM, "%s: out of memory while parsing", L->name);
    if (p->error == YAML_READER_ERROR)
        return kiln_err_set(L->err, KILN_EINVAL, "%s: invalid YAML: %s (at byte %zu)", L->name,
                            problem, p->problem_offset);
    if (p->context)
        return kiln_err_set(L->err, KILN_EINVAL,
                            "%s:%zu: invalid YAML: %s (column %zu, %s that starts on line %zu)",
                            L->name, p->problem_mark.line + 1, problem, p->problem_mark.column + 1,
                            p->context, p->context_mark.line + 1);
    return kiln_err_set(L->err, KILN_EINVAL, "%s:%zu: invalid YAML: %s (column %zu)", L->name,
                        p->problem_mark.line + 1, problem, p->problem_mark.column + 1);
}

/* Anchors, aliases and tags are refused: a config file has no need for them,
 * and aliases are the vehicle of "billion laughs" expansion. */
static int refuse_anchor_and_tag(loader_t *L, const yaml_event_t *ev, const yaml_char_t *anchor,
                                 const yaml_char_t *tag)
{
    if (anchor)
        return kiln_err_set(L->err, KILN_EINVAL,
                            "%s:%d: YAML anchors (&%s) are not allowed; write each value out",
                            L->name, event_line(ev), (const char *)anchor);
    if (tag)
        return kiln_err_set(L->err, KILN_EINVAL,
                            "%s:%d: YAML tags (%s) are not allowed; remove the tag", L->name,
                            event_line(ev), (const char *)tag);
    return 0;
}

static bool all_chars_in(const char *s, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++) {
        if (!s[i] || !strchr(set, s[i]))
            return false;
    }
    return n > 0;
}

static bool is_decimal_float(const char *s, size_t n)
{
    size_t i = 0, digits = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
    }
    if (digits == 0)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        if (i >= n || s[i] < '0' || s[i] > '9')
            return false;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    return i == n;
}

/* Integers (decimal, 0x, 0o) and floats of the YAML 1.2 core schema; NULL
 * when the text is neither. An integer too large for json_int_t becomes a
 * real so that range checks can still report it as a number. */
static json_t *resolve_number(const char *s, size_t n)
{
    const char *digits = s + (n > 0 && (s[0] == '-' || s[0] == '+'));
    size_t ndigits = n - (size_t)(digits - s);
    int base = 0;
    if (all_chars_in(digits, ndigits, "0123456789"))
        base = 10;
    else if (n > 2 && s[0] == '0' && s[1] == 'x' &&
             all_chars_in(s + 2, n - 2, "0123456789abcdefABCDEF"))
        base = 16;
    else if (n > 2 && s[0] == '0' && s[1] == 'o' && all_chars_in(s + 2, n - 2, "01234567"))
        base = 8;
    if (base) {
        const char *start = base == 10 ? s : s + 2;
        errno = 0;
        long long v = strtoll(start, NULL, base);
        if (errno != ERANGE)
            return json_integer((json_int_t)v);
        if (base != 10)
            return NULL;
    }
    if (base == 10 || is_decimal_float(s, n)) {
        double d = strtod(s, NULL);
        return isfinite(d) ? json_real(d) : NULL;
    }
    return NULL;
}

static json_t *resolve_scalar(const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return json_stringn(s, n);
    if (n == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
        strcmp(s, "NULL") == 0)
        return json_null();
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0)
        return json_true();
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0)
        return json_false();
    json_t *number = resolve_number(s, n);
    return number ? number : json_stringn(s, n);
}

/* Appends ".key" (or "key" at the top) or "[index]" to the path buffer at
 * offset `at`; returns the new length. */
static size_t path_put(loader_t *L, size_t at, const char *key, size_t index)
{
    size_t room = sizeof L->path - at;
    int n;
    if (key)
        n = snprintf(L->path + at, room, "%s%s", at ? "." : "", key);
    else
        n = snprintf(L->path + at, room, "[%zu]", index);
    if (n < 0 || (size_t)n >= room)
        return at; /* cannot happen with the key and depth limits */
    return at + (size_t)n;
}

/* Places value (stolen) in the open container, or makes it the root, and
 * records its line: the line of its key in a mapping, its own in a list.
 * On return *path_len is the length of value's path. */
static int attach(loader_t *L, json_t *value, int line, size_t *path_len)
{
    if (!value)
        return kiln_err_set(L->err, KILN_ENOMEM, "%s:%d: out of memory", L->name, line);
    if (L->depth == 0) {
        L->doc->root = value;
        *path_len = 0;
        L->path[0] = '\0';
        return 0;
    }
    frame_t *top = &L->stack[L->depth - 1];
    size_t len = top->path_len;
    if (json_is_array(top->node)) {
        len = path_put(L, len, NULL, json_array_size(top->node));
        if (json_array_append_new(top->node, value) != 0)
            return kiln_err_set(L->err, KILN_ENOMEM, "%s:%d: out of memory", L->name, line);
    } else {
        len = path_put(L, len, top->key, 0);
        line = top->key_line;
        if (json_object_get(top->node, top->key)) {
            json_decref(value);
            return kiln_err_set(L->err, KILN_EINVAL,
                                "%s:%d: duplicate key \"%s\" (first on line %d); keep one", L->name,
                                line, top->key, kiln_yaml_line(L->doc, L->path));
        }
        if (json_object_set_new(top->node, top->key, value) != 0)
            return kiln_err_set(L->err, KILN_EINVAL, "%s:%d: key \"%s\" cannot be stored", L->name,
                                line, top->key);
        free(top->key);
        top->key = NULL;
    }
    json_object_set_new(L->doc->lines, L->path, json_integer(line));
    *path_len = len;
    return 0;
}

static int take_key(loader_t *L, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (n > KILN_YAML_MAX_KEY)
        return kiln_err_set(L->err, KILN_EINVAL, "%s:%d: a key is longer than %d bytes; shorten it",
                            L->name, event_line(ev), KILN_YAML_MAX_KEY);
    if (memchr(s, '\0', n))
        return kiln_err_set(L->err, KILN_EINVAL, "%s:%d: a key contains a NUL character", L->name,
                            event_line(ev));
    L->stack[L->depth - 1].key = strdup(s);
    L->stack[L->depth - 1].key_line = event_line(ev);
    return L->stack[L->depth - 1].key ? 0 : KILN_ENOMEM;
}

static int on_scalar(loader_t *L, const yaml_event_t *ev)
{
    int rc = refuse_anchor_and_tag(L, ev, ev->data.scalar.anchor, ev->data.scalar.tag);
    if (rc)
        return rc;
    if (L->depth > 0 && json_is_object(L->stack[L->depth - 1].node) && !L->stack[L->depth - 1].key)
        return take_key(L, ev);
    if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length))
        return kiln_err_set(L->err, KILN_EINVAL, "%s:%d: a string contains a NUL character",
                            L->name, event_line(ev));
    size_t unused;
    return attach(L, resolve_scalar(ev), event_line(ev), &unused);
}

static int on_container_start(loader_t *L, const yaml_event_t *ev, bool is_mapping)
{
    const yaml_char_t *anchor =
        is_mapping ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
    const yaml_char_t *tag = is_mapping ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    int rc = refuse_anchor_and_tag(L, ev, anchor, tag);
    if (rc)
        return rc;
    if (L->depth > 0 && json_is_object(L->stack[L->depth - 1].node) && !L->stack[L->depth - 1].key)
        return kiln_err_set(L->err, KILN_EINVAL, "%s:%d: a key is a %s; keys must be plain strings",
                            L->name, event_line(ev), is_mapping ? "mapping" : "list");
    if (L->depth >= KILN_YAML_MAX_DEPTH)
        return kiln_err_set(L->err, KILN_EINVAL, "%s:%d: nesting deeper than %d levels; flatten it",
                            L->name, event_line(ev), KILN_YAML_MAX_DEPTH);
    json_t *node = is_mapping ? json_object() : json_array();
    size_t path_len;
    rc = attach(L, node, event_line(ev), &path_len);
    if (rc)
        return rc;
    L->stack[L->depth++] = (frame_t){.node = node, .key = NULL, .path_len = path_len};
    return 0;
}

static int on_event(loader_t *L, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++L->documents > 1)
            return kiln_err_set(L->err, KILN_EINVAL,
                                "%s:%d: a second YAML document; a config file holds one", L->name,
                                event_line(ev));
        return 0;
    case YAML_ALIAS_EVENT:
        return kiln_err_set(L->err, KILN_EINVAL,
                            "%s:%d: YAML aliases (*%s) are not allowed; write each value out",
                            L->name, event_line(ev), (const char *)ev->data.alias.anchor);
    case YAML_SCALAR_EVENT:
        return on_scalar(L, ev);
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        return on_container_start(L, ev, ev->type == YAML_MAPPING_START_EVENT);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        L->depth--;
        free(L->stack[L->depth].key);
        L->stack[L->depth].key = NULL;
        return 0;
    default:
        return 0;
    }
}

static int run_parser(loader_t *L)
{
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&L->parser, &ev))
            return parse_error(L);
        int rc = on_event(L, &ev);
        bool done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
        if (rc || done)
            return rc;
    }
}

int kiln_yaml_load_string(const char *text, size_t len, const char *name, kiln_yaml_doc_t *doc,
                          kiln_err_t *err)
{
    memset(doc, 0, sizeof *doc);
    if (len > KILN_YAML_MAX_BYTES)
        return kiln_err_set(err, KILN_ETOOBIG, "%s: %zu bytes is over the limit of %d (1 MiB)",
                            name, len, KILN_YAML_MAX_BYTES);
    loader_t *L = calloc(1, sizeof *L);
    doc->lines = json_object();
    if (!L || !doc->lines || !yaml_parser_initialize(&L->parser)) {
        free(L);
        kiln_yaml_doc_free(doc);
        return kiln_err_set(err, KILN_ENOMEM, "%s: out of memory", name);
    }
    L->name = name;
    L->doc = doc;
    L->err = err;
    yaml_parser_set_input_string(&L->parser, (const unsigned char *)text, len);
    int rc = run_parser(L);
    while (L->depth > 0)
        free(L->stack[--L->depth].key);
    yaml_parser_delete(&L->parser);
    free(L);
    if (rc) {
        kiln_yaml_doc_free(doc);
        return rc;
    }
    if (!doc->root)
        doc->root = json_null();
    return 0;
}

/* Reads at most KILN_YAML_MAX_BYTES + 1 bytes so that an oversized or
 * endless input (a FIFO, /dev/zero) is detected without reading it all. */
static int read_bounded(int fd, const char *path, char **out, size_t *out_len, kiln_err_t *err)
{
    size_t cap = KILN_YAML_MAX_BYTES + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return kiln_err_set(err, KILN_ENOMEM, "%s: out of memory", path);
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            return kiln_err_set(err, KILN_EIO, "%s: cannot read: %s", path, strerror(e));
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > KILN_YAML_MAX_BYTES) {
        free(buf);
        return kiln_err_set(err, KILN_ETOOBIG,
                            "%s: the file is over the limit of %d bytes (1 MiB); make it smaller",
                            path, KILN_YAML_MAX_BYTES);
    }
    *out = buf;
    *out_len = len;
    return 0;
}

int kiln_yaml_load_file(const char *path, kiln_yaml_doc_t *doc, kiln_err_t *err)
{
    memset(doc, 0, sizeof *doc);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return kiln_err_set(err, e == ENOENT ? KILN_ENOTFOUND : KILN_EIO, "%s: cannot open: %s",
                            path, strerror(e));
    }
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
        rc = kiln_err_set(err, KILN_EIO, "%s: is a directory; give the path of a file", path);
    else if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > KILN_YAML_MAX_BYTES)
        rc = kiln_err_set(err, KILN_ETOOBIG,
                          "%s: the file is %lld bytes, over the limit of %d (1 MiB); make it "
                          "smaller",
                          path, (long long)st.st_size, KILN_YAML_MAX_BYTES);
    char *text = NULL;
    size_t len = 0;
    if (rc == 0)
        rc = read_bounded(fd, path, &text, &len, err);
    close(fd);
    if (rc == 0)
        rc = kiln_yaml_load_string(text, len, path, doc, err);
    free(text);
    return rc;
}

int kiln_yaml_line(const kiln_yaml_doc_t *doc, const char *path)
{
    if (!doc || !doc->lines || !path)
        return 0;
    return (int)json_integer_value(json_object_get(doc->lines, path));
}

void kiln_yaml_doc_free(kiln_yaml_doc_t *doc)
{
    if (!doc)
        return;
    json_decref(doc->root);
    json_decref(doc->lines);
    doc->root = NULL;
    doc->lines = NULL;
}
