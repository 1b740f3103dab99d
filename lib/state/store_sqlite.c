/*
 * SQLite store backend. One connection per thread (pthread key), each with
 * its own prepared statements; write transactions of the process are
 * funnelled through one mutex (SQLite serializes writers anyway, and a
 * mutex is fairer than busy_timeout waits inside one process).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/store.h>
#include "core/db.h"
#include "core/internal.h"
#include "core/plugin.h"
#include "state/store_int.h"

enum {
  ST_GET_KEY, ST_GET_ID, ST_BEGIN, ST_COMMIT, ST_ROLLBACK, ST_DEL_EXPIRED,
  ST_PUT, ST_CREATE, ST_UPDATE, ST_DELETE, ST_VERSION, ST_LIST, ST_PURGE,
  ST_COUNT
};

#define COLS "id, key, value, metadata, version, created_at, updated_at, expires_at"

static const char *const sqls[ST_COUNT] = {
    [ST_GET_KEY] = "SELECT " COLS " FROM dsys_store_items WHERE key = ?1",
    [ST_GET_ID] = "SELECT " COLS " FROM dsys_store_items WHERE id = ?1",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_DEL_EXPIRED] = "DELETE FROM dsys_store_items WHERE key = ?1 AND "
                       "expires_at > 0 AND expires_at <= ?2",
    [ST_PUT] = "INSERT INTO dsys_store_items(key, value, metadata, version, "
               "created_at, updated_at, expires_at) "
               "VALUES(?1, ?2, ?3, 1, ?4, ?4, ?5) ON CONFLICT(key) DO UPDATE "
               "SET value = excluded.value, metadata = excluded.metadata, "
               "version = version + 1, updated_at = excluded.updated_at, "
               "expires_at = excluded.expires_at RETURNING " COLS,
    [ST_CREATE] = "INSERT INTO dsys_store_items(key, value, metadata, "
                  "version, created_at, updated_at, expires_at) "
                  "VALUES(?1, ?2, ?3, 1, ?4, ?4, ?5) RETURNING " COLS,
    [ST_UPDATE] = "UPDATE dsys_store_items SET value = ?2, "
                  "metadata = COALESCE(?3, metadata), version = version + 1, "
                  "updated_at = ?4, expires_at = ?5 "
                  "WHERE key = ?1 AND (?6 = 0 OR version = ?6) RETURNING " COLS,
    [ST_DELETE] = "DELETE FROM dsys_store_items WHERE key = ?1 AND "
                  "(?2 = 0 OR version = ?2) RETURNING " COLS,
    [ST_VERSION] = "SELECT version FROM dsys_store_items WHERE key = ?1",
    [ST_LIST] = "SELECT " COLS " FROM dsys_store_items WHERE key >= ?1 AND "
                "key > ?2 ORDER BY key",
    [ST_PURGE] = "DELETE FROM dsys_store_items WHERE id IN (SELECT id FROM "
                 "dsys_store_items WHERE expires_at > 0 AND expires_at <= ?1 "
                 "LIMIT ?2)",
};

static const char *const migrations[] = {
    "CREATE TABLE dsys_store_items("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT NOT NULL UNIQUE,"
    " value TEXT NOT NULL,"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " version INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX dsys_store_items_expiry ON dsys_store_items(expires_at) "
    " WHERE expires_at > 0;",
};

typedef struct sq sq;
typedef struct conn {
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT];
  struct conn *next, *prev;
  sq *owner;
} conn;

struct sq {
  char *path;
  int full_sync;
  pthread_key_t key;
  int key_ok;
  pthread_mutex_t mu;  /* protects conns */
  pthread_mutex_t wmu; /* one writer per process */
  conn *conns;
};

static void conn_close(conn *c) {
  for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(c->st[i]);
  sqlite3_close(c->db);
  free(c);
}

static void conn_unlink(conn *c) {
  sq *s = c->owner;
  pthread_mutex_lock(&s->mu);
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  pthread_mutex_unlock(&s->mu);
}

/* pthread key destructor: the thread exits, its connection goes. */
static void conn_dtor(void *p) {
  conn *c = p;
  conn_unlink(c);
  conn_close(c);
}

static int conn_new(sq *s, conn **out, char *err, size_t errlen) {
  conn *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  int e = dsysi_db_open(s->path, s->full_sync, &c->db, err, errlen);
  if (e) {
    free(c);
    return e;
  }
  c->owner = s;
  pthread_mutex_lock(&s->mu);
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  pthread_mutex_unlock(&s->mu);
  *out = c;
  return 0;
}

