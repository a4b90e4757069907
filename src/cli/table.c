/*
 * CLI output helpers (table.h). Cells are sanitized when added, so printing
 * never has to think about hostile text again.
 */
#include "cli/table.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_common.h"
#include "kiln/err.h"

static char *dup_or_null(const char *text)
{
    return text ? strdup(text) : NULL;
}

int kiln_table_init(kiln_table_t *t, size_t n_cols, const char *const *headers)
{
    memset(t, 0, sizeof *t);
    t->n_cols = n_cols;
    t->headers = calloc(n_cols, sizeof *t->headers);
    t->align_right = calloc(n_cols, sizeof *t->align_right);
    if (!t->headers || !t->align_right)
        goto error;
    for (size_t c = 0; c < n_cols; c++) {
        if (!(t->headers[c] = dup_or_null(headers[c])))
            goto error;
    }
    return 0;
error:
    kiln_table_free(t);
    return KILN_ENOMEM;
}

void kiln_table_align_right(kiln_table_t *t, size_t col)
{
    if (col < t->n_cols)
        t->align_right[col] = true;
}

/* Cuts text (already sanitized, so valid UTF-8) after max - 3 code points
 * and appends "..." when it is wider than max. */
static void cut_to_width(char *text, size_t max)
{
    if (kiln_cli_display_width(text) <= max)
        return;
    size_t points = 0;
    for (char *p = text; *p; p++) {
        if (((unsigned char)*p & 0xC0) == 0x80)
            continue;
        if (points++ == max - 3) {
            strcpy(p, "...");
            return;
        }
    }
}

static char *make_cell(const char *text)
{
    if (!text)
        text = "-";
    size_t size = strlen(text) + 4;
    char *cell = malloc(size);
    if (!cell)
        return NULL;
    kiln_cli_sanitize(text, cell, size);
    cut_to_width(cell, KILN_TABLE_CELL_MAX);
    return cell;
}

int kiln_table_add_row(kiln_table_t *t, const char *const *cells)
{
    if (t->n_rows == t->cap_rows) {
        size_t cap = t->cap_rows ? t->cap_rows * 2 : 16;
        char **grown = realloc(t->cells, cap * t->n_cols * sizeof *grown);
        if (!grown)
            return KILN_ENOMEM;
        t->cells = grown;
        t->cap_rows = cap;
    }
    char **row = t->cells + t->n_rows * t->n_cols;
    for (size_t c = 0; c < t->n_cols; c++) {
        if (!(row[c] = make_cell(cells[c]))) {
            while (c-- > 0)
                free(row[c]);
            return KILN_ENOMEM;
        }
    }
    t->n_rows++;
    return 0;
}

static void print_cell(FILE *out, const char *text, size_t width, bool right, bool last)
{
    size_t pad = width - kiln_cli_display_width(text);
    if (right)
        fprintf(out, "%*s", (int)pad, "");
    fputs(text, out);
    if (!right && !last)
        fprintf(out, "%*s", (int)pad, "");
}

static void print_row(const kiln_table_t *t, FILE *out, char *const *row, const size_t *widths)
{
    for (size_t c = 0; c < t->n_cols; c++) {
        if (c > 0)
            fputs("  ", out);
        print_cell(out, row[c], widths[c], t->align_right[c], c + 1 == t->n_cols);
    }
}

void kiln_table_print(const kiln_table_t *t, FILE *out)
{
    size_t *widths = calloc(t->n_cols ? t->n_cols : 1, sizeof *widths);
    if (!widths)
        return;
    for (size_t c = 0; c < t->n_cols; c++) {
        widths[c] = kiln_cli_display_width(t->headers[c]);
        for (size_t r = 0; r < t->n_rows; r++) {
            size_t w = kiln_cli_display_width(t->cells[r * t->n_cols + c]);
            if (w > widths[c])
                widths[c] = w;
        }
    }
    bool bold = isatty(fileno(out)) && !getenv("NO_COLOR");
    if (bold)
        fputs("\033[1m", out);
    print_row(t, out, t->headers, widths);
    if (bold)
        fputs("\033[0m", out);
    fputc('\n', out);
    for (size_t r = 0; r < t->n_rows; r++) {
        print_row(t, out, t->cells + r * t->n_cols, widths);
        fputc('\n', out);
    }
    free(widths);
}

