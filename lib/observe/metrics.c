/*
 * dsys_metrics: registry of metric families, lock-free series updates,
 * Prometheus text exposition, and the helpers that instrument servers,
 * stores, queues, upstreams and the process.
 */
#include <dirent.h>
#include <stddef.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/metrics.h>
#include <distsys/cache.h>
#include "core/internal.h"
#include "observe/metrics.h"
#include "transport/transport.h"

enum { T_COUNTER, T_GAUGE, T_HISTOGRAM };
static const char *const type_names[] = {"counter", "gauge", "histogram"};

#define HASH_BUCKETS 256

static const double default_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,  0.1,    0.25,  0.5,
                                        1,      2.5,   5,      10};
#define NDEFAULT (sizeof default_bounds / sizeof default_bounds[0])

typedef struct family family;

typedef struct series {
  struct series *next;  /* creation order */
  struct series *hnext; /* hash chain */
  uint64_t hash;
  family *fam;
  char **values;
  char *labels; /* rendered `a="x",b="y"` (escaped), "" without labels */
  _Atomic uint64_t v;   /* counter value, or gauge double bits */
  _Atomic int dbl;      /* counter: v holds double bits (store_double) */
  _Atomic uint64_t sum; /* histogram: double bits of the sum */
  _Atomic uint64_t *buckets; /* histogram: nb + 1 per-bucket counts */
} series;

struct family {
  family *next;
  char *name, *help;
  int type;
  size_t nlabels;
  char **lnames;
  double *bounds;
  size_t nb;
  pthread_mutex_t mu;
  series *head, *tail;
  size_t nseries;
  series *table[HASH_BUCKETS];
};

typedef struct hookent {
  dsys_metrics_collect_fn fn;
  void *ud;
} hookent;

typedef struct helper {
  struct helper *next;
  void *p;
  void (*free_fn)(void *);
} helper;

struct dsys_metrics {
  pthread_mutex_t mu;        /* families, hooks, helpers */
  pthread_mutex_t render_mu; /* one render (and its hooks) at a time */
  family *families, *last;
  hookent *hooks;
  size_t nhooks, caphooks;
  helper *helpers;
  /* instrumented servers, for the in-flight gauge */
  dsys_server **servers;
  size_t nservers, capservers;
  dsys_gauge *inflight;
};

/* ---- names, escaping, numbers ---- */

static int valid_name(const char *s, int metric) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (metric && c == ':') || (p != s && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static void put_escaped(dsysi_buf *b, const char *s, int quote) {
  const char *run = s;
  for (const char *p = s; *p; p++) {
    const char *rep = NULL;
    if (*p == '\\') rep = "\\\\";
    else if (*p == '\n') rep = "\\n";
    else if (quote && *p == '"') rep = "\\\"";
    if (!rep) continue;
    dsysi_buf_append(b, run, (size_t)(p - run));
    dsysi_buf_puts(b, rep);
    run = p + 1;
  }
  dsysi_buf_puts(b, run);
}

/* Shortest text that reads back as the same double; Prometheus spellings
 * for the special values. */
static void fmt_double(double v, char *out, size_t n) {
  if (isnan(v)) {
    snprintf(out, n, "NaN");
  } else if (isinf(v)) {
    snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
  } else {
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(out, n, "%.*g", prec, v);
      if (strtod(out, NULL) == v) break;
    }
  }
}

static uint64_t dbits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double bitsd(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static void atomic_add_double(_Atomic uint64_t *a, double v) {
  uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      a, &old, dbits(bitsd(old) + v), memory_order_relaxed,
      memory_order_relaxed)) {
  }
}

static uint64_t hash_values(const char *const *v, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    for (const unsigned char *p = (const unsigned char *)v[i]; *p; p++)
      h = (h ^ *p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* separator: never in UTF-8 */
  }
  return h;
}

/* ---- registry ---- */

int dsys_metrics_new(dsys_metrics **out) {
  if (!out) return DSYS_EINVAL;
  dsys_metrics *r = calloc(1, sizeof *r);
  if (!r) return DSYS_ENOMEM;
  pthread_mutex_init(&r->mu, NULL);
  pthread_mutex_init(&r->render_mu, NULL);
  *out = r;
  return 0;
}

static void free_series(series *s, size_t nlabels) {
  for (size_t i = 0; s->values && i < nlabels; i++) free(s->values[i]);
  free(s->values);
  free(s->labels);
  free((void *)s->buckets);
  free(s);
}

