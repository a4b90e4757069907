/*
 * Active windows: the times of day a machine's workers may claim jobs,
 * e.g. "22:00-06:00" or "22:00-06:00,12:00-13:30", in the machine's local
 * time. A window whose end is earlier than its start crosses midnight. The
 * start minute is inside a window, the end minute is not; "00:00-24:00"
 * is the whole day. No windows at all means always open.
 */
#ifndef KILN_WINDOWS_H
#define KILN_WINDOWS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "kiln/err.h"

#define KILN_WINDOWS_MAX      16
#define KILN_WINDOWS_TEXT_MAX 512

typedef struct kiln_window {
    int start_min; /* minute of the day, 0-1439 */
    int end_min;   /* 0-1440; less than start_min: crosses midnight */
} kiln_window_t;

typedef struct kiln_windows {
    kiln_window_t items[KILN_WINDOWS_MAX];
    size_t count; /* 0: always open */
} kiln_windows_t;

/* Parses a comma list of HH:MM-HH:MM windows (spaces around items allowed)
 * into out. field names the setting in error messages ("worker.active_windows").
 * Returns 0, KILN_EINVAL (the message names field, the item and the form
 * expected) or KILN_ETOOBIG (more than KILN_WINDOWS_MAX windows, or text
 * longer than KILN_WINDOWS_TEXT_MAX). An empty string means no windows. */
int kiln_windows_parse(const char *text, const char *field, kiln_windows_t *out, kiln_err_t *err);

/* Whether minute_of_day (0-1439) lies inside one of the windows. */
bool kiln_windows_open_at(const kiln_windows_t *w, int minute_of_day);

/* Whether the local time of `now` lies inside one of the windows. */
bool kiln_windows_open_now(const kiln_windows_t *w, time_t now);

/* Seconds from `now` until the windows next open or close (whichever
 * changes their state first), at least 1 and at most a day; for no windows
 * a day. A caller sleeping this long re-checks exactly at the boundary. */
long kiln_windows_next_change_s(const kiln_windows_t *w, time_t now);

/* Writes the windows back as canonical text ("22:00-06:00,12:00-13:30"). */
void kiln_windows_format(const kiln_windows_t *w, char *out, size_t size);

#endif
