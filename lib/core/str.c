/* Small string helpers: copies, ASCII case folding, percent-decoding. */
#include <stdlib.h>
#include <string.h>
#include "core/str.h"

char *dsysi_strdup(const char *s) { return s ? strdup(s) : NULL; }

char *dsysi_strndup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  if (n) memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

/* ASCII lower case of every byte (others unchanged). */
const unsigned char dsysi_lc[256] = {
#define R8(b) b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7
    R8(0x00), R8(0x08), R8(0x10), R8(0x18), R8(0x20), R8(0x28), R8(0x30), R8(0x38),
    0x40, R8(0x61), R8(0x69), R8(0x71), 0x79, 0x7a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f,
    R8(0x60), R8(0x68), R8(0x70), R8(0x78),
    R8(0x80), R8(0x88), R8(0x90), R8(0x98), R8(0xa0), R8(0xa8), R8(0xb0), R8(0xb8),
    R8(0xc0), R8(0xc8), R8(0xd0), R8(0xd8), R8(0xe0), R8(0xe8), R8(0xf0), R8(0xf8),
#undef R8
};

int dsysi_streq_nocase(const char *a, const char *b) {
  if (!a || !b) return a == b;
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  for (; dsysi_lc[*x] == dsysi_lc[*y]; x++, y++)
    if (!*x) return 1;
  return 0;
}

int dsysi_hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

size_t dsysi_url_decode_into(char *d, const char *s, size_t n, int plus_space) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int hi, lo;
    if (s[i] == '%' && i + 2 < n && (hi = dsysi_hexval(s[i + 1])) >= 0 &&
        (lo = dsysi_hexval(s[i + 2])) >= 0) {
      d[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else if (plus_space && s[i] == '+') {
      d[o++] = ' ';
    } else {
      d[o++] = s[i];
    }
  }
  d[o] = '\0';
  return o;
}

char *dsysi_url_decode(const char *s, size_t n, int plus_space) {
  char *d = malloc(n + 1);
  if (d) dsysi_url_decode_into(d, s, n, plus_space);
  return d;
}