static void free_family(family *f) {
  for (series *s = f->head, *nx; s; s = nx) {
    nx = s->next;
    free_series(s, f->nlabels);
  }
  for (size_t i = 0; f->lnames && i < f->nlabels; i++) free(f->lnames[i]);
  free(f->lnames);
  free(f->bounds);
  free(f->name);
  free(f->help);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

void dsys_metrics_free(dsys_metrics *r) {
  if (!r) return;
  for (helper *h = r->helpers, *nx; h; h = nx) {
    nx = h->next;
    h->free_fn(h->p);
    free(h);
  }
  for (family *f = r->families, *nx; f; f = nx) {
    nx = f->next;
    free_family(f);
  }
  free(r->hooks);
  free(r->servers);
  pthread_mutex_destroy(&r->mu);
  pthread_mutex_destroy(&r->render_mu);
  free(r);
}

static int add_helper(dsys_metrics *r, void *p, void (*fn)(void *)) {
  helper *h = calloc(1, sizeof *h);
  if (!h) return DSYS_ENOMEM;
  h->p = p;
  h->free_fn = fn;
  pthread_mutex_lock(&r->mu);
  h->next = r->helpers;
  r->helpers = h;
  pthread_mutex_unlock(&r->mu);
  return 0;
}

int dsys_metrics_on_collect(dsys_metrics *r, dsys_metrics_collect_fn fn,
                            void *ud) {
  if (!r || !fn) return DSYS_EINVAL;
  pthread_mutex_lock(&r->mu);
  if (dsysi_grow(&r->hooks, &r->caphooks, r->nhooks + 1, sizeof *r->hooks, 4)) {
    pthread_mutex_unlock(&r->mu);
    return DSYS_ENOMEM;
  }
  r->hooks[r->nhooks].fn = fn;
  r->hooks[r->nhooks].ud = ud;
  r->nhooks++;
  pthread_mutex_unlock(&r->mu);
  return 0;
}

/* Find or create the family (reg->mu held). */
static int get_family(dsys_metrics *r, const char *name, const char *help,
                      int type, const double *bounds, size_t nb,
                      const char *const *lnames, size_t n, family **out) {
  for (family *f = r->families; f; f = f->next) {
    if (strcmp(f->name, name)) continue;
    if (f->type != type || f->nlabels != n) return DSYS_ETYPE;
    for (size_t i = 0; i < n; i++)
      if (strcmp(f->lnames[i], lnames[i])) return DSYS_ETYPE;
    if (type == T_HISTOGRAM && bounds &&
        (nb != f->nb || memcmp(bounds, f->bounds, nb * sizeof *bounds)))
      return DSYS_ETYPE;
    *out = f;
    return 0;
  }
  family *f = calloc(1, sizeof *f);
  if (!f) return DSYS_ENOMEM;
  pthread_mutex_init(&f->mu, NULL);
  f->type = type;
  f->name = strdup(name);
  f->help = strdup(help ? help : "");
  f->nlabels = n;
  f->lnames = calloc(n ? n : 1, sizeof *f->lnames);
  if (!f->name || !f->help || !f->lnames) goto oom;
  for (size_t i = 0; i < n; i++)
    if (!(f->lnames[i] = strdup(lnames[i]))) goto oom;
  if (type == T_HISTOGRAM) {
    if (!bounds) {
      bounds = default_bounds;
      nb = NDEFAULT;
    }
    if (!(f->bounds = malloc(nb * sizeof *f->bounds))) goto oom;
    memcpy(f->bounds, bounds, nb * sizeof *bounds);
    f->nb = nb;
  }
  if (r->last) r->last->next = f;
  else r->families = f;
  r->last = f;
  *out = f;
  return 0;
oom:
  free_family(f);
  return DSYS_ENOMEM;
}

static char *render_labels(family *f, char **values) {
  dsysi_buf b = {0};
  dsysi_buf_puts(&b, "");
  for (size_t i = 0; i < f->nlabels; i++) {
    if (i) dsysi_buf_puts(&b, ",");
    dsysi_buf_puts(&b, f->lnames[i]);
    dsysi_buf_puts(&b, "=\"");
    put_escaped(&b, values[i], 1);
    dsysi_buf_puts(&b, "\"");
  }
  if (b.oom) {
    dsysi_buf_free(&b);
    return NULL;
  }
  return dsysi_buf_steal(&b, NULL);
}

/* Find or create the series (f->mu held). */
static int get_series(family *f, const char *const *values, series **out) {
  uint64_t h = hash_values(values, f->nlabels);
  for (series *s = f->table[h % HASH_BUCKETS]; s; s = s->hnext) {
    if (s->hash != h) continue;
    size_t i = 0;
    while (i < f->nlabels && !strcmp(s->values[i], values[i])) i++;
    if (i == f->nlabels) {
      *out = s;
      return 0;
    }
  }
  if (f->nseries >= DSYS_METRICS_MAX_SERIES) return DSYS_ERANGE;
  series *s = calloc(1, sizeof *s);
  if (!s) return DSYS_ENOMEM;
  s->fam = f;
  s->hash = h;
  atomic_init(&s->v, 0);
  atomic_init(&s->dbl, 0);
  atomic_init(&s->sum, dbits(0.0));
  s->values = calloc(f->nlabels ? f->nlabels : 1, sizeof *s->values);
  if (!s->values) goto oom;
  for (size_t i = 0; i < f->nlabels; i++)
    if (!(s->values[i] = strdup(values[i]))) goto oom;
  if (!(s->labels = render_labels(f, s->values))) goto oom;
  if (f->type == T_HISTOGRAM) {
    s->buckets = calloc(f->nb + 1, sizeof *s->buckets);
    if (!s->buckets) goto oom;
    for (size_t i = 0; i <= f->nb; i++) atomic_init(&s->buckets[i], 0);
  }
  s->hnext = f->table[h % HASH_BUCKETS];
  f->table[h % HASH_BUCKETS] = s;
  if (f->tail) f->tail->next = s;
  else f->head = s;
  f->tail = s;
  f->nseries++;
  *out = s;
  return 0;
oom:
  free_series(s, f->nlabels);
  return DSYS_ENOMEM;
}

static int resolve(dsys_metrics *r, const char *name, const char *help,
                   int type, const double *bounds, size_t nb,
                   const char *const *lnames, const char *const *lvalues,
                   size_t n, series **out) {
  if (out) *out = NULL;
  if (!r || !out || !valid_name(name, 1) || n > DSYS_METRICS_MAX_LABELS ||
      (n && (!lnames || !lvalues)))
    return DSYS_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (!valid_name(lnames[i], 0) || !lvalues[i] ||
        !strncmp(lnames[i], "__", 2) ||
        (type == T_HISTOGRAM && !strcmp(lnames[i], "le")))
      return DSYS_EINVAL;
    for (size_t j = 0; j < i; j++)
      if (!strcmp(lnames[i], lnames[j])) return DSYS_EINVAL;
  }
  if (type == T_HISTOGRAM && bounds) {
    if (nb < 1 || nb > DSYS_METRICS_MAX_BUCKETS) return DSYS_EINVAL;
    for (size_t i = 0; i < nb; i++)
      if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1]))
        return DSYS_EINVAL;
  }
  pthread_mutex_lock(&r->mu);
  family *f = NULL;
  int rc = get_family(r, name, help, type, bounds, nb, lnames, n, &f);
  pthread_mutex_unlock(&r->mu);
  if (rc) return rc;
  pthread_mutex_lock(&f->mu);
  rc = get_series(f, lvalues, out);
  pthread_mutex_unlock(&f->mu);
  return rc;
}

