/*
 * In-memory lock backend ("memory:"): the locks of this handle only (tests,
 * embedding, several threads of one process). One mutex, a flat array:
 * lock tables are small.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/lock.h>
#include "core/internal.h"
#include "core/plugin.h"

typedef struct entry {
  char *name;
  char owner[DSYS_LOCK_MAX_OWNER]; /* "" = free */
  int64_t token, expires_at;
} entry;

typedef struct mem {
  pthread_mutex_t mu;
  entry *v;
  size_t n, cap;
} mem;

static int m_open(void *st, const char *location, char *err, size_t errlen) {
  mem *m = st;
  pthread_mutex_init(&m->mu, NULL);
  return 0;
}

static void m_close(void *st) {
  mem *m = st;
  for (size_t i = 0; i < m->n; i++) free(m->v[i].name);
  free(m->v);
  pthread_mutex_destroy(&m->mu);
}

static entry *find(mem *m, const char *name) {
  for (size_t i = 0; i < m->n; i++)
    if (!strcmp(m->v[i].name, name)) return &m->v[i];
  return NULL;
}

static int running(const entry *e, int64_t now) { return e->owner[0] && e->expires_at > now; }

static void info_of(const entry *e, dsys_lock_info *out) {
  if (!out) return;
  snprintf(out->owner, sizeof out->owner, "%s", e->owner);
  out->token = e->token;
  out->expires_at = e->expires_at;
}

static int m_acquire(void *st, const char *name, const char *owner, int64_t now, int64_t ttl_ms,
                     int64_t *token, dsys_lock_info *held) {
  mem *m = st;
  int rc = 0;
  pthread_mutex_lock(&m->mu);
  entry *e = find(m, name);
  if (!e) {
    if (m->n == m->cap) {
      size_t cap = m->cap ? m->cap * 2 : 8;
      entry *v = realloc(m->v, cap * sizeof *v);
      if (!v) rc = DSYS_ENOMEM;
      else m->v = v, m->cap = cap;
    }
    char *dup = rc ? NULL : strdup(name);
    if (!rc && !dup) rc = DSYS_ENOMEM;
    if (!rc) {
      e = &m->v[m->n++];
      memset(e, 0, sizeof *e);
      e->name = dup;
    }
  }
  if (!rc && running(e, now)) {
    info_of(e, held);
    rc = DSYS_EBUSY;
  } else if (!rc) {
    snprintf(e->owner, sizeof e->owner, "%s", owner);
    *token = ++e->token;
    e->expires_at = now + ttl_ms;
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static entry *holding(mem *m, const char *name, const char *owner, int64_t token) {
  entry *e = find(m, name);
  return e && e->token == token && !strcmp(e->owner, owner) ? e : NULL;
}

static int m_renew(void *st, const char *name, const char *owner, int64_t token, int64_t now,
                   int64_t ttl_ms) {
  mem *m = st;
  pthread_mutex_lock(&m->mu);
  entry *e = holding(m, name, owner, token);
  if (e) e->expires_at = now + ttl_ms;
  pthread_mutex_unlock(&m->mu);
  return e ? 0 : DSYS_ELEASE;
}

static int m_release(void *st, const char *name, const char *owner, int64_t token) {
  mem *m = st;
  pthread_mutex_lock(&m->mu);
  entry *e = holding(m, name, owner, token);
  if (e) {
    e->owner[0] = 0;
    e->expires_at = 0;
  }
  pthread_mutex_unlock(&m->mu);
  return e ? 0 : DSYS_ELEASE;
}

static int m_holder(void *st, const char *name, int64_t now, dsys_lock_info *out) {
  mem *m = st;
  pthread_mutex_lock(&m->mu);
  entry *e = find(m, name);
  int rc = e && running(e, now) ? 0 : DSYS_ENOTFOUND;
  if (!rc) info_of(e, out);
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static const dsys_lock_ops memory_ops = {
    .version = DSYS_LOCK_OPS_VERSION,
    .name = "memory",
    .state_size = sizeof(mem),
    .open = m_open,
    .close = m_close,
    .acquire = m_acquire,
    .renew = m_renew,
    .release = m_release,
    .holder = m_holder,
};

const dsys_lock_ops *dsys_lock_ops_memory(void) { return &memory_ops; }
DSYSI_PLUGINS(lock_memory) = {{"lock", &memory_ops}, {0}};
