/*
 * SQLite store backend. Reads: one connection per thread (pthread key),
 * each with its own prepared statements. Writes: group commit
 * (core/group.h). Every write (put, create, update, delete, increment,
 * purge) becomes an operation; the writes that threads of the process make
 * at the same time run as one BEGIN IMMEDIATE transaction on the handle's
 * single writer connection, by whichever caller leads the group, and share
 * its commit (and at synchronous=FULL its fsync). SQLite serializes writers
 * anyway, and one writer connection keeps its page cache warm (a
 * connection whose cache another connection's commit made stale rereads
 * it). Each operation of a group of several runs inside its own savepoint,
 * so one that fails (a version conflict, an existing key) is undone alone
 * and the others commit; a caller returns after its group's commit, with
 * its own result.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/store.h>
#include "core/db.h"
#include "core/group.h"
#include "core/internal.h"
#include "core/plugin.h"
#include "state/store_int.h"

enum {
  ST_GET_KEY, ST_GET_ID, ST_BEGIN, ST_COMMIT, ST_ROLLBACK, ST_LOOK, ST_INSERT,
  ST_SET, ST_DEL_ID, ST_LIST, ST_PURGE, ST_SAVEPOINT, ST_RELEASE,
  ST_ROLLBACK_TO, ST_COUNT
};

#define COLS "id, key, value, metadata, version, created_at, updated_at, expires_at"

/* A write looks its key up once (ST_LOOK), decides its outcome (absent,
 * expired, version conflict) before it changes anything, then writes the
 * row by id and builds its result from what it knows: no RETURNING (SQLite
 * fills an ephemeral table for every execution of one) and no separate
 * delete of an expired row before every write. */
static const char *const sqls[ST_COUNT] = {
    [ST_GET_KEY] = "SELECT " COLS " FROM dsys_store_items WHERE key = ?1",
    [ST_GET_ID] = "SELECT " COLS " FROM dsys_store_items WHERE id = ?1",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_LOOK] = "SELECT id, version, created_at, expires_at, metadata "
                "FROM dsys_store_items WHERE key = ?1",
    [ST_INSERT] = "INSERT INTO dsys_store_items(key, value, metadata, "
                  "version, created_at, updated_at, expires_at) "
                  "VALUES(?1, ?2, ?3, 1, ?4, ?4, ?5)",
    [ST_SET] = "UPDATE dsys_store_items SET value = ?2, metadata = ?3, "
               "version = ?4, updated_at = ?5, expires_at = ?6 WHERE id = ?1",
    [ST_DEL_ID] = "DELETE FROM dsys_store_items WHERE id = ?1",
    [ST_LIST] = "SELECT " COLS " FROM dsys_store_items WHERE key >= ?1 AND "
                "key > ?2 ORDER BY key",
    [ST_PURGE] = "DELETE FROM dsys_store_items WHERE id IN (SELECT id FROM "
                 "dsys_store_items WHERE expires_at > 0 AND expires_at <= ?1 "
                 "LIMIT ?2)",
    [ST_SAVEPOINT] = "SAVEPOINT dsys_op",
    [ST_RELEASE] = "RELEASE dsys_op",
    [ST_ROLLBACK_TO] = "ROLLBACK TO dsys_op",
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
  conn *conns;
  dsysi_group group; /* the process's writes, one group at a time */
  conn *wconn;       /* the writer connection (used by the group's leader) */
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
  const char *k = (const char *)sqlite3_column_text(st, 1);
  const char *v = (const char *)sqlite3_column_text(st, 2);
  const char *m = (const char *)sqlite3_column_text(st, 3);
  if (!k || !v || !m) return NULL;
  return dsys_item_new(sqlite3_column_int64(st, 0), k, v, m,
                       sqlite3_column_int64(st, 4), sqlite3_column_int64(st, 5),
                       sqlite3_column_int64(st, 6), sqlite3_column_int64(st, 7));
}

static void run_group(void *ud, dsysi_group_op *first);