static int get_conn(sq *s, conn **out) {
  conn *c = pthread_getspecific(s->key);
  if (c) {
    *out = c;
    return 0;
  }
  char err[200];
  int e = conn_new(s, &c, err, sizeof err);
  if (e) {
    dsysi_log(DSYS_LOG_ERROR, "store", "sqlite open: %s", err);
    return e;
  }
  if (pthread_setspecific(s->key, c)) {
    conn_unlink(c);
    conn_close(c);
    return DSYS_ENOMEM;
  }
  *out = c;
  return 0;
}

static sqlite3_stmt *stmt(conn *c, int i) {
  sqlite3_stmt *st = c->st[i];
  if (!st) {
    if (sqlite3_prepare_v3(c->db, sqls[i], -1, SQLITE_PREPARE_PERSISTENT,
                           &c->st[i], NULL) != SQLITE_OK) {
      dsysi_log(DSYS_LOG_ERROR, "store", "prepare: %s", sqlite3_errmsg(c->db));
      return NULL;
    }
    st = c->st[i];
  }
  return st;
}

static int err_of(int rc) {
  int e = dsysi_db_err(rc);
  return e ? e : DSYS_EDB;
}

static dsys_item *row_item(sqlite3_stmt *st) {
  size_t kl = (size_t)sqlite3_column_bytes(st, 1);
  const unsigned char *k = sqlite3_column_text(st, 1);
  size_t vl = (size_t)sqlite3_column_bytes(st, 2);
  const unsigned char *v = sqlite3_column_text(st, 2);
  size_t ml = (size_t)sqlite3_column_bytes(st, 3);
  const unsigned char *m = sqlite3_column_text(st, 3);
  if (!k || !v || !m) return NULL;
  dsys_item *it = malloc(sizeof *it + kl + vl + ml + 3);
  if (!it) return NULL;
  char *p = (char *)(it + 1);
  memcpy(p, k, kl + 1);
  it->key = p;
  p += kl + 1;
  memcpy(p, v, vl + 1);
  it->value = p;
  p += vl + 1;
  memcpy(p, m, ml + 1);
  it->metadata = p;
  it->id = sqlite3_column_int64(st, 0);
  it->version = sqlite3_column_int64(st, 4);
  it->created_at = sqlite3_column_int64(st, 5);
  it->updated_at = sqlite3_column_int64(st, 6);
  it->expires_at = sqlite3_column_int64(st, 7);
  return it;
}

static int sq_open(void *state, const char *location,
                   const dsys_store_options *o, char *err, size_t errlen) {
  sq *s = state;
  if (!*location) return DSYS_EURL; /* "sqlite://" names no file */
  s->path = dsysi_strdup(location);
  if (!s->path) return DSYS_ENOMEM;
  s->full_sync = o->full_sync ? 1 : 0;
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->wmu, NULL);
  if (pthread_key_create(&s->key, conn_dtor)) {
    free(s->path);
    return DSYS_ENOMEM;
  }
  s->key_ok = 1;
  conn *c = NULL;
  int e = conn_new(s, &c, err, errlen);
  if (!e) e = dsysi_db_migrate(c->db, "store", migrations, 1, err, errlen);
  if (!e && pthread_setspecific(s->key, c)) e = DSYS_ENOMEM;
  if (e) {
    if (c) {
      conn_unlink(c);
      conn_close(c);
    }
    pthread_key_delete(s->key);
    free(s->path);
    return e;
  }
  return 0;
}

static void sq_close(void *state) {
  sq *s = state;
  /* After pthread_key_delete no destructor runs; close every connection
   * (the caller guarantees no call is in progress). */
  pthread_key_delete(s->key);
  conn *c = s->conns;
  while (c) {
    conn *n = c->next;
    conn_close(c);
    c = n;
  }
  pthread_mutex_destroy(&s->mu);
  pthread_mutex_destroy(&s->wmu);
  free(s->path);
}

