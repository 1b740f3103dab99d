/*
 * The gateway's edge helpers: a sharded, bounded LRU map, used for token
 * buckets (rate limiting) and for the Idempotency-Key response cache.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <distsys/common.h>
#include "core/internal.h"
#include "services/edge.h"

#define NSHARDS 16

uint64_t dsysi_fnv64(uint64_t h, const void *d, size_t n) {
  const unsigned char *p = d;
  if (!h) h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

typedef struct ent {
  struct ent *hnext;       /* hash chain */
  struct ent *prev, *next; /* LRU list: head = most recent */
  uint64_t h;
  char *key;
  size_t klen;
  /* token bucket */
  double tokens;
  int64_t last_us;
  /* idempotency */
  int state; /* DSYSI_IDEM_INFLIGHT or DSYSI_IDEM_REPLAY */
  uint64_t gen, fp;
  int64_t expires_ms, ttl_ms;
  dsysi_idem_resp resp;
} ent;

typedef struct shard {
  pthread_mutex_t mu;
  ent **tab;
  size_t tabn; /* power of two */
  ent *head, *tail;
  size_t n, cap;
} shard;

typedef struct lmap {
  shard sh[NSHARDS];
} lmap;

static int lmap_init(lmap *m, size_t cap) {
  size_t per = (cap + NSHARDS - 1) / NSHARDS;
  if (!per) per = 1;
  for (int i = 0; i < NSHARDS; i++) {
    shard *s = &m->sh[i];
    pthread_mutex_init(&s->mu, NULL);
    s->cap = per;
    s->tabn = 8;
    while (s->tabn < per * 2) s->tabn <<= 1;
    s->tab = calloc(s->tabn, sizeof *s->tab);
    if (!s->tab) return DSYS_ENOMEM;
  }
  return 0;
}

static void ent_free(ent *e) {
  dsysi_idem_resp_free(&e->resp);
  free(e->key);
  free(e);
}

static void lmap_destroy(lmap *m) {
  for (int i = 0; i < NSHARDS; i++) {
    shard *s = &m->sh[i];
    for (ent *e = s->head, *nx; e; e = nx) {
      nx = e->next;
      ent_free(e);
    }
    free(s->tab);
    pthread_mutex_destroy(&s->mu);
  }
}

static shard *shard_of(lmap *m, uint64_t h) { return &m->sh[(h >> 56) % NSHARDS]; }