static int sq_open(void *state, const char *location,
                   const dsys_store_options *o, char *err, size_t errlen) {
  sq *s = state;
  if (!*location) return DSYS_EURL; /* "sqlite://" names no file */
  s->path = dsysi_strdup(location);
  if (!s->path) return DSYS_ENOMEM;
  s->full_sync = o->full_sync ? 1 : 0;
  pthread_mutex_init(&s->mu, NULL);
  dsysi_group_init(&s->group, 256, 1, run_group, s);
  if (pthread_key_create(&s->key, conn_dtor)) {
    dsysi_group_destroy(&s->group);
    pthread_mutex_destroy(&s->mu);
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
    dsysi_group_destroy(&s->group);
    pthread_mutex_destroy(&s->mu);
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
  dsysi_group_destroy(&s->group);
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

static int run(conn *c, int i) {
  sqlite3_stmt *st = stmt(c, i);
  if (!st) return DSYS_EDB;
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return (rc == SQLITE_DONE || rc == SQLITE_ROW) ? 0 : err_of(rc);
}

/* Step a bound write statement to its end and reset it. */
static int step_done(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE ? 0 : err_of(rc);
}

/* What a write found under its key (the group holds the write lock: it
 * cannot change before the write). */
typedef struct found {
  int64_t id; /* 0: absent, or expired (a write treats it as absent) */
  int64_t expired_id; /* an expired row still there, else 0 */
  int64_t version, created_at, expires_at;
  char *meta; /* its metadata, when asked for (malloc'd) */
} found;

static int look(conn *c, const char *key, int64_t now, int want_meta,
                found *f) {
  *f = (found){0};
  sqlite3_stmt *st = stmt(c, ST_LOOK);
  if (!st) return DSYS_EDB;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st), e = 0;
  if (rc == SQLITE_ROW) {
    int64_t id = sqlite3_column_int64(st, 0);
    f->expires_at = sqlite3_column_int64(st, 3);
    if (f->expires_at > 0 && f->expires_at <= now) {
      f->expired_id = id;
    } else {
      f->id = id;
      f->version = sqlite3_column_int64(st, 1);
      f->created_at = sqlite3_column_int64(st, 2);
      if (want_meta) {
        const char *m = (const char *)sqlite3_column_text(st, 4);
        if (!(f->meta = dsysi_strdup(m ? m : "{}"))) e = DSYS_ENOMEM;
      }
    }
  } else if (rc != SQLITE_DONE) {
    e = err_of(rc);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return e;
}

static int del_id(conn *c, int64_t id) {
  sqlite3_stmt *st = stmt(c, ST_DEL_ID);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  return step_done(st);
}

/* Insert a new row (replacing an expired one of the same key). *dirty is
 * set before the first change: the group then knows a failure may have
 * left part of this write behind (see run_group). */
static int insert_row(conn *c, const char *key, const char *value,
                      const char *meta, int64_t exp, int64_t now,
                      int64_t expired_id, int *dirty, dsys_item **out) {
  *dirty = 1;
  int e = expired_id ? del_id(c, expired_id) : 0;
  sqlite3_stmt *st = e ? NULL : stmt(c, ST_INSERT);
  if (e || !st) return e ? e : DSYS_EDB;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, meta, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, now);
  sqlite3_bind_int64(st, 5, exp);
  if ((e = step_done(st))) return e;
  *out = dsys_item_new(sqlite3_last_insert_rowid(c->db), key, value, meta, 1,
                       now, now, exp);
  return *out ? 0 : DSYS_ENOMEM;
}

/* Replace the value of the live row f (its next version). */
static int set_row(conn *c, const found *f, const char *key,
                   const char *value, const char *meta, int64_t exp,
                   int64_t now, int *dirty, dsys_item **out) {
  sqlite3_stmt *st = stmt(c, ST_SET);
  if (!st) return DSYS_EDB;
  *dirty = 1;
  sqlite3_bind_int64(st, 1, f->id);
  sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, meta, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, f->version + 1);
  sqlite3_bind_int64(st, 5, now);
  sqlite3_bind_int64(st, 6, exp);
  int e = step_done(st);
  if (e) return e;
  *out = dsys_item_new(f->id, key, value, meta, f->version + 1,
                       f->created_at, now, exp);
  return *out ? 0 : DSYS_ENOMEM;
}

