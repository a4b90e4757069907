#include "worker/redis_uv.h"

#include <stdlib.h>

typedef struct redis_uv {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has let go of us */
    int events;
} redis_uv_t;

static void on_poll(uv_poll_t *handle, int status, int events)
{
    redis_uv_t *a = handle->data;
    if (status < 0) {
        /* libuv stopped the poll; let hiredis read the socket error. */
        events = a->events;
    }
    if (a->ac && (events & UV_READABLE))
        redisAsyncHandleRead(a->ac);
    if (a->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(a->ac);
}

static void update(redis_uv_t *a, int events)
{
    a->events = events;
    if (events)
        uv_poll_start(&a->poll, events, on_poll);
    else
        uv_poll_stop(&a->poll);
}

static void add_read(void *data)
{
    redis_uv_t *a = data;
    update(a, a->events | UV_READABLE);
}

static void del_read(void *data)
{
    redis_uv_t *a = data;
    update(a, a->events & ~UV_READABLE);
}

static void add_write(void *data)
{
    redis_uv_t *a = data;
    update(a, a->events | UV_WRITABLE);
}

static void del_write(void *data)
{
    redis_uv_t *a = data;
    update(a, a->events & ~UV_WRITABLE);
}

static void on_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void cleanup(void *data)
{
    redis_uv_t *a = data;
    a->ac = NULL;
    uv_close((uv_handle_t *)&a->poll, on_closed);
}

int kiln_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data)
        return -1;
    redis_uv_t *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    if (uv_poll_init(loop, &a->poll, ac->c.fd) != 0) {
        free(a);
        return -1;
    }
    a->ac = ac;
    a->poll.data = a;
    ac->ev.data = a;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}
