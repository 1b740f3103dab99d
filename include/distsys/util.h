/*
 * Small utilities: random ids, base64url, constant-time comparison.
 *
 * Thread-safety: all functions may be called from any thread.
 */
#ifndef DSYS_UTIL_H
#define DSYS_UTIL_H

#include <distsys/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Fill buf with len cryptographically secure random bytes (arc4random). */
DSYS_API void dsys_random_bytes(void *buf, size_t len);

/** Uniform random integer in [0, upper) (upper > 0), unbiased. */
DSYS_API uint32_t dsys_random_uniform(uint32_t upper);

/**
 * Write a random identifier of nbytes random bytes as lowercase hex into
 * out (size >= 2 * nbytes + 1), NUL-terminated.
 * @return 0 or DSYS_EINVAL (NULL out, or outlen too small).
 */
DSYS_API int dsys_random_hex(char *out, size_t outlen, size_t nbytes);

/**
 * Encode bytes as base64url without padding (RFC 4648 section 5).
 * @param out receives a NUL-terminated string, release with dsys_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_base64url_encode(const void *data, size_t len, char **out);

/**
 * Decode base64url (padding optional; whitespace and other characters are
 * rejected).
 * @param out receives the bytes plus a trailing NUL (not counted in
 *        *outlen); release with dsys_free().
 * @return 0, DSYS_EINVAL (malformed input), DSYS_ENOMEM.
 */
DSYS_API int dsys_base64url_decode(const char *text, size_t len, void **out,
                                   size_t *outlen);

/**
 * Compare two byte strings in time that depends only on the lengths, not on
 * the contents (for secrets, tokens, MACs).
 * @return 1 when equal (same length and bytes), else 0.
 */
DSYS_API int dsys_ct_equal(const void *a, size_t alen, const void *b,
                           size_t blen);

#ifdef __cplusplus
}
#endif
#endif