int dsys_metrics_counter(dsys_metrics *r, const char *name, const char *help,
                         const char *const *ln, const char *const *lv,
                         size_t n, dsys_counter **out) {
  return resolve(r, name, help, T_COUNTER, NULL, 0, ln, lv, n,
                 (series **)(void *)out);
}

int dsys_metrics_gauge(dsys_metrics *r, const char *name, const char *help,
                       const char *const *ln, const char *const *lv, size_t n,
                       dsys_gauge **out) {
  return resolve(r, name, help, T_GAUGE, NULL, 0, ln, lv, n,
                 (series **)(void *)out);
}

int dsys_metrics_histogram(dsys_metrics *r, const char *name,
                           const char *help, const double *bounds, size_t nb,
                           const char *const *ln, const char *const *lv,
                           size_t n, dsys_histogram **out) {
  return resolve(r, name, help, T_HISTOGRAM, bounds, nb, ln, lv, n,
                 (series **)(void *)out);
}

/* ---- updates ---- */

#define S(h) ((series *)(void *)(h))

void dsys_counter_inc(dsys_counter *c) {
  if (c) atomic_fetch_add_explicit(&S(c)->v, 1, memory_order_relaxed);
}

void dsys_counter_add(dsys_counter *c, uint64_t v) {
  if (c) atomic_fetch_add_explicit(&S(c)->v, v, memory_order_relaxed);
}

void dsys_counter_store(dsys_counter *c, uint64_t v) {
  if (c) atomic_store_explicit(&S(c)->v, v, memory_order_relaxed);
}

void dsys_counter_store_double(dsys_counter *c, double v) {
  if (!c) return;
  atomic_store_explicit(&S(c)->v, dbits(v), memory_order_relaxed);
  atomic_store_explicit(&S(c)->dbl, 1, memory_order_release);
}

uint64_t dsys_counter_value(const dsys_counter *c) {
  if (!c) return 0;
  uint64_t v = atomic_load_explicit(&S(c)->v, memory_order_relaxed);
  return atomic_load_explicit(&S(c)->dbl, memory_order_acquire) ? (uint64_t)bitsd(v) : v;
}

void dsys_gauge_set(dsys_gauge *g, double v) {
  if (g) atomic_store_explicit(&S(g)->v, dbits(v), memory_order_relaxed);
}

void dsys_gauge_add(dsys_gauge *g, double v) {
  if (g) atomic_add_double(&S(g)->v, v);
}

double dsys_gauge_value(const dsys_gauge *g) {
  return g ? bitsd(atomic_load_explicit(&S(g)->v, memory_order_relaxed)) : 0;
}

void dsys_histogram_observe(dsys_histogram *h, double v) {
  if (!h || isnan(v)) return;
  series *s = S(h);
  const double *b = s->fam->bounds;
  size_t lo = 0, hi = s->fam->nb; /* first bound >= v, or nb (+Inf) */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (v <= b[mid]) hi = mid;
    else lo = mid + 1;
  }
  atomic_fetch_add_explicit(&s->buckets[lo], 1, memory_order_relaxed);
  atomic_add_double(&s->sum, v);
}

int dsys_histogram_store(dsys_histogram *h, const uint64_t *counts, size_t n,
                         double sum) {
  if (!h || !counts || n != S(h)->fam->nb + 1) return DSYS_EINVAL;
  for (size_t i = 0; i < n; i++)
    atomic_store_explicit(&S(h)->buckets[i], counts[i], memory_order_relaxed);
  atomic_store_explicit(&S(h)->sum, dbits(sum), memory_order_relaxed);
  return 0;
}

int dsys_histogram_read(const dsys_histogram *h, size_t i,
                        uint64_t *cumulative, uint64_t *count, double *sum) {
  if (!h || i > S(h)->fam->nb) return DSYS_EINVAL;
  series *s = S(h);
  uint64_t acc = 0, cum = 0;
  for (size_t k = 0; k <= s->fam->nb; k++) {
    acc += atomic_load_explicit(&s->buckets[k], memory_order_relaxed);
    if (k == i) cum = acc;
  }
  if (cumulative) *cumulative = cum;
  if (count) *count = acc;
  if (sum) *sum = bitsd(atomic_load_explicit(&s->sum, memory_order_relaxed));
  return 0;
}

/* ---- exposition ---- */

