/*
 * Clocks and timers. Every timeout and interval in the library reads a
 * dsys_clock, so tests can use a fake clock that they advance by hand.
 *
 * A clock also runs timers. On the real clock, timer callbacks run on one
 * internal timer thread per clock; on a fake clock they run inside
 * dsys_clock_advance(), on the thread that calls it, in deadline order.
 * Callbacks run with no library lock held and must not block for long.
 *
 * Thread-safety: all functions may be called from any thread.
 */
#ifndef DSYS_CLOCK_H
#define DSYS_CLOCK_H

#include <distsys/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_clock dsys_clock;

/** Timer callback. Runs once; see the header comment for the thread. */
typedef void (*dsys_timer_fn)(void *ud);

/**
 * The process-wide real clock (monotonic + wall). Never NULL; never freed
 * (dsys_clock_free ignores it).
 */
DSYS_API dsys_clock *dsys_clock_real(void);

/**
 * Create a fake clock for tests.
 * @param out receives the clock.
 * @param start_wall_ms initial wall time in ms since the epoch.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_clock_fake_new(dsys_clock **out, int64_t start_wall_ms);

/**
 * Free a fake clock; pending timers are dropped without running. NULL-safe;
 * the real clock is ignored. No timer callback may be running.
 */
DSYS_API void dsys_clock_free(dsys_clock *clk);

/** Monotonic time in microseconds (arbitrary origin). */
DSYS_API int64_t dsys_clock_now_us(dsys_clock *clk);

/** Monotonic time in milliseconds. */
DSYS_API int64_t dsys_clock_now_ms(dsys_clock *clk);

/** Wall time in milliseconds since the Unix epoch. */
DSYS_API int64_t dsys_clock_wall_ms(dsys_clock *clk);

/** Nonzero for a fake clock. */
DSYS_API int dsys_clock_is_fake(dsys_clock *clk);

/**
 * Advance a fake clock by delta_us (>= 0), running every timer that becomes
 * due, in deadline order, on the calling thread.
 * @return 0, DSYS_EINVAL (negative delta or not a fake clock).
 */
DSYS_API int dsys_clock_advance(dsys_clock *clk, int64_t delta_us);

/**
 * Schedule fn(ud) to run once after delay_us.
 * @param id receives a nonzero timer id (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM. On failure fn never runs.
 */
DSYS_API int dsys_timer_add(dsys_clock *clk, int64_t delay_us,
                            dsys_timer_fn fn, void *ud, uint64_t *id);

/**
 * Cancel a timer.
 * @return 0 if it was pending and now will never run; DSYS_ENOTFOUND if it
 *         already ran, is running, or never existed.
 */
DSYS_API int dsys_timer_cancel(dsys_clock *clk, uint64_t id);

/** Sleep for delay_us on the real clock; on a fake clock, advance it. */
DSYS_API void dsys_clock_sleep_us(dsys_clock *clk, int64_t delay_us);

/** Format wall ms as ISO-8601 UTC "2026-01-02T03:04:05.678Z" into buf (>= 25 bytes). */
DSYS_API void dsys_time_iso8601(int64_t wall_ms, char *buf, size_t buflen);

#ifdef __cplusplus
}
#endif
#endif
