/*
 * lock-counter: increments a counter item in a shared store COUNT times,
 * each time under a lease lock and with a write fenced by the lock's
 * token, so that several copies run at once never lose an increment and
 * a copy paused past its lease cannot overwrite a newer write.
 *
 *   lock-counter LOCKS_URL STORE_URL COUNT
 *   e.g. lock-counter sqlite:///tmp/l.sqlite sqlite:///tmp/s.sqlite 100 &
 *        lock-counter sqlite:///tmp/l.sqlite sqlite:///tmp/s.sqlite 100
 *
 * Prints the counter's value after its last increment.
 */
#include <stdio.h>
#include <stdlib.h>
#include <distsys/distsys.h>

int main(int argc, char **argv) {
  if (argc != 4 || atoi(argv[3]) <= 0) {
    fprintf(stderr, "usage: lock-counter LOCKS_URL STORE_URL COUNT\n");
    return 2;
  }
  dsys_locks *locks = NULL;
  dsys_store *store = NULL;
  int rc = dsys_locks_open(&locks, argv[1], NULL);
  if (!rc) rc = dsys_store_open(&store, argv[2], NULL);
  if (rc) {
    fprintf(stderr, "lock-counter: %s\n", dsys_strerror(rc));
    return 1;
  }
  long value = 0;
  for (int i = 0; i < atoi(argv[3]) && !rc; i++) {
    dsys_lock *lk = NULL;
    dsys_lock_options lo = {.size = sizeof lo, .ttl_ms = 5000};
    if ((rc = dsys_lock_acquire(locks, "counter", 30000, &lo, &lk))) break;
    dsys_item *it = NULL;
    value = dsys_store_get(store, "counter", &it) ? 0 : atol(it->value);
    dsys_item_free(it);
    char text[32];
    snprintf(text, sizeof text, "%ld", ++value);
    /* the token makes a late write of a stale holder fail (DSYS_ELEASE) */
    rc = dsys_lock_guarded_put(store, "counter", text, dsys_lock_token(lk));
    int rel = dsys_lock_release(lk);
    if (!rc) rc = rel;
  }
  if (rc) fprintf(stderr, "lock-counter: %s\n", dsys_strerror(rc));
  else printf("%ld\n", value);
  dsys_store_close(store);
  dsys_locks_close(locks);
  return rc ? 1 : 0;
}
