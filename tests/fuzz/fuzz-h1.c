/* Fuzz target: the gateway's HTTP/1.1 response parser. The input is fed in
 * two pieces split at a position taken from its first byte, so split
 * handling is fuzzed too. */
#include <stddef.h>
#include <stdint.h>
#include "transport/h1.h"

static int on_body(const char *d, size_t n, void *ud) {
  size_t *total = ud;
  *total += n;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t split = data[0] % (size);
  const char *in = (const char *)data + 1;
  size_t len = size - 1;
  if (split > len) split = len;
  for (int head = 0; head < 2; head++) {
    size_t total = 0;
    dsysi_h1 p;
    dsysi_h1_init(&p, head, NULL, on_body, &total);
    size_t used = 0;
    int rc = dsysi_h1_feed(&p, in, split, &used);
    if (rc == DSYSI_H1_MORE && used == split) {
      size_t used2 = 0;
      rc = dsysi_h1_feed(&p, in + split, len - split, &used2);
      if (rc >= 0 && used2 > len - split) __builtin_trap();
    }
    if (rc == DSYSI_H1_MORE) dsysi_h1_eof(&p);
    if (rc == DSYSI_H1_DONE && (p.status < 100 || p.status > 599)) __builtin_trap();
    if (total > len) __builtin_trap(); /* body can never exceed the input */
    dsysi_h1_free(&p);
  }
  return 0;
}