static void render_family(dsysi_buf *b, family *f) {
  char num[64];
  dsysi_buf_printf(b, "# HELP %s ", f->name);
  put_escaped(b, f->help, 0);
  dsysi_buf_printf(b, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
  for (series *s = f->head; s; s = s->next) {
    const char *open = *s->labels ? "{" : "", *close = *s->labels ? "}" : "";
    if (f->type == T_COUNTER && atomic_load(&s->dbl)) {
      fmt_double(bitsd(atomic_load_explicit(&s->v, memory_order_relaxed)),
                 num, sizeof num);
      dsysi_buf_printf(b, "%s%s%s%s %s\n", f->name, open, s->labels, close,
                       num);
      continue;
    }
    if (f->type == T_COUNTER) {
      dsysi_buf_printf(b, "%s%s%s%s %llu\n", f->name, open, s->labels, close,
                       (unsigned long long)atomic_load_explicit(
                           &s->v, memory_order_relaxed));
      continue;
    }
    if (f->type == T_GAUGE) {
      fmt_double(bitsd(atomic_load_explicit(&s->v, memory_order_relaxed)),
                 num, sizeof num);
      dsysi_buf_printf(b, "%s%s%s%s %s\n", f->name, open, s->labels, close,
                       num);
      continue;
    }
    /* Cumulative buckets from one pass, so +Inf equals _count. */
    uint64_t acc = 0;
    const char *sep = *s->labels ? "," : "";
    for (size_t i = 0; i <= f->nb; i++) {
      acc += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
      if (i < f->nb) fmt_double(f->bounds[i], num, sizeof num);
      else snprintf(num, sizeof num, "+Inf");
      dsysi_buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name,
                       s->labels, sep, num, (unsigned long long)acc);
    }
    fmt_double(bitsd(atomic_load_explicit(&s->sum, memory_order_relaxed)),
               num, sizeof num);
    dsysi_buf_printf(b, "%s_sum%s%s%s %s\n", f->name, open, s->labels, close,
                     num);
    dsysi_buf_printf(b, "%s_count%s%s%s %llu\n", f->name, open, s->labels,
                     close, (unsigned long long)acc);
  }
}

int dsys_metrics_render(dsys_metrics *r, char **out, size_t *len) {
  if (out) *out = NULL;
  if (len) *len = 0;
  if (!r || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&r->render_mu);
  /* Collect hooks first, on a snapshot (a hook may resolve series). */
  pthread_mutex_lock(&r->mu);
  size_t nh = r->nhooks;
  hookent *hs = nh ? malloc(nh * sizeof *hs) : NULL;
  if (hs) memcpy(hs, r->hooks, nh * sizeof *hs);
  pthread_mutex_unlock(&r->mu);
  if (nh && !hs) {
    pthread_mutex_unlock(&r->render_mu);
    return DSYS_ENOMEM;
  }
  for (size_t i = 0; i < nh; i++) hs[i].fn(r, hs[i].ud);
  free(hs);
  dsysi_buf b = {0};
  dsysi_buf_puts(&b, "");
  pthread_mutex_lock(&r->mu);
  for (family *f = r->families; f; f = f->next) {
    pthread_mutex_lock(&f->mu);
    if (f->nseries) render_family(&b, f);
    pthread_mutex_unlock(&f->mu);
  }
  pthread_mutex_unlock(&r->mu);
  pthread_mutex_unlock(&r->render_mu);
  if (b.oom) {
    dsysi_buf_free(&b);
    return DSYS_ENOMEM;
  }
  *out = dsysi_buf_steal(&b, len);
  return 0;
}

/* ---- server instrumentation ---- */

#define SLOT_ROUTES 128 /* routes with a lock-free cache; more use lookups */
#define SLOT_CACHE 16   /* (method, status) pairs cached per route */

static const char *const methods[] = {"GET",    "HEAD",  "POST",    "PUT",
                                      "DELETE", "PATCH", "OPTIONS", "OTHER"};
#define NMETHODS (sizeof methods / sizeof methods[0])

typedef struct route_slot {
  _Atomic(dsys_histogram *) hist;
  struct {
    _Atomic uint32_t key; /* (method << 16 | status) + 1; 0 = empty */
    _Atomic(dsys_counter *) c;
  } cache[SLOT_CACHE];
} route_slot;

typedef struct srv_metrics {
  dsys_metrics *reg;
  route_slot slots[SLOT_ROUTES + 1]; /* last: unmatched */
} srv_metrics;

static size_t method_index(const char *m) {
  for (size_t i = 0; i < NMETHODS - 1; i++)
    if (!strcmp(m, methods[i])) return i;
  return NMETHODS - 1;
}

static void srv_observe(void *ud, int route_idx, const char *pattern,
                        const char *method, int status, int64_t dur_us) {
  srv_metrics *sm = ud;
  const char *route = pattern ? pattern : "unmatched";
  size_t mi = method_index(method ? method : "");
  if (status < 0 || status > 999) status = 0;
  route_slot *slot = route_idx < 0             ? &sm->slots[SLOT_ROUTES]
                     : route_idx < SLOT_ROUTES ? &sm->slots[route_idx]
                                               : NULL;
  uint32_t key = (uint32_t)((mi << 16) | (unsigned)status) + 1;
  dsys_counter *c = NULL;
  size_t i = 0;
  if (slot) {
    for (; i < SLOT_CACHE; i++) {
      uint32_t k = atomic_load_explicit(&slot->cache[i].key, memory_order_acquire);
      if (k == key) {
        c = atomic_load_explicit(&slot->cache[i].c, memory_order_acquire);
        break;
      }
      if (!k) break;
    }
  }
  if (!c) {
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    const char *ln[] = {"route", "method", "status"};
    const char *lv[] = {route, methods[mi], st};
    dsys_metrics_counter(sm->reg, "dsys_http_requests_total",
                         "HTTP requests finished, by route pattern, method and status.",
                         ln, lv, 3, &c);
    if (c && slot && i < SLOT_CACHE) {
      uint32_t zero = 0;
      if (atomic_compare_exchange_strong(&slot->cache[i].key, &zero, key))
        atomic_store_explicit(&slot->cache[i].c, c, memory_order_release);
    }
  }
  dsys_counter_inc(c);
  dsys_histogram *h =
      slot ? atomic_load_explicit(&slot->hist, memory_order_acquire) : NULL;
  if (!h) {
    const char *ln[] = {"route"};
    const char *lv[] = {route};
    dsys_metrics_histogram(sm->reg, "dsys_http_request_duration_seconds",
                           "HTTP request duration from arrival to the end of the response, by route pattern.",
                           NULL, 0, ln, lv, 1, &h);
    if (h && slot) atomic_store_explicit(&slot->hist, h, memory_order_release);
  }
  dsys_histogram_observe(h, (double)dur_us / 1e6);
}

