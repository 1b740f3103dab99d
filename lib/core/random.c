/* Random numbers: the public cryptographically secure ones (arc4random,
 * libbsd) and a fast thread-local generator for request and trace ids. */
#include <stdint.h>
#include <string.h>
#include <bsd/stdlib.h>
#include <distsys/util.h>
#include "core/random.h"
#include "core/rng.h"

void dsys_random_bytes(void *buf, size_t len) {
  if (buf && len) arc4random_buf(buf, len);
}

uint32_t dsys_random_uniform(uint32_t upper) {
  return upper ? arc4random_uniform(upper) : 0;
}

int dsys_random_hex(char *out, size_t outlen, size_t nbytes) {
  static const char hex[] = "0123456789abcdef";
  if (!out || outlen < 2 * nbytes + 1) return DSYS_EINVAL;
  unsigned char raw[64];
  size_t done = 0;
  while (done < nbytes) {
    size_t n = nbytes - done < sizeof raw ? nbytes - done : sizeof raw;
    arc4random_buf(raw, n);
    for (size_t i = 0; i < n; i++) {
      out[2 * (done + i)] = hex[raw[i] >> 4];
      out[2 * (done + i) + 1] = hex[raw[i] & 15];
    }
    done += n;
  }
  out[2 * nbytes] = '\0';
  return 0;
}

/* One thread-local block: each access to thread-local storage from a
 * shared library is a __tls_get_addr call, so it is looked up once per
 * call, not per word. s[4] != 0 once seeded. */
static _Thread_local uint64_t xs[5];

static uint64_t *rand_state(void) {
  uint64_t *s = xs;
  __asm__("" : "+r"(s)); /* keep this one address: no TLS lookup per use */
  if (!s[4]) {
    do arc4random_buf(s, 4 * sizeof *s);
    while (!(s[0] | s[1] | s[2] | s[3]));
    s[4] = 1;
  }
  return s;
}

static inline uint64_t rand_next(uint64_t *s) { return dsysi_xoshiro_next(s); }

uint64_t dsysi_fast_rand(void) { return rand_next(rand_state()); }

/* 32 bits to 8 hex digits without a loop: each nibble spread into its own
 * byte, then '0'..'9' / 'a'..'f' added to all eight at once. The nibbles
 * come out in a fixed but not big-endian order: fine for random ids. */
static inline uint64_t hex8(uint32_t x) {
  uint64_t y = x;
  y = ((y & 0xffff0000ull) << 16) | (y & 0xffffull);
  y = ((y & 0x0000ff000000ff00ull) << 8) | (y & 0x000000ff000000ffull);
  y = ((y & 0x00f000f000f000f0ull) << 4) | (y & 0x000f000f000f000full);
  uint64_t letters = ((y + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
  return y + 0x3030303030303030ull + letters * ('a' - '0' - 10);
}

void dsysi_hex64(char *out, uint64_t v) {
  uint64_t lo = hex8((uint32_t)v), hi = hex8((uint32_t)(v >> 32));
  memcpy(out, &lo, 8);
  memcpy(out + 8, &hi, 8);
}

void dsysi_fast_hex(char *out, size_t nbytes) {
  char *o = out;
  uint64_t *s = rand_state();
  while (nbytes >= 8) {
    dsysi_hex64(o, rand_next(s));
    o += 16;
    nbytes -= 8;
  }
  if (nbytes) {
    char tmp[16];
    dsysi_hex64(tmp, rand_next(s));
    memcpy(o, tmp, 2 * nbytes);
    o += 2 * nbytes;
  }
  *o = '\0';
}