/* put / create / update. meta NULL (update only): keep the row's. Every
 * refusal (existing key, missing key, stale version) is decided before
 * anything is written. */
static int write_locked(conn *c, int mode, const char *key, const char *value,
                        const char *meta, int64_t exp, int64_t ev,
                        int64_t now, int *dirty, dsys_item **out) {
  found f;
  int e = look(c, key, now, meta == NULL, &f);
  if (e) return e;
  if (mode == DSYS_STORE_W_CREATE && f.id) e = DSYS_EEXIST;
  else if (mode == DSYS_STORE_W_UPDATE && !f.id) e = DSYS_ENOTFOUND;
  else if (mode == DSYS_STORE_W_UPDATE && ev && f.version != ev)
    e = DSYS_ECONFLICT;
  else if (!f.id)
    e = insert_row(c, key, value, meta ? meta : "{}", exp, now, f.expired_id,
                   dirty, out);
  else
    e = set_row(c, &f, key, value, meta ? meta : f.meta, exp, now, dirty,
                out);
  free(f.meta);
  return e;
}

/* The live row of key, whole (NULL: absent or expired; *expired_id: the
 * id of an expired row still there, else 0). */
static int get_live(conn *c, const char *key, int64_t now, dsys_item **out,
                    int64_t *expired_id) {
  *out = NULL;
  *expired_id = 0;
  sqlite3_stmt *st = stmt(c, ST_GET_KEY);
  if (!st) return DSYS_EDB;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st), e = 0;
  if (rc == SQLITE_ROW) {
    int64_t exp = sqlite3_column_int64(st, 7);
    if (exp > 0 && exp <= now) *expired_id = sqlite3_column_int64(st, 0);
    else if (!(*out = row_item(st))) e = DSYS_ENOMEM;
  } else if (rc != SQLITE_DONE) {
    e = err_of(rc);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return e;
}

static int del_locked(conn *c, const char *key, int64_t ev, int64_t now,
                      int *dirty, dsys_item **out) {
  int64_t expired;
  int e = get_live(c, key, now, out, &expired);
  if (e) return e;
  if (!*out) return DSYS_ENOTFOUND;
  if (ev && (*out)->version != ev) e = DSYS_ECONFLICT;
  else {
    *dirty = 1;
    e = del_id(c, (*out)->id);
  }
  if (e) {
    free(*out);
    *out = NULL;
  }
  return e;
}

static int incr_locked(conn *c, const char *key, int64_t delta, int64_t now,
                       int *dirty, dsys_item **out) {
  dsys_item *cur = NULL;
  int64_t expired;
  int e = get_live(c, key, now, &cur, &expired);
  int64_t v = 0, nv;
  char num[32];
  if (!e && cur) e = dsysi_store_parse_int(cur->value, &v);
  if (!e) e = dsysi_store_add(v, delta, &nv);
  if (!e) {
    snprintf(num, sizeof num, "%lld", (long long)nv);
    if (cur) {
      found f = {.id = cur->id, .version = cur->version,
                 .created_at = cur->created_at};
      e = set_row(c, &f, key, num, cur->metadata, cur->expires_at, now,
                  dirty, out);
    } else {
      e = insert_row(c, key, num, "{}", 0, now, expired, dirty, out);
    }
  }
  free(cur);
  return e;
}