static int sq_get(void *state, const char *key, int64_t id, int64_t now,
                  dsys_item **out) {
  conn *c;
  int e = get_conn(state, &c);
  if (e) return e;
  sqlite3_stmt *st = stmt(c, key ? ST_GET_KEY : ST_GET_ID);
  if (!st) return DSYS_EDB;
  if (key) sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  else sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    int64_t exp = sqlite3_column_int64(st, 7);
    if (exp > 0 && exp <= now) {
      e = DSYS_ENOTFOUND;
    } else {
      *out = row_item(st);
      if (!*out) e = DSYS_ENOMEM;
    }
  } else {
    e = rc == SQLITE_DONE ? DSYS_ENOTFOUND : err_of(rc);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return e;
}

/* Run a statement expected to return at most one row; *out gets the item
 * (NULL if no row). */
static int step_item(sqlite3_stmt *st, dsys_item **out) {
  int rc = sqlite3_step(st);
  int e = 0;
  *out = NULL;
  if (rc == SQLITE_ROW) {
    *out = row_item(st);
    if (!*out) e = DSYS_ENOMEM;
    else rc = sqlite3_step(st);
    if (!e && rc != SQLITE_DONE && rc != SQLITE_ROW) e = err_of(rc);
  } else if (rc != SQLITE_DONE) {
    e = err_of(rc);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (e) {
    free(*out);
    *out = NULL;
  }
  return e;
}

static int run(conn *c, int i) {
  sqlite3_stmt *st = stmt(c, i);
  if (!st) return DSYS_EDB;
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return (rc == SQLITE_DONE || rc == SQLITE_ROW) ? 0 : err_of(rc);
}

static int begin(sq *s, conn *c) {
  pthread_mutex_lock(&s->wmu);
  int e = run(c, ST_BEGIN);
  if (e) pthread_mutex_unlock(&s->wmu);
  return e;
}

/* This thread's connection with the write lock taken and a transaction
 * begun: every write starts so and ends with finish(). */
static int begin_write(sq *s, conn **c) {
  int e = get_conn(s, c);
  return e ? e : begin(s, *c);
}

static int finish(sq *s, conn *c, int e) {
  if (!e) {
    e = run(c, ST_COMMIT);
    if (e) run(c, ST_ROLLBACK);
  } else {
    run(c, ST_ROLLBACK);
  }
  pthread_mutex_unlock(&s->wmu);
  return e;
}

static int del_expired(conn *c, const char *key, int64_t now) {
  sqlite3_stmt *st = stmt(c, ST_DEL_EXPIRED);
  if (!st) return DSYS_EDB;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, now);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE ? 0 : err_of(rc);
}

/* 0 = absent, else version. */
static int cur_version(conn *c, const char *key, int64_t *ver) {
  sqlite3_stmt *st = stmt(c, ST_VERSION);
  if (!st) return DSYS_EDB;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  int e = 0;
  *ver = 0;
  if (rc == SQLITE_ROW) *ver = sqlite3_column_int64(st, 0);
  else if (rc != SQLITE_DONE) e = err_of(rc);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return e;
}

static int write_locked(conn *c, int mode, const char *key, const char *value,
                        const char *meta, int64_t exp, int64_t ev,
                        int64_t now, dsys_item **out) {
  int e = del_expired(c, key, now);
  if (e) return e;
  int si = mode == DSYS_STORE_W_PUT      ? ST_PUT
           : mode == DSYS_STORE_W_CREATE ? ST_CREATE
                                         : ST_UPDATE;
  sqlite3_stmt *st = stmt(c, si);
  if (!st) return DSYS_EDB;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
  if (meta) sqlite3_bind_text(st, 3, meta, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, 3);
  sqlite3_bind_int64(st, 4, now);
  sqlite3_bind_int64(st, 5, exp);
  if (si == ST_UPDATE) sqlite3_bind_int64(st, 6, ev);
  e = step_item(st, out);
  if (e) return e; /* CONSTRAINT maps to DSYS_EEXIST for create */
  if (!*out) {
    if (mode != DSYS_STORE_W_UPDATE) return DSYS_EDB;
    int64_t v;
    e = cur_version(c, key, &v);
    if (e) return e;
    return v ? DSYS_ECONFLICT : DSYS_ENOTFOUND;
  }
  return 0;
}

static int sq_write(void *state, int mode, const char *key, const char *value,
                    const char *meta, int64_t exp, int64_t ev, int64_t now,
                    dsys_item **out) {
  sq *s = state;
  conn *c;
  int e = begin_write(s, &c);
  if (e) return e;
  e = write_locked(c, mode, key, value, meta, exp, ev, now, out);
  e = finish(s, c, e);
  if (e && *out) {
    free(*out);
    *out = NULL;
  }
  return e;
}

