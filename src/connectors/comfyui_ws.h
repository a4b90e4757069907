/*
 * The comfyui connector's progress socket: a WebSocket client for
 * ComfyUI's /ws?clientId=<id> on civetweb's mg_connect_websocket_client
 * (libcurl 7.88 has no WebSocket). civetweb reads the socket on its own
 * thread; the messages wait in a bounded queue until the job's thread takes
 * them, and an eventfd tells that thread, so it can poll(2) the socket
 * together with the job's cancel fd.
 */
#ifndef KILN_CONNECTORS_COMFYUI_WS_H
#define KILN_CONNECTORS_COMFYUI_WS_H

#include <stddef.h>

#define KILN_COMFYUI_WS_MESSAGE_MAX     (1024 * 1024)      /* bytes of one text message */
#define KILN_COMFYUI_WS_QUEUE_MAX       4096               /* messages not yet taken */
#define KILN_COMFYUI_WS_QUEUE_BYTES_MAX (16 * 1024 * 1024) /* their bytes */

typedef struct kiln_comfyui_ws kiln_comfyui_ws_t;

/* Connects to the WebSocket of the ComfyUI at base_url (http:// or
 * https://, with an optional path prefix) as client_id. Returns 0 with *out
 * owned by the caller (kiln_comfyui_ws_close), or -1 with the reason in
 * why (the server refused the upgrade, nothing listens, ...). */
int kiln_comfyui_ws_open(const char *base_url, const char *client_id, kiln_comfyui_ws_t **out,
                         char *why, size_t why_size);

/* A file descriptor that is readable while a message waits or once the
 * socket has closed. */
int kiln_comfyui_ws_fd(const kiln_comfyui_ws_t *ws);

/* Takes the next text message: returns 1 with *msg (malloc'd,
 * NUL-terminated; the caller frees it), 0 when none waits, or -1 when none
 * waits and the socket has closed (the reason in why). Binary messages
 * (ComfyUI's previews) are dropped on arrival. */
int kiln_comfyui_ws_next(kiln_comfyui_ws_t *ws, char **msg, char *why, size_t why_size);

/* Closes the socket, waits for civetweb's reading thread and frees
 * everything. NULL is a no-op. */
void kiln_comfyui_ws_close(kiln_comfyui_ws_t *ws);

#endif
