/* Plugin families (see plugin.h). */
#include <string.h>
#include "core/internal.h"
#include "core/plugin.h"

/* Every ops table starts with its version and its name (or scheme). */
typedef struct ops_head {
  int version;
  const char *name;
} ops_head;

static const char *key_of(const dsysi_family *f, const void *ops) {
  return f->key ? f->key(ops) : ((const ops_head *)ops)->name;
}

/* Hold f->mu. */
static int add_locked(dsysi_family *f, const void *ops) {
  if (!ops || !f->usable(ops) || !key_of(f, ops) || !*key_of(f, ops)) return DSYS_EINVAL;
  const char *k = key_of(f, ops);
  size_t n = atomic_load_explicit(&f->n, memory_order_relaxed);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(key_of(f, atomic_load_explicit(&f->v[i], memory_order_relaxed)), k)) return DSYS_EEXIST;
  if (n == DSYSI_FAMILY_MAX) return DSYS_ENOMEM;
  atomic_store_explicit(&f->v[n], ops, memory_order_relaxed);
  atomic_store_explicit(&f->n, n + 1, memory_order_release); /* publish */
  return 0;
}

/* Hold f->mu. A built-in that does not pass the family's check is a bug of
 * the library, reported once rather than silently missing. */
static void load_locked(dsysi_family *f) {
  if (atomic_load_explicit(&f->loaded, memory_order_relaxed)) return;
  for (const dsysi_plugin *const *l = dsysi_builtin_plugins; *l; l++)
    for (const dsysi_plugin *p = *l; p->family; p++)
      if (!strcmp(p->family, f->name)) {
        int e = add_locked(f, p->ops);
        if (e) dsysi_log(DSYS_LOG_ERROR, "plugin", "built-in %s backend not added: %s", f->name, dsys_strerror(e));
      }
  atomic_store_explicit(&f->loaded, 1, memory_order_release);
}

static void load(dsysi_family *f) {
  if (atomic_load_explicit(&f->loaded, memory_order_acquire)) return;
  pthread_mutex_lock(&f->mu);
  load_locked(f);
  pthread_mutex_unlock(&f->mu);
}

int dsysi_family_register(dsysi_family *f, const void *ops) {
  pthread_mutex_lock(&f->mu);
  load_locked(f);
  int e = add_locked(f, ops);
  pthread_mutex_unlock(&f->mu);
  return e;
}

const void *dsysi_family_find(dsysi_family *f, const char *name, size_t len) {
  if (!name) return NULL;
  load(f);
  size_t n = atomic_load_explicit(&f->n, memory_order_acquire);
  for (size_t i = 0; i < n; i++) {
    const void *ops = atomic_load_explicit(&f->v[i], memory_order_relaxed);
    const char *k = key_of(f, ops);
    if (strlen(k) == len && !memcmp(k, name, len)) return ops;
  }
  return NULL;
}

int dsysi_plugin_url(const char *url, const char **scheme, size_t *slen,
                     const char **location) {
  if (!url) return DSYS_EINVAL;
  size_t n = strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");
  if (n == 0 || url[n] != ':') return DSYS_EURL;
  *scheme = url;
  *slen = n;
  *location = url + n + 1 + (strncmp(url + n, "://", 3) ? 0 : 2);
  return 0;
}

int dsysi_family_for_url(dsysi_family *f, const char *url, const void **ops,
                         const char **location) {
  const char *scheme;
  size_t n;
  int e = dsysi_plugin_url(url, &scheme, &n, location);
  if (e) return e;
  *ops = dsysi_family_find(f, scheme, n);
  return *ops ? 0 : DSYS_ESCHEME;
}

const void *dsysi_family_at(dsysi_family *f, size_t i) {
  load(f);
  return i < atomic_load_explicit(&f->n, memory_order_acquire)
             ? atomic_load_explicit(&f->v[i], memory_order_relaxed)
             : NULL;
}