static int sq_del(void *state, const char *key, int64_t ev, int64_t now,
                  dsys_item **out) {
  sq *s = state;
  conn *c;
  int e = begin_write(s, &c);
  if (e) return e;
  dsys_item *it = NULL;
  e = del_expired(c, key, now);
  if (!e) {
    sqlite3_stmt *st = stmt(c, ST_DELETE);
    if (!st) e = DSYS_EDB;
    else {
      sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 2, ev);
      e = step_item(st, &it);
    }
  }
  if (!e && !it) {
    int64_t v;
    e = cur_version(c, key, &v);
    if (!e) e = v ? DSYS_ECONFLICT : DSYS_ENOTFOUND;
  }
  e = finish(s, c, e);
  if (!e && out) *out = it;
  else free(it);
  return e;
}

static int sq_incr(void *state, const char *key, int64_t delta, int64_t now,
                   dsys_item **out) {
  sq *s = state;
  conn *c;
  int e = begin_write(s, &c);
  if (e) return e;
  dsys_item *cur = NULL;
  e = del_expired(c, key, now);
  if (!e) {
    sqlite3_stmt *st = stmt(c, ST_GET_KEY);
    if (!st) e = DSYS_EDB;
    else {
      sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
      e = step_item(st, &cur);
    }
  }
  char num[32];
  if (!e) {
    int64_t v = 0, nv;
    if (cur) e = dsysi_store_parse_int(cur->value, &v);
    if (!e) e = dsysi_store_add(v, delta, &nv);
    if (!e) {
      snprintf(num, sizeof num, "%lld", (long long)nv);
      if (cur)
        e = write_locked(c, DSYS_STORE_W_UPDATE, key, num, NULL,
                         cur->expires_at, cur->version, now, out);
      else
        e = write_locked(c, DSYS_STORE_W_CREATE, key, num, "{}", 0, 0, now,
                         out);
    }
  }
  free(cur);
  e = finish(s, c, e);
  if (e && *out) {
    free(*out);
    *out = NULL;
  }
  return e;
}

static int sq_list(void *state, const char *prefix, const char *after,
                   size_t limit, int64_t now, dsys_item ***items,
                   size_t *count) {
  conn *c;
  int e = get_conn(state, &c);
  if (e) return e;
  sqlite3_stmt *st = stmt(c, ST_LIST);
  if (!st) return DSYS_EDB;
  dsys_item **arr = calloc(limit, sizeof *arr);
  if (!arr) return DSYS_ENOMEM;
  size_t n = 0, plen = strlen(prefix);
  sqlite3_bind_text(st, 1, prefix, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, after ? after : "", -1, SQLITE_STATIC);
  int rc;
  while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *k = (const char *)sqlite3_column_text(st, 1);
    if (!k || strncmp(k, prefix, plen)) {
      rc = SQLITE_DONE;
      break;
    }
    int64_t exp = sqlite3_column_int64(st, 7);
    if (exp > 0 && exp <= now) continue;
    if (!(arr[n] = row_item(st))) {
      e = DSYS_ENOMEM;
      break;
    }
    n++;
  }
  if (!e && n < limit && rc != SQLITE_DONE) e = err_of(rc);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (e) {
    dsys_item_list_free(arr, n);
    return e;
  }
  *items = arr;
  *count = n;
  return 0;
}

static int sq_purge(void *state, int64_t now, size_t limit, size_t *removed) {
  sq *s = state;
  conn *c;
  int e = begin_write(s, &c);
  if (e) return e;
  sqlite3_stmt *st = stmt(c, ST_PURGE);
  if (!st) e = DSYS_EDB;
  else {
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int64(st, 2, (int64_t)limit);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) e = err_of(rc);
    else *removed = (size_t)sqlite3_changes(c->db);
    sqlite3_reset(st);
  }
  return finish(s, c, e);
}

static const dsys_store_ops sqlite_ops = {
    .version = DSYS_STORE_OPS_VERSION,
    .name = "sqlite",
    .state_size = sizeof(sq),
    .open = sq_open,
    .close = sq_close,
    .get = sq_get,
    .write = sq_write,
    .del = sq_del,
    .incr = sq_incr,
    .list = sq_list,
    .purge = sq_purge,
};

const dsys_store_ops *dsys_store_ops_sqlite(void) { return &sqlite_ops; }
DSYSI_PLUGINS(store_sqlite) = {{"store", &sqlite_ops}, {0}};
