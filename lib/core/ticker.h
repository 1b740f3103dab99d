/*
 * A periodic tick on a clock (ticker.c), for pollers of the event streams
 * and for periodic work that may block.
 * Thread-safety: fn runs on the clock's timer thread (dsysi_ticker_start)
 * or on the ticker's own thread (dsysi_ticker_start_thread, real clock);
 * start and stop from any one thread, never from fn.
 */
#ifndef DSYSI_TICKER_H
#define DSYSI_TICKER_H

#include <pthread.h>
#include <stdint.h>
#include <distsys/clock.h>

typedef struct dsysi_ticker {
  dsys_clock *clock;
  int64_t period_us;
  void (*fn)(void *ud);
  void *ud;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint64_t timer;
  int pending;  /* a timer is scheduled or its callback is running */
  int stopping;
  int threaded, due; /* own thread: the timer sets due and wakes it */
  pthread_t th;
} dsysi_ticker;

/** Run fn(ud) every period_ms on the clock's timers (never two at once).
 *  @return 0, DSYS_ENOMEM, DSYS_EINVAL. */
int dsysi_ticker_start(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms,
                       void (*fn)(void *), void *ud);
/** The same, but on a real clock fn runs on a thread of the ticker, which
 *  the timer only wakes: for work that waits for locks or the network,
 *  which must not hold up the clock's one timer thread (it also ends
 *  inproc:// calls' timeouts). On a fake clock fn runs inside
 *  dsys_clock_advance, as with dsysi_ticker_start. The next period starts
 *  when fn returns. @return 0, DSYS_ENOMEM, DSYS_EINVAL. */
int dsysi_ticker_start_thread(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms,
                              void (*fn)(void *), void *ud);
/** Stop: after it returns fn no longer runs (a running fn is waited for).
 *  Safe on a zeroed ticker. */
void dsysi_ticker_stop(dsysi_ticker *t);

#endif
