/*
 * CLI output helpers: a table printer whose column widths follow the
 * content, human durations ("3m12s"), text made safe for a terminal, and
 * JSON for --json. Every table command prints through these so the output
 * looks the same everywhere.
 */
#ifndef KILN_CLI_TABLE_H
#define KILN_CLI_TABLE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kiln/err.h"

/* A cell longer than this many characters is cut and ends in "...". */
#define KILN_TABLE_CELL_MAX 120

typedef struct kiln_table {
    size_t n_cols;
    char **headers;    /* owned copies */
    bool *align_right; /* per column; numbers read better right-aligned */
    char **cells;      /* owned; n_rows * n_cols, row-major */
    size_t n_rows;
    size_t cap_rows;
} kiln_table_t;

/* Prepares t with n_cols columns named by headers (copied). Returns 0 or
 * KILN_ENOMEM. Release with kiln_table_free. */
int kiln_table_init(kiln_table_t *t, size_t n_cols, const char *const *headers);

/* Right-aligns column col (for counts and percentages). */
void kiln_table_align_right(kiln_table_t *t, size_t col);

/* Appends a row of n_cols cells (copied, made safe with kiln_cli_sanitize;
 * NULL prints as "-"). Returns 0 or KILN_ENOMEM. */
int kiln_table_add_row(kiln_table_t *t, const char *const *cells);

/* Prints the header and rows to out, columns two spaces apart, no trailing
 * blanks. The header is bold only when out is a terminal. */
void kiln_table_print(const kiln_table_t *t, FILE *out);

/* Releases what t owns (not t itself). */
void kiln_table_free(kiln_table_t *t);

/* Number of terminal columns text takes: UTF-8 code points, each counted
 * as one (wide characters are rare in ids and service names). */
size_t kiln_cli_display_width(const char *text);

/* Copies text into out (size bytes, always NUL-terminated) with control
 * characters and invalid UTF-8 replaced by '?', so data from a job cannot
 * move the cursor or change colours on the user's terminal. */
void kiln_cli_sanitize(const char *text, char *out, size_t size);

/* Formats a duration: "450ms", "12s", "3m12s", "2h05m", "3d04h"; negative
 * values print as "0s". */
void kiln_cli_format_duration(int64_t ms, char *out, size_t size);

/* Formats how long ago epoch_ms was (a duration from now); "-" when
 * epoch_ms is 0 (never). */
void kiln_cli_format_age(int64_t epoch_ms, char *out, size_t size);

/* Formats epoch_ms as UTC "2026-11-22T06:00:00.123Z"; "-" when 0. */
void kiln_cli_format_time(int64_t epoch_ms, char *out, size_t size);

/* Milliseconds since the epoch (wall clock, to compare with job times). */
int64_t kiln_cli_now_ms(void);

/* Prints "kiln CMD: <err's message>" (or the code's name when err has no
 * message) on stderr and returns the exit code for code (kiln_cli_exit_code). */
int kiln_cli_report(const char *cmd, int code, const kiln_err_t *err);

/* Prints value as one line of compact JSON on stdout. */
void kiln_cli_print_json(const json_t *value);

/* obj[key] as a string, or fallback when absent, null or not a string. */
const char *kiln_cli_json_str(const json_t *obj, const char *key, const char *fallback);

/* obj[key] as an integer (a real is truncated); 0 when absent or not a number. */
int64_t kiln_cli_json_int(const json_t *obj, const char *key);

/* obj[key] as a number; 0 when absent or not a number. */
double kiln_cli_json_num(const json_t *obj, const char *key);

#endif
