/*
 * The optional link hook of the inproc:// transport, for the deterministic
 * simulation (tools/sim/net.c): when set, every request and every reply
 * asks it whether to deliver, how late, or to lose the message. NULL in
 * production (one predictable branch per call and per reply).
 */
#ifndef DSYSI_INPROC_H
#define DSYSI_INPROC_H

#include <stdint.h>

enum { DSYSI_LINK_DELIVER = 0, DSYSI_LINK_DROP = 1 };

typedef struct dsysi_inproc_link {
  /* A request (its path) from the calling thread to listener `to`:
   * returns DELIVER (after *delay_us) or DROP; *tag is kept with the
   * request and given to reply(). */
  int (*request)(const char *to, const char *path, int *tag, int64_t *delay_us);
  /* The reply to a request sent with `tag`: DELIVER after *delay_us, or
   * DROP (the caller then sees its timeout). */
  int (*reply)(int tag, int64_t *delay_us);
  /* Around the caller's completion callback (it runs on the thread that
   * answered, or a timer): act as the caller of `tag`; returns what
   * leave() restores. */
  int (*enter)(int tag);
  void (*leave)(int prev);
} dsysi_inproc_link;

/** Set before any inproc call is made, and never changed while calls run. */
extern const dsysi_inproc_link *dsysi_inproc_link_hook;

#endif
