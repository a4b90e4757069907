/*
 * The monitor UI: web/index.html at /, web/app.js and web/style.css at
 * /ui/, embedded into the binary at build (CMakeLists.txt, kiln-embed).
 * The page needs no token to load; it asks for one and sends it with
 * every API call. Replies carry a strong ETag (a hash of the bytes) and
 * Cache-Control: no-cache, so browsers revalidate and get 304 until the
 * binary changes. GET /v1/me tells the page the caller's role, so it shows
 * the buttons that role may use.
 */
#include <stdio.h>
#include <string.h>

#include "hub/hub_internal.h"

extern const unsigned char kiln_web_index_html[];
extern const unsigned long kiln_web_index_html_len;
extern const unsigned char kiln_web_app_js[];
extern const unsigned long kiln_web_app_js_len;
extern const unsigned char kiln_web_style_css[];
extern const unsigned long kiln_web_style_css_len;

typedef struct web_asset {
    const char *path;
    const char *content_type;
    const unsigned char *bytes;
    const unsigned long *len;
} web_asset_t;

static const web_asset_t assets[] = {
    {"/", "text/html; charset=utf-8", kiln_web_index_html, &kiln_web_index_html_len},
    {"/ui/app.js", "text/javascript; charset=utf-8", kiln_web_app_js, &kiln_web_app_js_len},
    {"/ui/style.css", "text/css; charset=utf-8", kiln_web_style_css, &kiln_web_style_css_len},
};

/* FNV-1a over the bytes, as a quoted ETag. */
static void etag_of(const web_asset_t *a, char out[24])
{
    unsigned long long h = 1469598103934665603ULL;
    for (unsigned long i = 0; i < *a->len; i++)
        h = (h ^ a->bytes[i]) * 1099511628211ULL;
    snprintf(out, 24, "\"%016llx\"", h);
}

int hub_web_serve(hub_req_t *req)
{
    const web_asset_t *a = NULL;
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++)
        if (strcmp(req->ri->local_uri, assets[i].path) == 0)
            a = &assets[i];
    if (!a)
        return hub_reply_error(req, 404, NULL, "no file %.128s in the monitor UI",
                               req->ri->local_uri);
    char etag[24], length[32];
    etag_of(a, etag);
    const char *match = mg_get_header(req->conn, "If-None-Match");
    int status = match && strstr(match, etag) ? 304 : 200;
    snprintf(length, sizeof length, "%lu", status == 200 ? *a->len : 0UL);
    mg_response_header_start(req->conn, status);
    mg_response_header_add(req->conn, "Content-Type", a->content_type, -1);
    mg_response_header_add(req->conn, "Cache-Control", "no-cache", -1);
    mg_response_header_add(req->conn, "ETag", etag, -1);
    mg_response_header_add(req->conn, "X-Content-Type-Options", "nosniff", -1);
    mg_response_header_add(
        req->conn, "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:", -1);
    if (status == 200)
        mg_response_header_add(req->conn, "Content-Length", length, -1);
    mg_response_header_send(req->conn);
    if (status == 200 && strcmp(req->ri->request_method, "HEAD") != 0)
        mg_write(req->conn, a->bytes, *a->len);
    atomic_fetch_add(&req->hub->requests[status / 100], 1);
    return status;
}

int hub_web_me(hub_req_t *req)
{
    static const char *const roles[] = {"admin", "submit", "read"};
    if (req->hub->n_tokens == 0)
        return hub_reply_json(req, 200,
                              json_pack("{s:s, s:n, s:b}", "role", "admin", "name", "auth", 0));
    return hub_reply_json(req, 200,
                          json_pack("{s:s, s:s, s:b}", "role", roles[req->token->role], "name",
                                    req->token->name, "auth", 1));
}
