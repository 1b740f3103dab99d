/* Random ids, base64url, constant-time comparison, small string helpers. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <bsd/stdlib.h>
#include <distsys/util.h>
#include "core/internal.h"

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

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int dsys_base64url_encode(const void *data, size_t len, char **out) {
  if (!out || (!data && len)) return DSYS_EINVAL;
  const unsigned char *p = data;
  size_t olen = (len / 3) * 4 + (len % 3 ? len % 3 + 1 : 0);
  char *s = malloc(olen + 1);
  if (!s) return DSYS_ENOMEM;
  size_t o = 0, i = 0;
  for (; i + 2 < len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    s[o++] = b64url[v >> 18];
    s[o++] = b64url[(v >> 12) & 63];
    s[o++] = b64url[(v >> 6) & 63];
    s[o++] = b64url[v & 63];
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)p[i] << 16;
    s[o++] = b64url[v >> 18];
    s[o++] = b64url[(v >> 12) & 63];
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
    s[o++] = b64url[v >> 18];
    s[o++] = b64url[(v >> 12) & 63];
    s[o++] = b64url[(v >> 6) & 63];
  }
  s[o] = '\0';
  *out = s;
  return 0;
}

static int b64val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

int dsys_base64url_decode(const char *text, size_t len, void **out,
                          size_t *outlen) {
  if (!out || !outlen || (!text && len)) return DSYS_EINVAL;
  /* Optional '=' padding, only at the end and only to a multiple of 4. */
  size_t pad = 0;
  while (len > 0 && text[len - 1] == '=') {
    len--;
    pad++;
  }
  if (pad > 2 || (pad && (len + pad) % 4 != 0) || len % 4 == 1)
    return DSYS_EINVAL;
  unsigned char *b = malloc(len / 4 * 3 + 3);
  if (!b) return DSYS_ENOMEM;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64val((unsigned char)text[i]);
    if (v < 0) {
      free(b);
      return DSYS_EINVAL;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      b[o++] = (unsigned char)(acc >> bits);
    }
  }
  /* Leftover bits must be zero for a canonical encoding. */
  if (bits && (acc & ((1u << bits) - 1))) {
    free(b);
    return DSYS_EINVAL;
  }
  b[o] = 0;
  *out = b;
  *outlen = o;
  return 0;
}

int dsys_ct_equal(const void *a, size_t alen, const void *b, size_t blen) {
  if (alen != blen) return 0;
  if (alen == 0) return 1;
  if (!a || !b) return 0;
  /* libbsd 0.11 (Debian 12) has no timingsafe_bcmp: accumulate the XOR of
   * every byte so the loop never exits early; volatile keeps the compiler
   * from turning it back into a short-circuit compare. */
  const volatile unsigned char *x = a, *y = b;
  unsigned char acc = 0;
  for (size_t i = 0; i < alen; i++) acc |= (unsigned char)(x[i] ^ y[i]);
  return acc == 0;
}

/* ---- internal string helpers ---- */

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

/* One thread-local block: each access to thread-local storage from a
 * shared library is a __tls_get_addr call, so it is looked up once per
 * call, not per word. s[4] != 0 once seeded. */
static _Thread_local uint64_t xs[5];

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

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

static inline uint64_t rand_next(uint64_t *s) {
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

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

/* The contended path of dsysi_lock_acquire: mark the lock as having
 * waiters and sleep until it is free. */
void dsysi_lock_wait(dsysi_lock *l, int c) {
  if (c != 2) c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
  while (c != 0) {
    syscall(SYS_futex, &l->v, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
    c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
  }
}

void dsysi_lock_wake(dsysi_lock *l) {
  syscall(SYS_futex, &l->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

unsigned dsysi_ncpu(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned)n : 1;
}

/* ---- growable buffer ---- */

static int buf_reserve(dsysi_buf *b, size_t extra) {
  if (b->oom) return DSYS_ENOMEM;
  if (b->len + extra + 1 <= b->cap) return 0;
  if (extra > SIZE_MAX / 4 - b->len) {
    b->oom = 1;
    return DSYS_ENOMEM;
  }
  /* The first allocation fits the first need exactly (at least 64);
   * later ones double. */
  size_t cap = b->cap ? b->cap : b->len + extra + 1 > 64 ? b->len + extra + 1 : 64;
  while (cap < b->len + extra + 1) {
    if (cap > SIZE_MAX / 2) {
      b->oom = 1;
      return DSYS_ENOMEM;
    }
    cap *= 2;
  }
  char *d = realloc(b->data, cap);
  if (!d) {
    b->oom = 1;
    return DSYS_ENOMEM;
  }
  b->data = d;
  b->cap = cap;
  return 0;
}

int dsysi_grow(void *arrp, size_t *cap, size_t need, size_t elsize, size_t first) {
  if (need <= *cap) return 0;
  if (!elsize) return DSYS_EINVAL;
  size_t nc = *cap ? *cap : first ? first : 1;
  while (nc < need) {
    if (nc > SIZE_MAX / 2) return DSYS_ENOMEM;
    nc *= 2;
  }
  if (nc > SIZE_MAX / elsize) return DSYS_ENOMEM;
  /* The pointer is copied in and out as bytes so one function serves every
   * element type without casting T ** to void **. */
  void *old;
  memcpy(&old, arrp, sizeof old);
  void *grown = realloc(old, nc * elsize);
  if (!grown) return DSYS_ENOMEM;
  memcpy(arrp, &grown, sizeof grown);
  *cap = nc;
  return 0;
}

int dsysi_buf_reserve(dsysi_buf *b, size_t n) {
  int rc = buf_reserve(b, n);
  if (!rc) b->data[b->len] = '\0';
  return rc;
}

int dsysi_buf_append(dsysi_buf *b, const void *data, size_t len) {
  int rc = buf_reserve(b, len);
  if (rc) return rc;
  if (len) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

int dsysi_buf_puts(dsysi_buf *b, const char *s) {
  return dsysi_buf_append(b, s, strlen(s));
}

int dsysi_buf_vprintf(dsysi_buf *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) return DSYS_EINVAL;
  int rc = buf_reserve(b, (size_t)n);
  if (rc) return rc;
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  return 0;
}

int dsysi_buf_printf(dsysi_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = dsysi_buf_vprintf(b, fmt, ap);
  va_end(ap);
  return rc;
}

char *dsysi_buf_steal(dsysi_buf *b, size_t *len) {
  if (b->oom) {
    dsysi_buf_free(b);
    return NULL;
  }
  if (!b->data && dsysi_buf_append(b, "", 0)) return NULL;
  char *d = b->data;
  if (len) *len = b->len;
  b->data = NULL;
  b->len = b->cap = 0;
  return d;
}

void dsysi_buf_free(dsysi_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}
