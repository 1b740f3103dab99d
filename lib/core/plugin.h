/*
 * Plugin families: the backends of one kind (transports, stores, queues,
 * registries), each found by the name it serves (a URL scheme).
 *
 * A built-in backend registers itself: its file ends with its ops tables
 * and the list of them, DSYSI_PLUGINS(FILE) = {{"store", &ops}, {0}}
 * (FILE is the file's base name), and it is listed in DSYS_PLUGIN_SOURCES
 * of its folder's local.mk, from which the build generates the table of
 * all the lists, dsysi_builtin_plugins (lib/plugins.c). A family
 * loads its built-ins on first use. Programs add backends of their own
 * through the family's public dsys_*_register function, which lands in
 * dsysi_family_register. Entries are never removed, so lookups read the
 * table without a lock (it only grows, published with release order).
 */
#ifndef DSYSI_PLUGIN_H
#define DSYSI_PLUGIN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

/** One built-in backend: which family and its ops table. */
typedef struct dsysi_plugin {
  const char *family; /* "store", "queue", "registry", "transport" */
  const void *ops;
} dsysi_plugin;

/** The list of the built-in backends in source file FILE.c (its base
 *  name, listed in DSYS_PLUGIN_SOURCES), ended by {0}:
 *  DSYSI_PLUGINS(store_sqlite) = {{"store", &sqlite_ops}, {0}}; */
#define DSYSI_PLUGINS(file) const dsysi_plugin dsysi_plugins_##file[]

/** Every file's list, NULL-terminated (generated: lib/plugins.c). */
extern const dsysi_plugin *const dsysi_builtin_plugins[];

/** The most backends one family holds (built-in and registered). */
#define DSYSI_FAMILY_MAX 32

typedef struct dsysi_family {
  const char *name; /* matches dsysi_plugin.family */
  /* nonzero when ops is usable: a known version, every mandatory op */
  int (*usable)(const void *ops);
  /* the name ops serves (its URL scheme); NULL: the table's head, as every
   * ops table of the library starts {int version; const char *name;} */
  const char *(*key)(const void *ops);
  pthread_mutex_t mu; /* serialises registrations */
  atomic_int loaded;  /* built-ins added */
  atomic_size_t n;
  const void *_Atomic v[DSYSI_FAMILY_MAX];
} dsysi_family;

/** A static family: DSYSI_FAMILY("store", usable_fn, key_fn or NULL). */
#define DSYSI_FAMILY(name, usable, key) \
  { (name), (usable), (key), PTHREAD_MUTEX_INITIALIZER, 0, 0, {0} }

/**
 * Add a backend to a family.
 * @return 0; DSYS_EINVAL when ops is NULL or not usable (unknown version,
 *         a mandatory op missing, no name); DSYS_EEXIST when a backend of
 *         that name is there already; DSYS_ENOMEM when the family is full.
 */
int dsysi_family_register(dsysi_family *f, const void *ops);

/** The backend serving name (len bytes, not NUL-terminated), or NULL. */
const void *dsysi_family_find(dsysi_family *f, const char *name, size_t len);

/**
 * The backend of a backend URL ("NAME://location" or "NAME:location", see
 * dsysi_plugin_url) and its location.
 * @return 0; DSYS_EINVAL (NULL url), DSYS_EURL (no scheme), DSYS_ESCHEME
 *         (no backend of that name).
 */
int dsysi_family_for_url(dsysi_family *f, const char *url, const void **ops,
                         const char **location);

/** The backend at index i (0 <= i < count), in registration order, for
 *  callers that keep per-backend state in an array; NULL past the end. */
const void *dsysi_family_at(dsysi_family *f, size_t i);

/**
 * Split a backend URL "scheme://location" or "scheme:location" (e.g.
 * "sqlite:///var/db.sqlite", "memory:") into its scheme (not
 * NUL-terminated: *slen bytes) and location (the rest, maybe empty).
 * @return 0; DSYS_EINVAL for NULL; DSYS_EURL without a well-formed scheme.
 */
int dsysi_plugin_url(const char *url, const char **scheme, size_t *slen,
                     const char **location);

#endif