static void lru_unlink(shard *s, ent *e) {
  if (e->prev) e->prev->next = e->next;
  else s->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else s->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_front(shard *s, ent *e) {
  e->next = s->head;
  e->prev = NULL;
  if (s->head) s->head->prev = e;
  s->head = e;
  if (!s->tail) s->tail = e;
}

static ent *find(shard *s, uint64_t h, const char *key, size_t klen) {
  for (ent *e = s->tab[h & (s->tabn - 1)]; e; e = e->hnext)
    if (e->h == h && e->klen == klen && !memcmp(e->key, key, klen)) return e;
  return NULL;
}

static void unhash(shard *s, ent *e) {
  ent **pp = &s->tab[e->h & (s->tabn - 1)];
  while (*pp && *pp != e) pp = &(*pp)->hnext;
  if (*pp) *pp = e->hnext;
}

static void remove_ent(shard *s, ent *e) {
  unhash(s, e);
  lru_unlink(s, e);
  s->n--;
  ent_free(e);
}

/* A new entry at the front (the least recently used one is evicted when
 * the shard is full). Caller holds s->mu. */
static ent *insert(shard *s, uint64_t h, const char *key, size_t klen) {
  if (s->n >= s->cap && s->tail) remove_ent(s, s->tail);
  ent *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->key = malloc(klen ? klen : 1);
  if (!e->key) {
    free(e);
    return NULL;
  }
  memcpy(e->key, key, klen);
  e->klen = klen;
  e->h = h;
  size_t b = h & (s->tabn - 1);
  e->hnext = s->tab[b];
  s->tab[b] = e;
  lru_front(s, e);
  s->n++;
  return e;
}

static size_t lmap_count(lmap *m) {
  size_t n = 0;
  for (int i = 0; i < NSHARDS; i++) {
    pthread_mutex_lock(&m->sh[i].mu);
    n += m->sh[i].n;
    pthread_mutex_unlock(&m->sh[i].mu);
  }
  return n;
}

/* ---- rate limiter ---- */

struct dsysi_rl {
  lmap m;
  dsys_clock *clk;
};

int dsysi_rl_new(dsysi_rl **out, size_t cap, dsys_clock *clk) {
  dsysi_rl *rl = calloc(1, sizeof *rl);
  if (!rl) return DSYS_ENOMEM;
  rl->clk = clk ? clk : dsys_clock_real();
  if (lmap_init(&rl->m, cap ? cap : 1)) {
    dsysi_rl_free(rl);
    return DSYS_ENOMEM;
  }
  *out = rl;
  return 0;
}

void dsysi_rl_free(dsysi_rl *rl) {
  if (!rl) return;
  lmap_destroy(&rl->m);
  free(rl);
}

size_t dsysi_rl_count(dsysi_rl *rl) { return lmap_count(&rl->m); }
size_t dsysi_rl_cap(dsysi_rl *rl) { return rl->m.sh[0].cap * NSHARDS; }

int dsysi_rl_take(dsysi_rl *rl, const char *key, size_t klen, double rate,
                  uint32_t burst, dsysi_rl_result *res) {
  if (burst < 1) burst = 1;
  int64_t now = dsys_clock_now_us(rl->clk);
  uint64_t h = dsysi_fnv64(0, key, klen);
  shard *s = shard_of(&rl->m, h);
  pthread_mutex_lock(&s->mu);
  ent *e = find(s, h, key, klen);
  if (e) {
    lru_unlink(s, e);
    lru_front(s, e);
    double dt = (double)(now - e->last_us) / 1e6;
    if (dt > 0) e->tokens += dt * rate;
    if (e->tokens > burst) e->tokens = burst;
    e->last_us = now;
  } else if ((e = insert(s, h, key, klen))) {
    e->tokens = burst;
    e->last_us = now;
  }
  int rc = 0;
  double tokens;
  if (!e) { /* out of memory: fail open, as if the bucket were new */
    rc = DSYS_ENOMEM;
    tokens = burst;
  } else {
    tokens = e->tokens;
  }
  res->limit = burst;
  res->allowed = tokens >= 1.0;
  if (res->allowed) tokens -= 1.0;
  if (e) e->tokens = tokens;
  pthread_mutex_unlock(&s->mu);
  res->remaining = (uint32_t)floor(tokens + 1e-9);
  res->reset_s = (int64_t)ceil(((double)burst - tokens) / rate - 1e-9);
  if (res->reset_s < 0) res->reset_s = 0;
  res->retry_after_s = res->allowed ? 0 : (int64_t)ceil((1.0 - tokens) / rate - 1e-9);
  if (!res->allowed && res->retry_after_s < 1) res->retry_after_s = 1;
  return rc;
}

/* ---- idempotency cache ---- */

struct dsysi_idem {
  lmap m;
  dsys_clock *clk;
  size_t max_body;
  uint64_t gen; /* under shard locks: atomic not needed per shard, but
                   generations must be unique across shards */
  pthread_mutex_t gmu;
};

void dsysi_idem_resp_free(dsysi_idem_resp *r) {
  free(r->ctype);
  free(r->hdrs);
  free(r->body);
  memset(r, 0, sizeof *r);
}

static int resp_copy(dsysi_idem_resp *d, const dsysi_idem_resp *s) {
  memset(d, 0, sizeof *d);
  d->status = s->status;
  d->ctype = s->ctype ? strdup(s->ctype) : NULL;
  d->hdrs = malloc(s->hlen ? s->hlen : 1);
  d->body = malloc(s->blen + 1);
  if ((s->ctype && !d->ctype) || !d->hdrs || !d->body) {
    dsysi_idem_resp_free(d);
    return DSYS_ENOMEM;
  }
  if (s->hlen) memcpy(d->hdrs, s->hdrs, s->hlen);
  d->hlen = s->hlen;
  if (s->blen) memcpy(d->body, s->body, s->blen);
  d->body[s->blen] = '\0';
  d->blen = s->blen;
  return 0;
}

int dsysi_idem_new(dsysi_idem **out, size_t max_keys, size_t max_body,
                   dsys_clock *clk) {
  dsysi_idem *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->clk = clk ? clk : dsys_clock_real();
  c->max_body = max_body;
  pthread_mutex_init(&c->gmu, NULL);
  if (lmap_init(&c->m, max_keys ? max_keys : 1)) {
    dsysi_idem_free(c);
    return DSYS_ENOMEM;
  }
  *out = c;
  return 0;
}

void dsysi_idem_free(dsysi_idem *c) {
  if (!c) return;
  lmap_destroy(&c->m);
  pthread_mutex_destroy(&c->gmu);
  free(c);
}

size_t dsysi_idem_count(dsysi_idem *c) { return lmap_count(&c->m); }

int dsysi_idem_begin(dsysi_idem *c, const char *key, size_t klen, uint64_t fp,
                     int64_t ttl_ms, uint64_t *gen, dsysi_idem_resp *out) {
  int64_t now = dsys_clock_now_ms(c->clk);
  uint64_t h = dsysi_fnv64(0, key, klen);
  shard *s = shard_of(&c->m, h);
  pthread_mutex_lock(&c->gmu);
  uint64_t g = ++c->gen;
  pthread_mutex_unlock(&c->gmu);
  pthread_mutex_lock(&s->mu);
  ent *e = find(s, h, key, klen);
  if (e && e->state == DSYSI_IDEM_REPLAY && e->expires_ms <= now) {
    remove_ent(s, e);
    e = NULL;
  }
  int rc;
  if (e) {
    lru_unlink(s, e);
    lru_front(s, e);
    if (e->fp != fp) rc = DSYSI_IDEM_MISMATCH;
    else if (e->state == DSYSI_IDEM_INFLIGHT) rc = DSYSI_IDEM_INFLIGHT;
    else rc = resp_copy(out, &e->resp) ? DSYS_ENOMEM : DSYSI_IDEM_REPLAY;
  } else if ((e = insert(s, h, key, klen))) {
    e->state = DSYSI_IDEM_INFLIGHT;
    e->gen = g;
    e->fp = fp;
    e->ttl_ms = ttl_ms;
    e->expires_ms = now + ttl_ms;
    *gen = g;
    rc = DSYSI_IDEM_NEW;
  } else {
    rc = DSYS_ENOMEM;
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

void dsysi_idem_complete(dsysi_idem *c, const char *key, size_t klen,
                         uint64_t gen, const dsysi_idem_resp *resp) {
  uint64_t h = dsysi_fnv64(0, key, klen);
  shard *s = shard_of(&c->m, h);
  pthread_mutex_lock(&s->mu);
  ent *e = find(s, h, key, klen);
  if (e && e->gen == gen && e->state == DSYSI_IDEM_INFLIGHT) {
    /* The TTL counts from the first response. */
    e->expires_ms = dsys_clock_now_ms(c->clk) + e->ttl_ms;
    if (resp->blen > c->max_body || resp_copy(&e->resp, resp)) {
      remove_ent(s, e);
    } else {
      e->state = DSYSI_IDEM_REPLAY;
    }
  }
  pthread_mutex_unlock(&s->mu);
}

void dsysi_idem_abort(dsysi_idem *c, const char *key, size_t klen, uint64_t gen) {
  uint64_t h = dsysi_fnv64(0, key, klen);
  shard *s = shard_of(&c->m, h);
  pthread_mutex_lock(&s->mu);
  ent *e = find(s, h, key, klen);
  if (e && e->gen == gen && e->state == DSYSI_IDEM_INFLIGHT) remove_ent(s, e);
  pthread_mutex_unlock(&s->mu);
}

/* ---- HTTP caching (RFC 9111) ---- */

/* RFC 9110 tchar */
static int tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

void dsysi_cc_init(dsysi_cc *cc) {
  memset(cc, 0, sizeof *cc);
  cc->max_age = cc->s_maxage = -1;
}

/* delta-seconds (RFC 9111 1.2.2): digits; larger than 2^31 counts as 2^31. */
static int delta_seconds(const char *v, size_t n, int64_t *out) {
  if (!n) return -1;
  int64_t x = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    if (x < 2147483648LL) x = x * 10 + (v[i] - '0');
  }
  *out = x > 2147483648LL ? 2147483648LL : x;
  return 0;
}

/* A seconds directive: a second occurrence with another value is a
 * conflict (RFC 9111 4.2.1: the cache may treat it as stale; here: bad). */
static void cc_seconds(dsysi_cc *cc, int64_t *field, const char *v, size_t n) {
  int64_t x;
  if (!v || delta_seconds(v, n, &x)) cc->bad = 1;
  else if (*field >= 0 && *field != x) cc->bad = 1;
  else *field = x;
}

void dsysi_cc_parse(dsysi_cc *cc, const char *s) {
  if (!s) return;
  for (;;) {
    while (*s == ' ' || *s == '\t' || *s == ',') s++;
    if (!*s) return;
    const char *name = s;
    while (tchar((unsigned char)*s)) s++;
    size_t nl = (size_t)(s - name);
    const char *val = NULL;
    size_t vl = 0;
    if (!nl) {
      cc->bad = 1;
      return;
    }
    if (*s == '=') {
      s++;
      if (*s == '"') { /* quoted-string: the value without quotes (escapes kept) */
        val = ++s;
        while (*s && *s != '"') s += s[0] == '\\' && s[1] ? 2 : 1;
        if (*s != '"') {
          cc->bad = 1;
          return;
        }
        vl = (size_t)(s++ - val);
      } else {
        val = s;
        while (tchar((unsigned char)*s)) s++;
        vl = (size_t)(s - val);
        if (!vl) {
          cc->bad = 1;
          return;
        }
      }
    }
    while (*s == ' ' || *s == '\t') s++;
    if (*s && *s != ',') {
      cc->bad = 1;
      return;
    }
#define IS(k) (nl == sizeof(k) - 1 && !strncasecmp(name, k, nl))
    if (IS("max-age")) cc_seconds(cc, &cc->max_age, val, vl);
    else if (IS("s-maxage")) cc_seconds(cc, &cc->s_maxage, val, vl);
    else if (IS("no-store")) cc->no_store = 1;
    /* no-cache="field" and private="field" are taken as the whole
     * directive: stricter than the RFC asks, never wrong */
    else if (IS("no-cache")) cc->no_cache = 1;
    else if (IS("private")) cc->private_ = 1;
    else if (IS("public")) cc->public_ = 1;
    else if (IS("must-revalidate") || IS("proxy-revalidate")) cc->must_revalidate = 1;
#undef IS
    /* other directives (immutable, stale-while-revalidate, ...) are
     * extensions a cache may ignore */
  }
}

int dsysi_vary_parse(const char *s, char names[][64], size_t *n) {
  if (!s) return 0;
  for (;;) {
    while (*s == ' ' || *s == '\t' || *s == ',') s++;
    if (!*s) return 0;
    const char *b = s;
    while (tchar((unsigned char)*s)) s++;
    size_t l = (size_t)(s - b);
    while (*s == ' ' || *s == '\t') s++;
    if (!l || (*s && *s != ',') || (l == 1 && *b == '*') || l > 63 || *n >= DSYSI_VARY_MAX)
      return -1;
    for (size_t i = 0; i < l; i++) names[*n][i] = (char)dsysi_lc[(unsigned char)b[i]];
    names[*n][l] = '\0';
    (*n)++;
  }
}

int dsysi_etag_list_match(const char *h, const char *tag) {
  if (!strncmp(tag, "W/", 2)) tag += 2;
  size_t tn = strlen(tag);
  while (h && *h) {
    while (*h == ' ' || *h == '\t' || *h == ',') h++;
    if (*h == '*') return 1;
    if (!strncmp(h, "W/", 2)) h += 2;
    size_t n = strcspn(h, ",");
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
    if (n == tn && !memcmp(h, tag, n)) return 1;
    h += strcspn(h, ",");
  }
  return 0;
}
