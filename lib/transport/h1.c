/* Strict incremental HTTP/1.1 response parser (see h1.h). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "transport/h1.h"

enum {
  ST_STATUS = 0,
  ST_HEADERS,
  ST_BODY,       /* Content-Length body */
  ST_CLOSE_BODY, /* until the connection closes */
  ST_CHUNK_SIZE,
  ST_CHUNK_DATA,
  ST_CHUNK_CRLF,
  ST_TRAILERS,
  ST_DONE
};

void dsysi_h1_init(dsysi_h1 *p, int head_request, dsysi_h1_head_fn on_head,
                   dsysi_h1_body_fn on_body, void *ud) {
  memset(p, 0, offsetof(dsysi_h1, ar_mem)); /* ar_mem: no need to clear */
  dsysi_arena_init(&p->ar, p->ar_mem, sizeof p->ar_mem);
  p->hdrs.ar = &p->ar;
  p->head_request = head_request;
  p->content_length = -1;
  p->on_head = on_head;
  p->on_body = on_body;
  p->ud = ud;
}

void dsysi_h1_free(dsysi_h1 *p) {
  dsysi_hdrs_free(&p->hdrs);
  dsysi_buf_free(&p->line);
  dsysi_arena_free(&p->ar);
}

/* RFC 9110 tchar, as a table: this runs for every byte of every header
 * name of every proxied response. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,
    ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
    ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
    ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
    ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static int parse_status(dsysi_h1 *p, const char *l, size_t n) {
  /* HTTP/1.x SP 3DIGIT SP reason */
  if (n < 12 || memcmp(l, "HTTP/1.", 7) || (l[7] != '0' && l[7] != '1') ||
      l[8] != ' ' || l[9] < '1' || l[9] > '5' || l[10] < '0' || l[10] > '9' ||
      l[11] < '0' || l[11] > '9' || (n > 12 && l[12] != ' '))
    return DSYS_EPROTO;
  for (size_t i = 13; i < n; i++)
    if ((unsigned char)l[i] < 0x20 && l[i] != '\t') return DSYS_EPROTO;
  p->minor = l[7] - '0';
  p->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
  return 0;
}

static int token_has(const char *v, const char *tok) {
  /* comma-separated, case-insensitive list membership */
  size_t tl = strlen(tok);
  while (*v) {
    while (*v == ' ' || *v == '\t' || *v == ',') v++;
    const char *e = v;
    while (*e && *e != ',') e++;
    const char *end = e;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if ((size_t)(end - v) == tl && !strncasecmp(v, tok, tl)) return 1;
    v = e;
  }
  return 0;
}

/* Control characters other than HTAB, and DEL, are not allowed in a field
 * value (bytes >= 0x80 are: obs-text). */
static int byte_ok(unsigned char c) { return (c >= 0x20 || c == '\t') && c != 0x7f; }

/* Some byte of the word is below 0x20 or is 0x7f (exact as a yes/no). */
static int word_suspect(const char *p) {
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  uint64_t x;
  memcpy(&x, p, 8);
  uint64_t lt20 = (x - ones * 0x20) & ~x & highs;
  uint64_t y = x ^ (ones * 0x7f);
  return ((lt20 | ((y - ones) & ~y)) & highs) != 0;
}

/* The value [v, e) of the header line starting at l, 8 bytes at a time:
 * words whose bytes are all in 0x20..0x7e or >= 0x80 pass with a few
 * operations. The last word is taken to end at e, overlapping what came
 * before (the name, ':' and OWS: printable bytes or HTAB), so a short
 * value costs one word too. Anything suspect (a control byte, DEL, or a
 * legitimate HTAB) is checked byte by byte. */
static int value_ok(const char *l, const char *v, const char *e) {
  if (e - l >= 8) {
    const char *q = v;
    int suspect = 0;
    for (; e - q > 8; q += 8) suspect |= word_suspect(q);
    suspect |= word_suspect(e - 8);
    if (!suspect) return 1;
  }
  for (; v < e; v++)
    if (!byte_ok((unsigned char)*v)) return 0;
  return 1;
}

/* A header name (already checked to be a token) equals a lower-case
 * literal of letters and '-' of the same length n: OR-ing 0x20 lower-cases
 * a letter, and no other token character turns into a letter or '-' that
 * way. 8 bytes at a time. */
