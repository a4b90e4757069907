/*
 * URL and header text helpers with no libcurl in them, so programs that never
 * make a transfer (the machine agent) can use them without linking libcurl.
 */
#include "core/url_text.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

bool kiln_http_header_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && strncasecmp(line, name, n) == 0;
}

bool kiln_url_is_http(const char *url)
{
    return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0;
}

void kiln_url_redact(const char *url, char *out, size_t size)
{
    const char *sep = strstr(url, "://");
    const char *authority = sep ? sep + 3 : url;
    size_t authority_len = strcspn(authority, "/?#");
    const char *at = memrchr(authority, '@', authority_len);
    const char *host = at ? at + 1 : authority;
    const char *rest = authority + authority_len;
    size_t path_len = strcspn(rest, "?#");
    snprintf(out, size, "%.*s%.*s%.*s%s", (int)(authority - url), url,
             (int)(authority + authority_len - host), host, (int)path_len, rest,
             rest[path_len] ? "?[redacted]" : "");
}
