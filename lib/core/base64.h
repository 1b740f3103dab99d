/* Standard base64 (RFC 4648 section 4, with padding) for the library's own
 * modules (base64.c; base64url is public in <distsys/util.h>).
 * Thread-safety: reentrant. */
#ifndef DSYSI_BASE64_H
#define DSYSI_BASE64_H

#include <stddef.h>

/** Encode with padding. @param out malloc'd, NUL-terminated.
 *  @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
int dsysi_base64_encode(const void *data, size_t len, char **out);

/** Decode (padding optional; whitespace and non-canonical input rejected).
 *  @param out malloc'd, NUL-terminated after outlen bytes.
 *  @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
int dsysi_base64_decode(const char *text, size_t len, void **out, size_t *outlen);

#endif
