/* Constant-time comparison of secrets, through GnuTLS. */
#include <gnutls/gnutls.h>
#include <distsys/util.h>

int dsys_ct_equal(const void *a, size_t alen, const void *b, size_t blen) {
  if (alen != blen) return 0;
  if (alen == 0) return 1;
  if (!a || !b) return 0;
  /* libbsd 0.11 (Debian 12) has no timingsafe_bcmp; gnutls_memcmp reads
   * every byte whatever it finds. */
  return gnutls_memcmp(a, b, alen) == 0;
}