static int name_is(const char *name, const char *lc, size_t n) {
  const uint64_t lower = 0x2020202020202020ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t a, b;
    memcpy(&a, name + i, 8);
    memcpy(&b, lc + i, 8);
    if ((a | lower) != b) return 0;
  }
  for (; i < n; i++)
    if (((unsigned char)name[i] | 0x20) != (unsigned char)lc[i]) return 0;
  return 1;
}

static int parse_header(dsysi_h1 *p, const char *l, size_t n) {
  if (l[0] == ' ' || l[0] == '\t') return DSYS_EPROTO; /* obs-fold */
  const char *colon = memchr(l, ':', n);
  if (!colon || colon == l) return DSYS_EPROTO;
  for (const char *c = l; c < colon; c++)
    if (!tchar[(unsigned char)*c]) return DSYS_EPROTO;
  const char *v = colon + 1, *e = l + n;
  while (v < e && (*v == ' ' || *v == '\t')) v++;
  while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
  if (!value_ok(l, v, e)) return DSYS_EPROTO;
  if (p->hdrs.n >= DSYSI_H1_MAX_HEADERS) return DSYS_ETOOBIG;
  size_t nl = (size_t)(colon - l);
  if (dsysi_hdrs_add(&p->hdrs, l, nl, v, (size_t)(e - v))) return DSYS_ENOMEM;
  const char *val = p->hdrs.v[p->hdrs.n - 1].value;
  const char *name = p->hdrs.v[p->hdrs.n - 1].name;
  /* The length first: most names are none of these three. */
  if (nl == 12 && name_is(name, "content-type", 12)) {
    if (!p->content_type) p->content_type = val;
  } else if (nl == 14 && name_is(name, "content-length", 14)) {
    if (!*val) return DSYS_EPROTO;
    uint64_t x = 0;
    for (const char *c = val; *c; c++) {
      if (*c < '0' || *c > '9' || x > (UINT64_MAX - 9) / 10) return DSYS_EPROTO;
      x = x * 10 + (uint64_t)(*c - '0');
    }
    if (x > (uint64_t)INT64_MAX) return DSYS_EPROTO;
    if (p->content_length >= 0 && (uint64_t)p->content_length != x)
      return DSYS_EPROTO; /* differing lengths: request smuggling bait */
    p->content_length = (int64_t)x;
  } else if (nl == 17 && name_is(name, "transfer-encoding", 17)) {
    if (p->chunked || !dsysi_streq_nocase(val, "chunked")) return DSYS_EPROTO;
    p->chunked = 1;
  } else if (nl == 10 && name_is(name, "connection", 10)) {
    if (token_has(val, "close")) p->keep_alive = -1;
    else if (token_has(val, "keep-alive") && p->keep_alive == 0) p->keep_alive = 2;
  }
  return 0;
}

/* Headers complete: decide how the body is delimited. */
static int headers_done(dsysi_h1 *p) {
  if (p->chunked && p->content_length >= 0) return DSYS_EPROTO;
  int ka = p->keep_alive == -1 ? 0 : p->minor == 1 ? 1 : p->keep_alive == 2;
  p->keep_alive = ka;
  if (p->on_head && p->on_head(p->ud)) return DSYS_ECANCELED;
  if (p->head_request || p->status == 204 || p->status == 304) {
    p->state = ST_DONE;
  } else if (p->chunked) {
    p->state = ST_CHUNK_SIZE;
  } else if (p->content_length >= 0) {
    p->remaining = (uint64_t)p->content_length;
    p->state = p->remaining ? ST_BODY : ST_DONE;
  } else {
    p->until_close = 1;
    p->keep_alive = 0;
    p->state = ST_CLOSE_BODY;
  }
  return 0;
}

static int parse_chunk_size(dsysi_h1 *p, const char *l, size_t n) {
  uint64_t x = 0;
  size_t i = 0;
  for (; i < n; i++) {
    int h = dsysi_hexval(l[i]);
    if (h < 0) break;
    if (x > (UINT64_MAX >> 4)) return DSYS_EPROTO;
    x = x * 16 + (uint64_t)h;
  }
  if (i == 0) return DSYS_EPROTO;
  /* chunk extensions: ';' then anything printable; whitespace before ';' */
  while (i < n && (l[i] == ' ' || l[i] == '\t')) i++;
  if (i < n && l[i] != ';') return DSYS_EPROTO;
  for (; i < n; i++)
    if ((unsigned char)l[i] < 0x20 && l[i] != '\t') return DSYS_EPROTO;
  p->remaining = x;
  p->state = x ? ST_CHUNK_DATA : ST_TRAILERS;
  return 0;
}