static int purge_locked(conn *c, int64_t now, size_t limit, int *dirty,
                        size_t *removed) {
  sqlite3_stmt *st = stmt(c, ST_PURGE);
  if (!st) return DSYS_EDB;
  *dirty = 1;
  sqlite3_bind_int64(st, 1, now);
  sqlite3_bind_int64(st, 2, (int64_t)limit);
  int rc = sqlite3_step(st);
  int e = 0;
  if (rc != SQLITE_DONE) e = err_of(rc);
  else *removed = (size_t)sqlite3_changes(c->db);
  sqlite3_reset(st);
  return e;
}

/* ---- group commit of the writes ---- */

enum { W_WRITE, W_DEL, W_INCR, W_PURGE, W_MANY };

typedef struct wop {
  dsysi_group_op g; /* first: the group links ops through it */
  int kind, mode;
  const char *key, *value, *meta;
  int64_t exp, ev, now, delta;
  size_t limit, removed;
  dsys_item *item; /* result (write, incr; delete when wanted) */
  const dsys_store_entry *ents; /* put_many: n entries, their expiries, */
  const int64_t *exps;          /* their items (results) and the index of */
  dsys_item **items;            /* the one that failed */
  size_t n, failed;
  int rc;
  int dirty; /* it changed something before it failed (run_group) */
} wop;

static int run_wop(conn *c, wop *op) {
  op->dirty = 0;
  switch (op->kind) {
  case W_WRITE:
    return write_locked(c, op->mode, op->key, op->value, op->meta, op->exp,
                        op->ev, op->now, &op->dirty, &op->item);
  case W_DEL:
    return del_locked(c, op->key, op->ev, op->now, &op->dirty, &op->item);
  case W_INCR:
    return incr_locked(c, op->key, op->delta, op->now, &op->dirty, &op->item);
  case W_MANY:
    /* one op, so one savepoint: a failure undoes every entry (dirty stays
     * set from the first change on) */
    for (op->failed = 0; op->failed < op->n; op->failed++) {
      const dsys_store_entry *en = &op->ents[op->failed];
      int e = write_locked(c, DSYS_STORE_W_PUT, en->key, en->value,
                           en->metadata, op->exps[op->failed], 0, op->now,
                           &op->dirty, &op->items[op->failed]);
      if (e) return e;
    }
    return 0;
  default:
    return purge_locked(c, op->now, op->limit, &op->dirty, &op->removed);
  }
}

/* A failed op keeps no result (its items, if any, were never committed). */
static void drop_result(wop *op) {
  free(op->item);
  op->item = NULL;
  op->removed = 0;
  for (size_t i = 0; op->items && i < op->n; i++) {
    free(op->items[i]);
    op->items[i] = NULL;
  }
}

static void fail_op(wop *op, int e) {
  op->rc = e;
  drop_result(op);
}

/* Run the group's ops in the open transaction. Without savepoints (fast):
 * an op that refuses (conflict, existing or missing key, not a number)
 * has changed nothing, so the others go on; returns 1 when an op failed
 * after it had changed something, which only the whole transaction's
 * rollback can undo. With savepoints (each op alone, undone alone): the
 * fallback for such a group. *e gets a failure of the whole group. */
static int run_ops(conn *c, dsysi_group_op *first, int savepoints,
                   int *committed, int *e) {
  *committed = 0;
  for (dsysi_group_op *g = first; g && !*e; g = g->next) {
    wop *op = (wop *)g;
    if (savepoints && (*e = run(c, ST_SAVEPOINT))) break;
    op->rc = run_wop(c, op);
    if (op->rc) drop_result(op);
    /* SQLite rolls the whole transaction back itself on some errors (I/O,
     * full disk, out of memory): then nothing of the group stands. */
    if (sqlite3_get_autocommit(c->db)) {
      *e = op->rc ? op->rc : DSYS_EDB;
      break;
    }
    if (!savepoints && op->rc && op->dirty) return 1;
    if (!op->rc) (*committed)++;
    if (savepoints && op->rc) *e = run(c, ST_ROLLBACK_TO);
    if (savepoints && !*e) *e = run(c, ST_RELEASE);
  }
  return 0;
}