/* The connection metrics of the instrumented servers: family, help and
 * label value per field of dsys_server_conn_stats, in its order. */
#define CONN_OPEN_HELP "Client connections open, silent ones included."
#define CONN_SILENT_HELP "Client connections accepted that have not sent a byte yet."
#define CONN_REFUSED_HELP "Client connections closed at accept, by reason."
#define CONN_EVICTED_HELP "Idle client connections closed to make room for others, by reason."
#define CONN_TIMEOUT_HELP "Client connections closed by a timeout, by reason."
static const struct {
  const char *name, *help, *reason;
} conn_series[] = {
    {"dsys_http_connections_open", CONN_OPEN_HELP, NULL},
    {"dsys_http_connections_silent", CONN_SILENT_HELP, NULL},
    {"dsys_http_connections_refused_total", CONN_REFUSED_HELP, "per_addr"},
    {"dsys_http_connections_refused_total", CONN_REFUSED_HELP, "full"},
    {"dsys_http_connections_evicted_total", CONN_EVICTED_HELP, "per_addr"},
    {"dsys_http_connections_evicted_total", CONN_EVICTED_HELP, "silent_limit"},
    {"dsys_http_connections_evicted_total", CONN_EVICTED_HELP, "full"},
    {"dsys_http_connections_evicted_total", CONN_EVICTED_HELP, "fds"},
    {"dsys_http_connections_timed_out_total", CONN_TIMEOUT_HELP, "header"},
    {"dsys_http_connections_timed_out_total", CONN_TIMEOUT_HELP, "request"},
};

static void collect_inflight(dsys_metrics *r, void *ud) {
  uint64_t n = 0;
  enum { NCONN = sizeof conn_series / sizeof conn_series[0] };
  uint64_t sum[NCONN] = {0};
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->nservers; i++) {
    n += dsys_server_inflight(r->servers[i]);
    dsys_server_conn_stats st = {.size = sizeof st};
    dsys_server_conn_stats_get(r->servers[i], &st);
    const uint64_t *f = &st.open; /* the fields, in conn_series order */
    for (size_t k = 0; k < NCONN; k++) sum[k] += f[k];
  }
  pthread_mutex_unlock(&r->mu);
  dsys_gauge_set(r->inflight, (double)n);
  static const char *const ln[] = {"reason"};
  for (size_t k = 0; k < NCONN; k++) {
    const char *lv[] = {conn_series[k].reason};
    size_t nl = conn_series[k].reason ? 1 : 0;
    const char *help = conn_series[k].help;
    if (k < 2) {
      dsys_gauge *g = NULL;
      dsys_metrics_gauge(r, conn_series[k].name, help, NULL, NULL, 0, &g);
      dsys_gauge_set(g, (double)sum[k]);
    } else {
      dsys_counter *c = NULL;
      dsys_metrics_counter(r, conn_series[k].name, help, ln, lv, nl, &c);
      dsys_counter_store(c, sum[k]);
    }
  }
}

int dsys_server_metrics(dsys_server *srv, dsys_metrics *r) {
  if (!srv || !r) return DSYS_EINVAL;
  srv_metrics *sm = calloc(1, sizeof *sm);
  if (!sm) return DSYS_ENOMEM;
  sm->reg = r;
  for (size_t i = 0; i <= SLOT_ROUTES; i++) {
    atomic_init(&sm->slots[i].hist, NULL);
    for (size_t j = 0; j < SLOT_CACHE; j++) {
      atomic_init(&sm->slots[i].cache[j].key, 0);
      atomic_init(&sm->slots[i].cache[j].c, NULL);
    }
  }
  int first = 0;
  int rc = 0;
  pthread_mutex_lock(&r->mu);
  if (dsysi_grow(&r->servers, &r->capservers, r->nservers + 1, sizeof *r->servers, 4))
    rc = DSYS_ENOMEM;
  first = r->nservers == 0;
  pthread_mutex_unlock(&r->mu);
  if (!rc && first && !r->inflight)
    rc = dsys_metrics_gauge(r, "dsys_http_requests_in_flight",
                            "HTTP requests received and not yet finished.", NULL,
                            NULL, 0, &r->inflight);
  if (!rc) rc = add_helper(r, sm, free); /* owned by r from here on */
  else free(sm);
  if (!rc) rc = dsysi_server_set_observer(srv, srv_observe, sm);
  if (rc) return rc;
  pthread_mutex_lock(&r->mu);
  r->servers[r->nservers++] = srv;
  pthread_mutex_unlock(&r->mu);
  if (first) return dsys_metrics_on_collect(r, collect_inflight, NULL);
  return 0;
}

static void metrics_handler(dsys_request *req, void *ud) {
  char *text = NULL;
  size_t len = 0;
  int rc = dsys_metrics_render(ud, &text, &len);
  if (rc) {
    dsys_respond_error(req, 500, dsys_err_name(rc), dsys_strerror(rc));
    return;
  }
  dsys_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
  dsys_free(text);
}

int dsys_metrics_mount(dsys_server *srv, dsys_metrics *r) {
  if (!srv || !r) return DSYS_EINVAL;
  return dsys_server_route(srv, "GET", "/metrics", metrics_handler, r);
}

/* ---- process ---- */

typedef struct proc_metrics {
  dsys_gauge *rss, *vms, *fds, *threads;
  dsys_counter *cpu;
} proc_metrics;