void kiln_table_free(kiln_table_t *t)
{
    for (size_t c = 0; t->headers && c < t->n_cols; c++)
        free(t->headers[c]);
    for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
        free(t->cells[i]);
    free(t->headers);
    free(t->align_right);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

size_t kiln_cli_display_width(const char *text)
{
    size_t width = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            width++;
    }
    return width;
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 when it is invalid
 * (bad lead byte, missing continuation, overlong form or surrogate). */
static size_t utf8_sequence_length(const unsigned char *p)
{
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        len = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        len = 3;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4)
        len = 4;
    else
        return 0;
    if (p[0] == 0xE0)
        lo = 0xA0;
    else if (p[0] == 0xED)
        hi = 0x9F;
    else if (p[0] == 0xF0)
        lo = 0x90;
    else if (p[0] == 0xF4)
        hi = 0x8F;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    }
    return len;
}

void kiln_cli_sanitize(const char *text, char *out, size_t size)
{
    const unsigned char *p = (const unsigned char *)(text ? text : "");
    size_t used = 0;
    if (size == 0)
        return;
    while (*p) {
        size_t len = utf8_sequence_length(p);
        /* C0 controls, DEL and the C1 controls (U+0080..U+009F) all steer
         * terminals; none belongs in an id, a name or a message. */
        bool control = *p < 0x20 || *p == 0x7F || (p[0] == 0xC2 && p[1] < 0xA0);
        bool replace = len == 0 || control;
        if (replace)
            len = 1;
        if (used + len >= size)
            break;
        if (replace)
            out[used] = '?';
        else
            memcpy(out + used, p, len);
        used += len;
        p += len;
    }
    out[used] = '\0';
}

void kiln_cli_format_duration(int64_t ms, char *out, size_t size)
{
    if (ms < 0)
        ms = 0;
    int64_t s = ms / 1000, m = s / 60, h = m / 60, d = h / 24;
    if (ms < 1000 && ms > 0)
        snprintf(out, size, "%lldms", (long long)ms);
    else if (s < 60)
        snprintf(out, size, "%llds", (long long)s);
    else if (m < 60)
        snprintf(out, size, "%lldm%02llds", (long long)m, (long long)(s % 60));
    else if (h < 24)
        snprintf(out, size, "%lldh%02lldm", (long long)h, (long long)(m % 60));
    else
        snprintf(out, size, "%lldd%02lldh", (long long)d, (long long)(h % 24));
}

void kiln_cli_format_age(int64_t epoch_ms, char *out, size_t size)
{
    if (epoch_ms <= 0) {
        snprintf(out, size, "-");
        return;
    }
    kiln_cli_format_duration(kiln_cli_now_ms() - epoch_ms, out, size);
}

void kiln_cli_format_time(int64_t epoch_ms, char *out, size_t size)
{
    if (epoch_ms <= 0) {
        snprintf(out, size, "-");
        return;
    }
    time_t secs = (time_t)(epoch_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, size - n, ".%03dZ", (int)(epoch_ms % 1000));
}

int64_t kiln_cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int kiln_cli_report(const char *cmd, int code, const kiln_err_t *err)
{
    char safe[KILN_ERR_MSG_MAX];
    kiln_cli_sanitize(err && err->msg[0] ? err->msg : kiln_strerror(code), safe, sizeof safe);
    fprintf(stderr, "kiln %s: %s\n", cmd, safe);
    return kiln_cli_exit_code(code);
}

void kiln_cli_print_json(const json_t *value)
{
    json_dumpf(value, stdout, JSON_COMPACT | JSON_ENCODE_ANY);
    fputc('\n', stdout);
}

const char *kiln_cli_json_str(const json_t *obj, const char *key, const char *fallback)
{
    const char *text = json_string_value(json_object_get(obj, key));
    return text ? text : fallback;
}

int64_t kiln_cli_json_int(const json_t *obj, const char *key)
{
    json_t *value = json_object_get(obj, key);
    if (json_is_integer(value))
        return (int64_t)json_integer_value(value);
    return (int64_t)json_number_value(value);
}

double kiln_cli_json_num(const json_t *obj, const char *key)
{
    return json_number_value(json_object_get(obj, key));
}