static void run_group(void *ud, dsysi_group_op *first) {
  sq *s = ud;
  int e = 0;
  if (!s->wconn) { /* only the leader of the one running group gets here */
    char err[200];
    e = conn_new(s, &s->wconn, err, sizeof err);
    if (e) dsysi_log(DSYS_LOG_ERROR, "store", "sqlite open: %s", err);
  }
  conn *c = s->wconn;
  if (!e) e = run(c, ST_BEGIN);
  if (e) {
    for (dsysi_group_op *g = first; g; g = g->next) fail_op((wop *)g, e);
    return;
  }
  int committed;
  /* One op alone needs no savepoint: the transaction is its own. */
  if (run_ops(c, first, 0, &committed, &e) && first->next) {
    /* an op failed half-done: undo the group, run it again op by op */
    run(c, ST_ROLLBACK);
    for (dsysi_group_op *g = first; g; g = g->next) fail_op((wop *)g, 0);
    e = run(c, ST_BEGIN);
    if (!e) run_ops(c, first, 1, &committed, &e);
  } else if (!e && first->next == NULL && ((wop *)first)->rc) {
    committed = 0; /* the single op failed: roll its changes back */
  }
  if (!e && committed) {
    e = run(c, ST_COMMIT);
    if (!e) return;
  }
  /* Nothing to commit (every op failed alone), or the group failed: no op
   * of it is acknowledged, each caller gets its error or the group's. */
  if (!sqlite3_get_autocommit(c->db)) run(c, ST_ROLLBACK);
  if (!e) return;
  for (dsysi_group_op *g = first; g; g = g->next) {
    wop *op = (wop *)g;
    if (!op->rc || op->item || op->removed) fail_op(op, op->rc ? op->rc : e);
  }
}

/* Run one write as part of a group; returns its own result. */
static int execute(sq *s, wop *op) {
  dsysi_group_execute(&s->group, &op->g, &op->g);
  return op->rc;
}

static int sq_write(void *state, int mode, const char *key, const char *value,
                    const char *meta, int64_t exp, int64_t ev, int64_t now,
                    dsys_item **out) {
  wop op = {.kind = W_WRITE, .mode = mode, .key = key, .value = value,
            .meta = meta, .exp = exp, .ev = ev, .now = now};
  int e = execute(state, &op);
  *out = op.item;
  return e;
}

static int sq_del(void *state, const char *key, int64_t ev, int64_t now,
                  dsys_item **out) {
  wop op = {.kind = W_DEL, .key = key, .ev = ev, .now = now};
  int e = execute(state, &op);
  if (out) *out = op.item;
  else free(op.item);
  return e;
}

static int sq_incr(void *state, const char *key, int64_t delta, int64_t now,
                   dsys_item **out) {
  wop op = {.kind = W_INCR, .key = key, .delta = delta, .now = now};
  int e = execute(state, &op);
  *out = op.item;
  return e;
}

static int sq_put_many(void *state, const dsys_store_entry *ents, size_t n,
                       const int64_t *exps, int64_t now, dsys_item **items,
                       size_t *failed) {
  /* failed stays n unless an entry fails (a failed BEGIN or commit) */
  wop op = {.kind = W_MANY, .ents = ents, .exps = exps, .n = n, .now = now,
            .items = items, .failed = n};
  int e = execute(state, &op);
  if (e) *failed = op.failed;
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
  wop op = {.kind = W_PURGE, .now = now, .limit = limit};
  int e = execute(state, &op);
  *removed = op.removed;
  return e;
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
    .put_many = sq_put_many,
};

const dsys_store_ops *dsys_store_ops_sqlite(void) { return &sqlite_ops; }

dsysi_group *dsysi_store_sqlite_group(dsys_store *st) {
  if (dsysi_store_ops(st) != &sqlite_ops) return NULL;
  sq *s = dsysi_store_state(st);
  return &s->group;
}
DSYSI_PLUGINS(store_sqlite) = {{"store", &sqlite_ops}, {0}};
