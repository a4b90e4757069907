#include "worker/slots.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "kiln/log.h"

static void on_progress(void *ctx, double percent, const char *message)
{
    kiln_slot_t *slot = ctx;
    pthread_mutex_lock(&slot->mu);
    slot->percent = percent < 0 ? 0 : percent > 100 ? 100 : percent;
    snprintf(slot->message, sizeof slot->message, "%s", message ? message : "");
    bool first = !slot->progress_dirty;
    slot->progress_dirty = true;
    pthread_mutex_unlock(&slot->mu);
    if (first) {
        pthread_mutex_lock(&slot->pool->done_mu);
        slot->pool->progress_pending = true;
        pthread_mutex_unlock(&slot->pool->done_mu);
        uv_async_send(slot->pool->wakeup);
    }
}

static void run_job(kiln_slot_t *slot)
{
    kiln_job_context_t ctx = {
        .job_id = slot->job.id,
        .service = slot->service_name,
        .payload_json = slot->job.payload_json,
        .attempt = slot->job.attempt,
        .timeout_ms = slot->job.timeout_ms,
        .progress = on_progress,
        .progress_ctx = slot,
        .cancel = &slot->cancel,
        .cancel_fd = slot->cancel_fd,
    };
    memset(&slot->outcome, 0, sizeof slot->outcome);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int rc = kiln_connector_run(slot->connector, &ctx, &slot->outcome);
    clock_gettime(CLOCK_MONOTONIC, &end);
    slot->run_ms =
        (double)(end.tv_sec - start.tv_sec) * 1e3 + (double)(end.tv_nsec - start.tv_nsec) / 1e6;
    if (rc != 0) {
        kiln_job_outcome_clear(&slot->outcome);
        kiln_job_outcome_fail(&slot->outcome, true, "connector %s: internal error",
                              slot->service_name);
    }
}

static void *slot_main(void *arg)
{
    kiln_slot_t *slot = arg;
    for (;;) {
        pthread_mutex_lock(&slot->mu);
        while (!slot->has_job && !slot->quit)
            pthread_cond_wait(&slot->cv, &slot->mu);
        bool quit = slot->quit && !slot->has_job;
        pthread_mutex_unlock(&slot->mu);
        if (quit)
            return NULL;
        run_job(slot);
        pthread_mutex_lock(&slot->mu);
        slot->has_job = false;
        pthread_mutex_unlock(&slot->mu);
        pthread_mutex_lock(&slot->pool->done_mu);
        slot->next_done = slot->pool->done;
        slot->pool->done = slot;
        pthread_mutex_unlock(&slot->pool->done_mu);
        uv_async_send(slot->pool->wakeup);
    }
}

int kiln_slotpool_init(kiln_slotpool_t *pool, int count, uv_async_t *wakeup, kiln_err_t *err)
{
    memset(pool, 0, sizeof *pool);
    pool->slots = calloc((size_t)count, sizeof *pool->slots);
    if (!pool->slots)
        return kiln_err_set(err, KILN_ENOMEM, "out of memory for %d slots", count);
    pool->wakeup = wakeup;
    pthread_mutex_init(&pool->done_mu, NULL);
    for (int i = 0; i < count; i++) {
        kiln_slot_t *slot = &pool->slots[i];
        slot->index = i;
        slot->pool = pool;
        slot->state = KILN_SLOT_IDLE;
        pthread_mutex_init(&slot->mu, NULL);
        pthread_cond_init(&slot->cv, NULL);
        slot->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1024 * 1024);
        int rc = slot->cancel_fd < 0 ? -1 : pthread_create(&slot->thread, &attr, slot_main, slot);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            if (slot->cancel_fd >= 0)
                close(slot->cancel_fd);
            pool->count = i;
            kiln_slotpool_close(pool);
            return kiln_err_set(err, KILN_ENOMEM, "cannot start slot thread %d of %d", i + 1,
                                count);
        }
        pool->count = i + 1;
    }
    return 0;
}

void kiln_slotpool_run(kiln_slot_t *slot)
{
    uint64_t drain;
    while (read(slot->cancel_fd, &drain, sizeof drain) > 0) {
    }
    atomic_store(&slot->cancel, 0);
    slot->state = KILN_SLOT_RUNNING;
    slot->released = false;
    pthread_mutex_lock(&slot->mu);
    slot->progress_dirty = false;
    slot->has_job = true;
    pthread_cond_signal(&slot->cv);
    pthread_mutex_unlock(&slot->mu);
}

kiln_slot_t *kiln_slotpool_take_done(kiln_slotpool_t *pool)
{
    pthread_mutex_lock(&pool->done_mu);
    kiln_slot_t *list = pool->done;
    pool->done = NULL;
    pthread_mutex_unlock(&pool->done_mu);
    for (kiln_slot_t *s = list; s; s = s->next_done)
        s->state = KILN_SLOT_DONE;
    return list;
}

void kiln_slot_cancel(kiln_slot_t *slot)
{
    if (atomic_exchange(&slot->cancel, 1) == 0) {
        uint64_t one = 1;
        if (write(slot->cancel_fd, &one, sizeof one) < 0)
            KILN_LOG_WARN_("worker", "slot %d: cannot signal cancel", slot->index);
    }
}

bool kiln_slot_take_progress(kiln_slot_t *slot, double *percent, char *message, size_t size)
{
    pthread_mutex_lock(&slot->mu);
    bool dirty = slot->progress_dirty;
    if (dirty) {
        *percent = slot->percent;
        snprintf(message, size, "%s", slot->message);
        slot->progress_dirty = false;
    }
    pthread_mutex_unlock(&slot->mu);
    return dirty;
}

int kiln_slotpool_idle(const kiln_slotpool_t *pool)
{
    int idle = 0;
    for (int i = 0; i < pool->count; i++)
        idle += pool->slots[i].state == KILN_SLOT_IDLE;
    return idle;
}

void kiln_slotpool_close(kiln_slotpool_t *pool)
{
    for (int i = 0; i < pool->count; i++) {
        kiln_slot_t *slot = &pool->slots[i];
        pthread_mutex_lock(&slot->mu);
        slot->quit = true;
        pthread_cond_signal(&slot->cv);
        pthread_mutex_unlock(&slot->mu);
    }
    for (int i = 0; i < pool->count; i++) {
        kiln_slot_t *slot = &pool->slots[i];
        pthread_join(slot->thread, NULL);
        close(slot->cancel_fd);
        pthread_mutex_destroy(&slot->mu);
        pthread_cond_destroy(&slot->cv);
        kiln_claimed_job_clear(&slot->job);
        kiln_job_outcome_clear(&slot->outcome);
    }
    pthread_mutex_destroy(&pool->done_mu);
    free(pool->slots);
    pool->slots = NULL;
    pool->count = 0;
}
