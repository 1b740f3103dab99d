/* A periodic tick on a clock's timers. */
#include <pthread.h>
#include "core/ticker.h"

static void ticker_fire(void *ud) {
  dsysi_ticker *t = ud;
  pthread_mutex_lock(&t->mu);
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

int dsysi_ticker_start(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms,
                       void (*fn)(void *), void *ud) {
  if (!t || !clock || period_ms <= 0 || !fn) return DSYS_EINVAL;
  t->clock = clock;
  t->period_us = period_ms * 1000;
  t->fn = fn;
  t->ud = ud;
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  pthread_mutex_lock(&t->mu);
  int rc = dsys_timer_add(clock, t->period_us, ticker_fire, t, &t->timer);
  t->pending = !rc;
  pthread_mutex_unlock(&t->mu);
  if (rc) {
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    t->fn = NULL;
  }
  return rc;
}

void dsysi_ticker_stop(dsysi_ticker *t) {
  if (!t || !t->fn) return;
  pthread_mutex_lock(&t->mu);
  t->stopping = 1;
  if (t->pending && dsys_timer_cancel(t->clock, t->timer) == 0) t->pending = 0;
  while (t->pending) pthread_cond_wait(&t->cv, &t->mu);
  pthread_mutex_unlock(&t->mu);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  t->fn = NULL;
}
