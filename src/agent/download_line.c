/*
 * Reading a download step's progress lines (kiln_download_line_parse). Kept
 * apart from the step itself (download_step.c), which links the downloader
 * and so libcurl, so the agent that only reads the lines does not.
 */
#include "kiln/download.h"

#include <jansson.h>
#include <string.h>

json_t *kiln_download_line_parse(const char *line)
{
    size_t n = strlen(KILN_DOWNLOAD_LINE_PREFIX);
    if (!line || strncmp(line, KILN_DOWNLOAD_LINE_PREFIX, n) != 0)
        return NULL;
    json_t *v = json_loads(line + n, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(v) || !json_is_string(json_object_get(v, "service"))) {
        json_decref(v);
        return NULL;
    }
    return v;
}
