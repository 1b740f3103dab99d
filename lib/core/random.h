/*
 * Fast non-cryptographic random numbers (random.c; the secure ones are
 * public in <distsys/util.h>). Thread-safety: each thread has its own
 * generator state.
 */
#ifndef DSYSI_RANDOM_H
#define DSYSI_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/**
 * Fast non-cryptographic random hex (thread-local xoshiro256**, seeded from
 * arc4random once per thread): for request and trace ids, never secrets.
 * Writes 2 * nbytes hex digits and a NUL into out.
 */
void dsysi_fast_hex(char *out, size_t nbytes);
/** Write the 64 bits of v as 16 lower-case hex digits (no NUL), nibbles in
 *  a fixed but not big-endian order: for random ids. */
void dsysi_hex64(char *out, uint64_t v);
/** Next 64 fast random bits (see dsysi_fast_hex). */
uint64_t dsysi_fast_rand(void);

#endif