/* Take one CRLF-terminated line; *line points into data or p->line. */
static int take_line(dsysi_h1 *p, const char *data, size_t len, size_t *pos,
                     const char **line, size_t *llen) {
  const char *start = data + *pos;
  size_t avail = len - *pos;
  const char *nl = memchr(start, '\n', avail);
  size_t take = nl ? (size_t)(nl - start) + 1 : avail;
  if (p->state == ST_STATUS || p->state == ST_HEADERS || p->state == ST_TRAILERS) {
    p->header_bytes += take;
    if (p->header_bytes > DSYSI_H1_MAX_HEADER_BYTES) return DSYS_ETOOBIG;
  } else if (p->line.len + take > 1024) {
    return DSYS_EPROTO; /* chunk-size lines are short */
  }
  *pos += take;
  if (!nl) {
    if (dsysi_buf_append(&p->line, start, take)) return DSYS_ENOMEM;
    return DSYSI_H1_MORE;
  }
  const char *l = start;
  size_t n = take;
  if (p->line.len) {
    if (dsysi_buf_append(&p->line, start, take)) return DSYS_ENOMEM;
    l = p->line.data;
    n = p->line.len;
  }
  if (n < 2 || l[n - 2] != '\r') return DSYS_EPROTO; /* bare LF */
  *line = l;
  *llen = n - 2;
  return 1;
}

int dsysi_h1_feed(dsysi_h1 *p, const char *data, size_t len, size_t *used) {
  size_t pos = 0;
  int rc = DSYSI_H1_MORE;
  while (pos < len && p->state != ST_DONE) {
    if (p->state == ST_BODY || p->state == ST_CHUNK_DATA || p->state == ST_CLOSE_BODY) {
      size_t avail = len - pos;
      size_t n = p->state == ST_CLOSE_BODY || avail < p->remaining ? avail : (size_t)p->remaining;
      if (n && p->on_body && p->on_body(data + pos, n, p->ud)) {
        rc = DSYS_ECANCELED;
        break;
      }
      pos += n;
      if (p->state != ST_CLOSE_BODY) {
        p->remaining -= n;
        if (!p->remaining) p->state = p->state == ST_BODY ? ST_DONE : ST_CHUNK_CRLF;
      }
      continue;
    }
    const char *l;
    size_t n;
    int t = take_line(p, data, len, &pos, &l, &n);
    if (t < 0) {
      rc = t;
      break;
    }
    if (t == DSYSI_H1_MORE) break;
    int e = 0;
    switch (p->state) {
    case ST_STATUS:
      e = parse_status(p, l, n);
      if (!e) p->state = ST_HEADERS;
      break;
    case ST_HEADERS:
      if (n == 0) {
        if (p->status >= 100 && p->status < 200) {
          /* 1xx interim response: forget it, parse the real one. */
          dsysi_hdrs_free(&p->hdrs);
          p->content_type = NULL;
          p->content_length = -1;
          p->chunked = 0;
          p->keep_alive = 0;
          p->state = ST_STATUS;
        } else {
          e = headers_done(p);
        }
      } else {
        e = parse_header(p, l, n);
      }
      break;
    case ST_CHUNK_SIZE:
      e = parse_chunk_size(p, l, n);
      break;
    case ST_CHUNK_CRLF:
      if (n != 0) e = DSYS_EPROTO;
      else p->state = ST_CHUNK_SIZE;
      break;
    case ST_TRAILERS:
      /* Trailers are read and dropped; the empty line ends the message. */
      if (n == 0) p->state = ST_DONE;
      else if (l[0] == ' ' || l[0] == '\t' || !memchr(l, ':', n)) e = DSYS_EPROTO;
      break;
    }
    p->line.len = 0;
    if (e) {
      rc = e;
      break;
    }
  }
  if (used) *used = pos;
  if (rc < 0) return rc;
  return p->state == ST_DONE ? DSYSI_H1_DONE : DSYSI_H1_MORE;
}

int dsysi_h1_eof(dsysi_h1 *p) {
  if (p->state == ST_CLOSE_BODY) {
    p->state = ST_DONE;
    return DSYSI_H1_DONE;
  }
  return p->state == ST_DONE ? DSYSI_H1_DONE : DSYS_ECONNRESET;
}
