/* base64 through nettle: base64url (RFC 4648 section 5) without padding on
 * output and with optional padding on input, as JWTs and our ids use it;
 * and the standard alphabet (section 4) with padding, as etcd's JSON
 * gateway speaks it. One encoder and one decoder serve both. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <nettle/base64.h>
#include <distsys/util.h>
#include "core/base64.h"

static int encode(int url, const void *data, size_t len, char **out) {
  if (!out || (!data && len)) return DSYS_EINVAL;
  if (len > SIZE_MAX / 8) return DSYS_ENOMEM; /* BASE64_ENCODE_LENGTH overflows */
  char *s = malloc(BASE64_ENCODE_LENGTH(len) + BASE64_ENCODE_FINAL_LENGTH + 1);
  if (!s) return DSYS_ENOMEM;
  struct base64_encode_ctx ctx;
  if (url) base64url_encode_init(&ctx);
  else base64_encode_init(&ctx);
  size_t n = base64_encode_update(&ctx, s, len, data);
  n += base64_encode_final(&ctx, s + n);
  if (url)
    while (n && s[n - 1] == '=') n--; /* final pads; base64url does not */
  s[n] = '\0';
  *out = s;
  return 0;
}

static int decode(int url, const char *text, size_t len, void **out, size_t *outlen) {
  if (!out || !outlen || (!text && len)) return DSYS_EINVAL;
  if (len > SIZE_MAX / 8) return DSYS_ENOMEM; /* BASE64_DECODE_LENGTH overflows */
  /* nettle skips white space (its set is isspace's in the C locale); we
   * reject it. */
  for (size_t i = 0; i < len; i++)
    if (isspace((unsigned char)text[i])) return DSYS_EINVAL;
  /* One character alone in its group holds no byte, but nettle 3.8 takes
   * it when "===" follows. */
  size_t pad = 0;
  while (pad < len && text[len - 1 - pad] == '=') pad++;
  if ((len - pad) % 4 == 1) return DSYS_EINVAL;
  unsigned char *b = malloc(BASE64_DECODE_LENGTH(len) + 1);
  if (!b) return DSYS_ENOMEM;
  /* nettle accepts only complete padding: unpadded input gets it here.
   * nettle then rejects padding in the wrong place or too much of it and
   * nonzero unused bits (non-canonical input). */
  size_t missing = pad ? 0 : (4 - len % 4) % 4;
  unsigned char none[BASE64_DECODE_LENGTH(3)]; /* '=' decodes to nothing */
  struct base64_decode_ctx ctx;
  if (url) base64url_decode_init(&ctx);
  else base64_decode_init(&ctx);
  size_t n = 0, m = 0;
  if (!base64_decode_update(&ctx, &n, b, len, text) ||
      !base64_decode_update(&ctx, &m, none, missing, "===") ||
      !base64_decode_final(&ctx)) {
    free(b);
    return DSYS_EINVAL;
  }
  b[n] = 0;
  *out = b;
  *outlen = n;
  return 0;
}

int dsys_base64url_encode(const void *data, size_t len, char **out) {
  return encode(1, data, len, out);
}

int dsys_base64url_decode(const char *text, size_t len, void **out, size_t *outlen) {
  return decode(1, text, len, out, outlen);
}

int dsysi_base64_encode(const void *data, size_t len, char **out) {
  return encode(0, data, len, out);
}

int dsysi_base64_decode(const char *text, size_t len, void **out, size_t *outlen) {
  return decode(0, text, len, out, outlen);
}