static void collect_process(dsys_metrics *r, void *ud) {
  proc_metrics *pm = ud;
  long page = sysconf(_SC_PAGESIZE);
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    unsigned long long size = 0, res = 0;
    if (fscanf(f, "%llu %llu", &size, &res) == 2) {
      dsys_gauge_set(pm->vms, (double)size * (double)page);
      dsys_gauge_set(pm->rss, (double)res * (double)page);
    }
    fclose(f);
  }
  char buf[1024];
  f = fopen("/proc/self/stat", "r");
  if (f) {
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    char *p = strrchr(buf, ')');
    /* After ") ": field 3 (state) is token 0; utime 14 -> 11, stime 15 ->
     * 12, num_threads 20 -> 17. */
    unsigned long long v[18] = {0};
    int k = 0;
    for (char *save = NULL, *t = p ? strtok_r(p + 1, " ", &save) : NULL;
         t && k < 18; t = strtok_r(NULL, " ", &save), k++)
      v[k] = strtoull(t, NULL, 10);
    if (k == 18) {
      long tck = sysconf(_SC_CLK_TCK);
      if (tck > 0) dsys_counter_store_double(pm->cpu, (double)(v[11] + v[12]) / (double)tck);
      dsys_gauge_set(pm->threads, (double)v[17]);
    }
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));)
      if (e->d_name[0] != '.') n++;
    closedir(d);
    dsys_gauge_set(pm->fds, (double)(n ? n - 1 : 0)); /* minus the DIR */
  }
}

int dsys_metrics_process(dsys_metrics *r) {
  if (!r) return DSYS_EINVAL;
  proc_metrics *pm = calloc(1, sizeof *pm);
  if (!pm) return DSYS_ENOMEM;
  int rc = 0;
  if (!rc) rc = dsys_metrics_gauge(r, "process_resident_memory_bytes",
                                   "Resident memory size in bytes.", NULL, NULL, 0, &pm->rss);
  if (!rc) rc = dsys_metrics_gauge(r, "process_virtual_memory_bytes",
                                   "Virtual memory size in bytes.", NULL, NULL, 0, &pm->vms);
  if (!rc) rc = dsys_metrics_counter(r, "process_cpu_seconds_total",
                                   "Total user and system CPU time spent in seconds.",
                                   NULL, NULL, 0, &pm->cpu);
  if (!rc) rc = dsys_metrics_gauge(r, "process_open_fds", "Number of open file descriptors.",
                                   NULL, NULL, 0, &pm->fds);
  if (!rc) rc = dsys_metrics_gauge(r, "process_threads", "Number of OS threads in the process.",
                                   NULL, NULL, 0, &pm->threads);
  if (!rc) rc = add_helper(r, pm, free);
  else free(pm);
  if (!rc) rc = dsys_metrics_on_collect(r, collect_process, pm);
  return rc;
}

/* ---- queue ---- */

typedef struct queue_metrics {
  dsys_queue *q;
  char *queue;
  dsys_gauge *g[6];
} queue_metrics;

static void free_queue_metrics(void *p) {
  queue_metrics *qm = p;
  free(qm->queue);
  free(qm);
}

static void collect_queue(dsys_metrics *r, void *ud) {
  queue_metrics *qm = ud;
  dsys_job_counts c;
  if (dsys_queue_counts(qm->q, qm->queue, &c)) return;
  int64_t v[6] = {c.waiting, c.delayed, c.active, c.completed, c.failed, c.canceled};
  for (int i = 0; i < 6; i++) dsys_gauge_set(qm->g[i], (double)v[i]);
}

int dsys_metrics_queue(dsys_metrics *r, dsys_queue *q, const char *queue) {
  if (!r || !q) return DSYS_EINVAL;
  static const char *const states[6] = {"waiting",   "delayed", "active",
                                        "completed", "failed",  "canceled"};
  queue_metrics *qm = calloc(1, sizeof *qm);
  if (!qm) return DSYS_ENOMEM;
  qm->q = q;
  if (queue && !(qm->queue = strdup(queue))) {
    free(qm);
    return DSYS_ENOMEM;
  }
  int rc = 0;
  for (int i = 0; !rc && i < 6; i++) {
    const char *ln[] = {"queue", "state"};
    const char *lv[] = {queue ? queue : "*", states[i]};
    rc = dsys_metrics_gauge(r, "dsys_queue_jobs",
                            "Jobs in the queue by state (read at scrape time).", ln, lv, 2,
                            &qm->g[i]);
  }
  if (!rc) rc = add_helper(r, qm, free_queue_metrics);
  else free_queue_metrics(qm);
  if (!rc) rc = dsys_metrics_on_collect(r, collect_queue, qm);
  return rc;
}

/* ---- store ---- */

static const char *const store_ops[] = {"get", "write", "delete", "incr", "list"};
#define NSTOREOPS 5

typedef struct store_metrics {
  dsys_metrics *reg;
  dsys_histogram *h[NSTOREOPS];
} store_metrics;

static void store_observe(int32_t op, int64_t ns, int rc, void *ud) {
  store_metrics *sm = ud;
  if (op < 0 || op >= NSTOREOPS) return;
  dsys_histogram_observe(sm->h[op], (double)ns / 1e9);
  if (rc && rc != DSYS_ENOTFOUND && rc != DSYS_ECONFLICT && rc != DSYS_EEXIST) {
    dsys_counter *c = NULL;
    const char *ln[] = {"op", "code"};
    const char *lv[] = {store_ops[op], dsys_err_name(rc)};
    dsys_metrics_counter(sm->reg, "dsys_store_operation_errors_total",
                         "Store operations that failed, by operation and error code.",
                         ln, lv, 2, &c);
    dsys_counter_inc(c);
  }
}

