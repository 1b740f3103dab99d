/* A periodic tick on a clock's timers. */
#include <pthread.h>
#include "core/ticker.h"

static void ticker_fire(void *ud) {
  dsysi_ticker *t = ud;
  pthread_mutex_lock(&t->mu);
  if (t->threaded) { /* wake the ticker's thread, never wait here */
    t->due = 1;
    t->pending = 0;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return;
  }
  int stop = t->stopping;
  pthread_mutex_unlock(&t->mu);
  if (!stop) t->fn(t->ud);
  pthread_mutex_lock(&t->mu);
  if (t->stopping || dsys_timer_add(t->clock, t->period_us, ticker_fire, t, &t->timer)) {
    t->pending = 0;
    pthread_cond_broadcast(&t->cv);
  }
  pthread_mutex_unlock(&t->mu);
}

/* The thread of a threaded ticker: fn per timer, then the next timer. */
static void *ticker_main(void *arg) {
  dsysi_ticker *t = arg;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (!t->due && !t->stopping) pthread_cond_wait(&t->cv, &t->mu);
    if (t->stopping) break;
    t->due = 0;
    pthread_mutex_unlock(&t->mu);
    t->fn(t->ud);
    pthread_mutex_lock(&t->mu);
    if (!t->stopping && !dsys_timer_add(t->clock, t->period_us, ticker_fire, t, &t->timer))
      t->pending = 1;
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

static int start(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms, void (*fn)(void *),
                 void *ud, int threaded) {
  if (!t || !clock || period_ms <= 0 || !fn) return DSYS_EINVAL;
  t->clock = clock;
  t->period_us = period_ms * 1000;
  t->fn = fn;
  t->ud = ud;
  t->stopping = t->due = 0;
  t->threaded = threaded && !dsys_clock_is_fake(clock);
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  int rc = 0, made = 0;
  if (t->threaded) {
    if (pthread_create(&t->th, NULL, ticker_main, t)) rc = DSYS_ENOMEM;
    else made = 1;
  }
  pthread_mutex_lock(&t->mu);
  if (!rc) rc = dsys_timer_add(clock, t->period_us, ticker_fire, t, &t->timer);
  t->pending = !rc;
  if (rc && made) {
    t->stopping = 1;
    pthread_cond_broadcast(&t->cv);
  }
  pthread_mutex_unlock(&t->mu);
  if (rc) {
    if (made) pthread_join(t->th, NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    t->fn = NULL;
  }
  return rc;
}

int dsysi_ticker_start(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms,
                       void (*fn)(void *), void *ud) {
  return start(t, clock, period_ms, fn, ud, 0);
}

int dsysi_ticker_start_thread(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms,
                              void (*fn)(void *), void *ud) {
  return start(t, clock, period_ms, fn, ud, 1);
}

void dsysi_ticker_stop(dsysi_ticker *t) {
  if (!t || !t->fn) return;
  pthread_mutex_lock(&t->mu);
  t->stopping = 1;
  if (t->pending && dsys_timer_cancel(t->clock, t->timer) == 0) t->pending = 0;
  pthread_cond_broadcast(&t->cv);
  /* a timer callback under way (short when threaded) */
  while (t->pending) pthread_cond_wait(&t->cv, &t->mu);
  pthread_mutex_unlock(&t->mu);
  if (t->threaded) pthread_join(t->th, NULL); /* waits for a running fn */
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  t->fn = NULL;
}
