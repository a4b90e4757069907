#include "core/curl_util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

CURLcode kiln_curl_global_init(void)
{
    pthread_once(&curl_once, curl_init_once);
    return curl_init_result;
}

bool kiln_curl_code_retryable(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
        return true;
    default:
        return false;
    }
}

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