int dsys_metrics_store(dsys_metrics *r, dsys_store *s) {
  if (!r || !s) return DSYS_EINVAL;
  store_metrics *sm = calloc(1, sizeof *sm);
  if (!sm) return DSYS_ENOMEM;
  sm->reg = r;
  int rc = 0;
  for (int i = 0; !rc && i < NSTOREOPS; i++) {
    const char *ln[] = {"op"};
    const char *lv[] = {store_ops[i]};
    rc = dsys_metrics_histogram(r, "dsys_store_operation_duration_seconds",
                                "Duration of store backend operations.", NULL, 0, ln,
                                lv, 1, &sm->h[i]);
  }
  if (!rc) rc = add_helper(r, sm, free);
  else free(sm);
  if (!rc) rc = dsys_store_set_observer(s, store_observe, sm);
  return rc;
}

/* ---- upstream ---- */

typedef struct upstream_metrics {
  dsys_upstream *u;
  char *name;
} upstream_metrics;

/* Upstream latency bucket -> ours. Values of upstream bucket k are below
 * lower(k + 1) microseconds, so they are <= (lower(k + 1) - 1) us: the
 * first of our bounds at or above that holds them all (the open-ended last
 * bucket goes to +Inf). */
static void lat_map(size_t map[DSYS_UPSTREAM_LAT_BUCKETS]) {
  for (size_t k = 0; k < DSYS_UPSTREAM_LAT_BUCKETS; k++) {
    int64_t up = dsys_upstream_bucket_lower_us((uint32_t)k + 1);
    size_t j = NDEFAULT;
    if (up != INT64_MAX)
      for (j = 0; j < NDEFAULT; j++)
        if ((double)(up - 1) <= default_bounds[j] * 1e6) break;
    map[k] = j;
  }
}

static void free_upstream_metrics(void *p) {
  upstream_metrics *um = p;
  free(um->name);
  free(um);
}

void dsysi_metrics_collect_upstream(dsys_metrics *r, const char *name, dsys_upstream *u) {
  size_t map[DSYS_UPSTREAM_LAT_BUCKETS];
  lat_map(map);
  dsys_endpoint_stats *st = NULL;
  size_t n = 0;
  if (!dsys_upstream_stats(u, &st, &n)) {
    for (size_t i = 0; i < n; i++) {
      const dsys_endpoint_stats *e = &st[i];
      const char *ln[] = {"upstream", "endpoint"};
      const char *lv[] = {name, e->id};
      dsys_counter *c = NULL;
      dsys_gauge *g = NULL;
      dsys_histogram *h = NULL;
      if (!dsys_metrics_counter(r, "dsys_upstream_requests_total",
                                "Attempts started on an upstream endpoint.", ln, lv, 2, &c))
        dsys_counter_store(c, e->requests);
      if (!dsys_metrics_counter(r, "dsys_upstream_failures_total",
                                "Attempts on an upstream endpoint that failed (not sent, timeout, reset, protocol error, 5xx).",
                                ln, lv, 2, &c))
        dsys_counter_store(c, e->failures);
      if (!dsys_metrics_counter(r, "dsys_upstream_breaker_rejections_total",
                                "Picks refused by the endpoint's open circuit breaker.",
                                ln, lv, 2, &c))
        dsys_counter_store(c, e->breaker_rejections);
      if (!dsys_metrics_gauge(r, "dsys_upstream_in_flight",
                              "Attempts on the endpoint picked and not yet finished.", ln, lv, 2, &g))
        dsys_gauge_set(g, (double)e->in_flight);
      if (!dsys_metrics_gauge(r, "dsys_upstream_endpoint_usable",
                              "1 when the endpoint takes traffic (healthy and breaker not open).",
                              ln, lv, 2, &g))
        dsys_gauge_set(g, e->usable ? 1 : 0);
      if (!dsys_metrics_gauge(r, "dsys_upstream_endpoint_ejected",
                              "1 while outlier detection ejects the endpoint.", ln, lv, 2, &g))
        dsys_gauge_set(g, e->ejected ? 1 : 0);
      if (!dsys_metrics_gauge(r, "dsys_upstream_breaker_state",
                              "Circuit breaker state: 0 closed, 1 open, 2 half-open.", ln, lv, 2, &g))
        dsys_gauge_set(g, (double)e->breaker_state);
      if (!dsys_metrics_histogram(r, "dsys_upstream_request_duration_seconds",
                                  "Latency of finished attempts on an upstream endpoint.",
                                  NULL, 0, ln, lv, 2, &h)) {
        uint64_t counts[NDEFAULT + 1] = {0};
        for (size_t k = 0; k < DSYS_UPSTREAM_LAT_BUCKETS; k++)
          counts[map[k]] += e->latency_buckets[k];
        dsys_histogram_store(h, counts, NDEFAULT + 1, (double)e->latency_sum_us / 1e6);
      }
    }
    dsys_free(st);
  }
  dsys_upstream_totals t;
  if (!dsys_upstream_totals_get(u, &t)) {
    const char *ln[] = {"upstream"};
    const char *lv[] = {name};
    dsys_counter *c = NULL;
    dsys_gauge *g = NULL;
    if (!dsys_metrics_counter(r, "dsys_upstream_retries_total",
                              "Attempts after the first of calls through the upstream.", ln, lv, 1, &c))
      dsys_counter_store(c, t.retries);
    if (!dsys_metrics_counter(r, "dsys_upstream_unavailable_total",
                              "Picks that found no usable endpoint.", ln, lv, 1, &c))
      dsys_counter_store(c, t.unavailable);
    if (!dsys_metrics_gauge(r, "dsys_upstream_endpoints",
                            "Endpoints of the upstream (usable or not).", ln, lv, 1, &g))
      dsys_gauge_set(g, (double)t.endpoints);
  }
  dsys_upstream_latency l = {.size = sizeof l};
  if (!dsys_upstream_latency_get(u, &l)) {
    const char *ln[] = {"upstream"};
    const char *lv[] = {name};
    static const struct {
      const char *name, *help;
      size_t off;
    } ctr[] = {
        {"dsys_upstream_attempt_timeouts_total", "Attempts that timed out.",
         offsetof(dsys_upstream_latency, attempt_timeouts)},
        {"dsys_upstream_slow_answers_total", "Answers slower than the adaptive per-try timeout.",
         offsetof(dsys_upstream_latency, slow_answers)},
        {"dsys_upstream_hedges_total", "Hedge attempts sent.", offsetof(dsys_upstream_latency, hedges)},
        {"dsys_upstream_hedges_won_total", "Calls answered by their hedge.",
         offsetof(dsys_upstream_latency, hedges_won)},
        {"dsys_upstream_slow_ejections_total", "Endpoints ejected for slowness.",
         offsetof(dsys_upstream_latency, slow_ejections)},
    };
    for (size_t k = 0; k < sizeof ctr / sizeof ctr[0]; k++) {
      dsys_counter *c = NULL;
      uint64_t v;
      memcpy(&v, (const char *)&l + ctr[k].off, sizeof v);
      if (!dsys_metrics_counter(r, ctr[k].name, ctr[k].help, ln, lv, 1, &c)) dsys_counter_store(c, v);
    }
    dsys_gauge *g = NULL;
    if (!dsys_metrics_gauge(r, "dsys_upstream_try_timeout_seconds",
                            "The adaptive per-try timeout now (0: none).", ln, lv, 1, &g))
      dsys_gauge_set(g, (double)l.try_timeout_ms / 1000.0);
  }
}

