/*
 * Group commit of submits. Request threads queue their job specs and wait;
 * SENDERS threads each take whatever is waiting for one service and send it
 * as one submit call (kiln_broker_submit_batch, up to KILN_SUBMIT_BATCH_MAX
 * jobs). Nothing waits for a batch to fill: while the calls are in flight
 * the next requests gather, so under load each Redis round trip carries
 * many jobs, and a lone request goes at once.
 */
#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>

#include "hub/hub_internal.h"
#include "kiln/log.h"

/* Batches in flight at once: while Redis runs one, the next is on its
 * way, so neither Redis nor the request threads wait for a round trip. */
#define SENDERS 2

typedef struct batch_item {
    const kiln_job_spec_t *spec; /* borrowed from the waiting request */
    char id[KILN_JOB_ID_MAX];
    int rc;
    kiln_err_t err;
    /* Posted when rc, err and id are set. A semaphore, not a condition on
     * mu: the woken request does not queue for the lock the batcher holds
     * while it wakes the rest of the batch. */
    sem_t done;
    struct batch_item *next;
} batch_item_t;

/* One sending thread: takes a batch, sends it, wakes its requests. */
typedef struct sender {
    hub_batcher_t *bt;
    pthread_t thread;
    bool started;
    kiln_broker_t *broker; /* the thread's own connection */
} sender_t;

struct hub_batcher {
    kiln_hub_t *hub;
    pthread_mutex_t mu;
    pthread_cond_t work;
    batch_item_t *head, *tail;
    bool stop;
    sender_t senders[SENDERS];
};

/* Takes the waiting items of the first one's service (at most
 * KILN_SUBMIT_BATCH_MAX) off the queue into out; returns how many. Called
 * with mu held. */
static size_t take_batch(hub_batcher_t *bt, batch_item_t **out)
{
    size_t n = 0;
    const char *service = bt->head->spec->service;
    batch_item_t **link = &bt->head;
    while (*link && n < KILN_SUBMIT_BATCH_MAX) {
        batch_item_t *item = *link;
        if (strcmp(item->spec->service, service) == 0) {
            *link = item->next;
            out[n++] = item;
        } else {
            link = &item->next;
        }
    }
    bt->tail = bt->head;
    while (bt->tail && bt->tail->next)
        bt->tail = bt->tail->next;
    return n;
}

static void submit_batch(sender_t *sd, batch_item_t **items, size_t n, kiln_job_spec_t *specs,
                         char (*ids)[KILN_JOB_ID_MAX])
{
    kiln_err_t err = {0};
    int rc = sd->broker ? 0 : kiln_broker_connect(&sd->bt->hub->broker_opts, &sd->broker, &err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        specs[i] = *items[i]->spec; /* shallow: the batch call only reads */
    if (rc == 0)
        rc = kiln_broker_submit_batch(sd->broker, specs, n, ids, &err);
    if (rc == KILN_EREDIS) {
        kiln_broker_free(sd->broker);
        sd->broker = NULL;
    }
    /* The items are off the queue: only this thread touches them until
     * their post. */
    for (size_t i = 0; i < n; i++) {
        items[i]->rc = rc;
        items[i]->err = err;
        if (rc == 0)
            memcpy(items[i]->id, ids[i], KILN_JOB_ID_MAX);
        sem_post(&items[i]->done);
    }
}

static void *sender_main(void *arg)
{
    sender_t *sd = arg;
    hub_batcher_t *bt = sd->bt;
    batch_item_t **items = malloc(KILN_SUBMIT_BATCH_MAX * sizeof *items);
    kiln_job_spec_t *specs = malloc(KILN_SUBMIT_BATCH_MAX * sizeof *specs);
    char(*ids)[KILN_JOB_ID_MAX] = malloc(KILN_SUBMIT_BATCH_MAX * sizeof *ids);
    for (;;) {
        pthread_mutex_lock(&bt->mu);
        while (!bt->head && !bt->stop)
            pthread_cond_wait(&bt->work, &bt->mu);
        if (!bt->head) {
            pthread_mutex_unlock(&bt->mu);
            break;
        }
        size_t n = items && specs && ids ? take_batch(bt, items) : 0;
        pthread_mutex_unlock(&bt->mu);
        if (n == 0) {
            kiln_log(KILN_LOG_ERROR, "hub", NULL, NULL, "submit batcher: out of memory");
            break;
        }
        submit_batch(sd, items, n, specs, ids);
    }
    free(items);
    free(specs);
    free(ids);
    return NULL;
}

int hub_batcher_start(kiln_hub_t *hub, kiln_err_t *err)
{
    hub_batcher_t *bt = calloc(1, sizeof *bt);
    if (!bt)
        return kiln_err_set(err, KILN_ENOMEM, "hub: out of memory");
    bt->hub = hub;
    pthread_mutex_init(&bt->mu, NULL);
    pthread_cond_init(&bt->work, NULL);
    hub->batcher = bt;
    for (int i = 0; i < SENDERS; i++) {
        sender_t *sd = &bt->senders[i];
        sd->bt = bt;
        sd->started = pthread_create(&sd->thread, NULL, sender_main, sd) == 0;
        if (!sd->started) {
            hub_batcher_stop(hub);
            return kiln_err_set(err, KILN_EIO, "hub: cannot start the submit threads");
        }
    }
    return 0;
}

void hub_batcher_stop(kiln_hub_t *hub)
{
    hub_batcher_t *bt = hub->batcher;
    if (!bt)
        return;
    pthread_mutex_lock(&bt->mu);
    bt->stop = true;
    pthread_cond_broadcast(&bt->work);
    pthread_mutex_unlock(&bt->mu);
    for (int i = 0; i < SENDERS; i++) {
        if (bt->senders[i].started)
            pthread_join(bt->senders[i].thread, NULL);
        kiln_broker_free(bt->senders[i].broker);
    }
    pthread_mutex_destroy(&bt->mu);
    pthread_cond_destroy(&bt->work);
    free(bt);
    hub->batcher = NULL;
}

int hub_batcher_submit(kiln_hub_t *hub, const kiln_job_spec_t *spec, char *id, kiln_err_t *err)
{
    hub_batcher_t *bt = hub->batcher;
    batch_item_t item = {.spec = spec};
    pthread_mutex_lock(&bt->mu);
    if (bt->stop) {
        pthread_mutex_unlock(&bt->mu);
        return kiln_err_set(err, KILN_ECANCELLED, "the hub is shutting down");
    }
    sem_init(&item.done, 0, 0);
    if (bt->tail)
        bt->tail->next = &item;
    else
        bt->head = &item;
    bt->tail = &item;
    pthread_cond_signal(&bt->work);
    pthread_mutex_unlock(&bt->mu);
    while (sem_wait(&item.done) != 0 && errno == EINTR)
        ;
    sem_destroy(&item.done);
    if (item.rc == 0)
        memcpy(id, item.id, KILN_JOB_ID_MAX);
    else if (err)
        *err = item.err;
    return item.rc;
}
