/* Active windows: parsing and evaluating HH:MM-HH:MM lists (kiln/windows.h). */
#include "kiln/windows.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define MINUTES_PER_DAY 1440

/* Reads HH:MM at *p (00:00-23:59, or 24:00 when allow_24), advancing *p.
 * Returns the minute of the day or -1. */
static int parse_clock(const char **p, bool allow_24)
{
    const char *s = *p;
    if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) || s[2] != ':' ||
        !isdigit((unsigned char)s[3]) || !isdigit((unsigned char)s[4]))
        return -1;
    int hours = (s[0] - '0') * 10 + (s[1] - '0');
    int minutes = (s[3] - '0') * 10 + (s[4] - '0');
    if (minutes > 59 || hours > 24 || (hours == 24 && (!allow_24 || minutes != 0)))
        return -1;
    *p = s + 5;
    return hours * 60 + minutes;
}

static const char *skip_spaces(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Parses one item of len bytes at text into win. */
static bool parse_item(const char *text, size_t len, kiln_window_t *win)
{
    char item[64];
    if (len == 0 || len >= sizeof item)
        return false;
    memcpy(item, text, len);
    item[len] = '\0';
    const char *p = skip_spaces(item);
    int start = parse_clock(&p, false);
    if (start < 0 || *p++ != '-')
        return false;
    int end = parse_clock(&p, true);
    if (end < 0 || *skip_spaces(p) != '\0' || end == start)
        return false;
    win->start_min = start;
    win->end_min = end;
    return true;
}

int kiln_windows_parse(const char *text, const char *field, kiln_windows_t *out, kiln_err_t *err)
{
    memset(out, 0, sizeof *out);
    size_t total = strlen(text);
    if (total > KILN_WINDOWS_TEXT_MAX)
        return kiln_err_set(err, KILN_ETOOBIG, "%s: expected at most %d characters, got %zu", field,
                            KILN_WINDOWS_TEXT_MAX, total);
    if (*skip_spaces(text) == '\0')
        return 0;
    const char *p = text;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (out->count == KILN_WINDOWS_MAX)
            return kiln_err_set(err, KILN_ETOOBIG, "%s: expected at most %d windows, got more",
                                field, KILN_WINDOWS_MAX);
        if (!parse_item(p, len, &out->items[out->count])) {
            memset(out, 0, sizeof *out);
            return kiln_err_set(err, KILN_EINVAL,
                                "%s: expected windows like \"22:00-06:00\" (HH:MM-HH:MM, start "
                                "and end different, comma separated), got \"%.*s\"",
                                field, (int)(len > 64 ? 64 : len), p);
        }
        out->count++;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static bool window_contains(const kiln_window_t *win, int minute)
{
    if (win->start_min < win->end_min)
        return minute >= win->start_min && minute < win->end_min;
    return minute >= win->start_min || minute < win->end_min; /* crosses midnight */
}

bool kiln_windows_open_at(const kiln_windows_t *w, int minute_of_day)
{
    if (w->count == 0)
        return true;
    for (size_t i = 0; i < w->count; i++)
        if (window_contains(&w->items[i], minute_of_day))
            return true;
    return false;
}

bool kiln_windows_open_now(const kiln_windows_t *w, time_t now)
{
    struct tm local;
    localtime_r(&now, &local);
    return kiln_windows_open_at(w, local.tm_hour * 60 + local.tm_min);
}

long kiln_windows_next_change_s(const kiln_windows_t *w, time_t now)
{
    if (w->count == 0)
        return MINUTES_PER_DAY * 60L;
    struct tm local;
    localtime_r(&now, &local);
    int minute = local.tm_hour * 60 + local.tm_min;
    bool open = kiln_windows_open_at(w, minute);
    /* Walks the minutes ahead; a day has 1440, so this stays cheap. */
    for (int ahead = 1; ahead <= MINUTES_PER_DAY; ahead++)
        if (kiln_windows_open_at(w, (minute + ahead) % MINUTES_PER_DAY) != open)
            return (long)ahead * 60 - local.tm_sec > 0 ? (long)ahead * 60 - local.tm_sec : 1;
    return MINUTES_PER_DAY * 60L;
}

void kiln_windows_format(const kiln_windows_t *w, char *out, size_t size)
{
    size_t used = 0;
    if (size == 0)
        return;
    out[0] = '\0';
    for (size_t i = 0; i < w->count && used < size; i++) {
        const kiln_window_t *win = &w->items[i];
        int n = snprintf(out + used, size - used, "%s%02d:%02d-%02d:%02d", i ? "," : "",
                         win->start_min / 60, win->start_min % 60, win->end_min / 60,
                         win->end_min % 60);
        if (n < 0)
            return;
        used += (size_t)n;
    }
}