static void collect_upstream(dsys_metrics *r, void *ud) {
  upstream_metrics *um = ud;
  dsysi_metrics_collect_upstream(r, um->name, um->u);
}

int dsys_metrics_upstream(dsys_metrics *r, const char *name, dsys_upstream *u) {
  if (!r || !name || !u) return DSYS_EINVAL;
  upstream_metrics *um = calloc(1, sizeof *um);
  if (!um) return DSYS_ENOMEM;
  um->u = u;
  if (!(um->name = strdup(name))) {
    free(um);
    return DSYS_ENOMEM;
  }
  int rc = add_helper(r, um, free_upstream_metrics);
  if (rc) {
    free_upstream_metrics(um);
    return rc;
  }
  return dsys_metrics_on_collect(r, collect_upstream, um);
}

/* ---- cache ---- */

typedef struct cache_metrics {
  dsys_cache *c;
  char *name;
} cache_metrics;

static void free_cache_metrics(void *p) {
  cache_metrics *cm = p;
  free(cm->name);
  free(cm);
}

static void collect_cache(dsys_metrics *r, void *ud) {
  cache_metrics *cm = ud;
  dsys_cache_stats st;
  dsys_cache_get_stats(cm->c, &st);
  const char *ln[] = {"cache"};
  const char *lv[] = {cm->name};
  static const struct {
    const char *name, *help;
    size_t off;
  } counters[] = {
      {"dsys_cache_hits_total", "Gets answered by a fresh entry.",
       offsetof(dsys_cache_stats, hits)},
      {"dsys_cache_stale_hits_total", "Gets answered by a stale entry while it was refreshed.",
       offsetof(dsys_cache_stats, stale_hits)},
      {"dsys_cache_negative_hits_total", "Gets answered by a remembered not-found.",
       offsetof(dsys_cache_stats, negative_hits)},
      {"dsys_cache_misses_total", "Gets that found no usable entry.",
       offsetof(dsys_cache_stats, misses)},
      {"dsys_cache_loads_total", "Loader runs (concurrent misses of a key share one).",
       offsetof(dsys_cache_stats, loads)},
      {"dsys_cache_load_errors_total", "Loader runs that failed.",
       offsetof(dsys_cache_stats, load_errors)},
      {"dsys_cache_evictions_total", "Entries dropped to stay within the size bounds.",
       offsetof(dsys_cache_stats, evictions)},
      {"dsys_cache_invalidations_total", "Entries dropped because their source changed.",
       offsetof(dsys_cache_stats, invalidations)},
  };
  for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
    dsys_counter *c = NULL;
    if (!dsys_metrics_counter(r, counters[i].name, counters[i].help, ln, lv, 1, &c))
      dsys_counter_store(c, *(const uint64_t *)((const char *)&st + counters[i].off));
  }
  dsys_gauge *g = NULL;
  if (!dsys_metrics_gauge(r, "dsys_cache_entries", "Entries in the cache.", ln, lv, 1, &g))
    dsys_gauge_set(g, (double)st.entries);
  if (!dsys_metrics_gauge(r, "dsys_cache_bytes", "Bytes held by the cache (keys, values, overhead).",
                          ln, lv, 1, &g))
    dsys_gauge_set(g, (double)st.bytes);
}

int dsys_metrics_cache(dsys_metrics *r, const char *name, dsys_cache *c) {
  if (!r || !name || !c) return DSYS_EINVAL;
  cache_metrics *cm = calloc(1, sizeof *cm);
  if (!cm) return DSYS_ENOMEM;
  cm->c = c;
  if (!(cm->name = strdup(name))) {
    free(cm);
    return DSYS_ENOMEM;
  }
  int rc = add_helper(r, cm, free_cache_metrics);
  if (rc) {
    free_cache_metrics(cm);
    return rc;
  }
  return dsys_metrics_on_collect(r, collect_cache, cm);
}
