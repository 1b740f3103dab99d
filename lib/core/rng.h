/* Fast non-cryptographic random numbers and hashing (dsysi_ prefix, hidden). */
#ifndef DSYSI_RNG_H
#define DSYSI_RNG_H

#include <stddef.h>
#include <stdint.h>

/** splitmix64 step: a fast, well-mixed 64-bit generator (not for secrets). */
static inline uint64_t dsysi_rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/** xoshiro256** step (s: four words, not all zero): fast and well mixed
 *  (not for secrets). Used by the thread-local generator of random.c and
 *  by the simulation's stream (tools/sim). */
static inline uint64_t dsysi_xoshiro_next(uint64_t *s) {
  uint64_t x = s[1] * 5, t = s[1] << 17;
  uint64_t r = ((x << 7) | (x >> 57)) * 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = (s[3] << 45) | (s[3] >> 19);
  return r;
}

/** 64-bit hash of bytes (FNV-1a then a murmur3 finaliser), with a seed. */
static inline uint64_t dsysi_hash64(const void *data, size_t len, uint64_t seed) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL ^ seed;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

#endif
