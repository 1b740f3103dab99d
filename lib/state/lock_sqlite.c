/*
 * SQLite lock backend ("sqlite:///path"): a table dsys_locks in the file,
 * shared by every process that opens it. Each op is one statement, atomic
 * under SQLite's write lock; a name's row stays after release so its token
 * keeps growing. One connection per handle behind a mutex: lock traffic
 * is light, and one connection keeps the statements prepared once.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include <distsys/lock.h>
#include "core/db.h"
#include "core/internal.h"
#include "core/plugin.h"

enum { L_ACQUIRE, L_HELD, L_RENEW, L_RELEASE, L_COUNT };

static const char *const sql[L_COUNT] = {
    /* take it when free or ended; RETURNING gives no row when it runs */
    [L_ACQUIRE] = "INSERT INTO dsys_locks(name, owner, token, expires_at) VALUES(?1, ?2, 1, ?4) "
                  "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, token = token + 1, "
                  "expires_at = excluded.expires_at WHERE owner IS NULL OR expires_at <= ?3 "
                  "RETURNING token",
    [L_HELD] = "SELECT owner, token, expires_at FROM dsys_locks WHERE name = ?1 "
               "AND owner IS NOT NULL AND expires_at > ?2",
    [L_RENEW] = "UPDATE dsys_locks SET expires_at = ?4 WHERE name = ?1 AND owner = ?2 "
                "AND token = ?3",
    [L_RELEASE] = "UPDATE dsys_locks SET owner = NULL, expires_at = 0 WHERE name = ?1 "
                  "AND owner = ?2 AND token = ?3",
};

static const char *const migrations[] = {
    "CREATE TABLE dsys_locks(name TEXT PRIMARY KEY, owner TEXT, "
    "token INTEGER NOT NULL, expires_at INTEGER NOT NULL)",
};

typedef struct sl {
  pthread_mutex_t mu;
  sqlite3 *db;
  sqlite3_stmt *st[L_COUNT];
} sl;

static int s_open(void *state, const char *location, char *err, size_t errlen) {
  sl *s = state;
  if (!*location) return DSYS_EURL;
  pthread_mutex_init(&s->mu, NULL);
  int e = dsysi_db_open(location, 0, &s->db, err, errlen);
  if (!e) e = dsysi_db_migrate(s->db, "lock", migrations, 1, err, errlen);
  for (int i = 0; !e && i < L_COUNT; i++)
    if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
        SQLITE_OK) {
      snprintf(err, errlen, "%s", sqlite3_errmsg(s->db));
      e = DSYS_EDB;
    }
  if (e) {
    for (int i = 0; i < L_COUNT; i++) sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
  }
  return e;
}

static void s_close(void *state) {
  sl *s = state;
  for (int i = 0; i < L_COUNT; i++) sqlite3_finalize(s->st[i]);
  sqlite3_close(s->db);
  pthread_mutex_destroy(&s->mu);
}

/* Bind name, owner-or-now, and two integers as the statement's ?1..?4. */
static sqlite3_stmt *bind(sl *s, int which, const char *name, const char *owner, int64_t a,
                          int64_t b) {
  sqlite3_stmt *st = s->st[which];
  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  if (owner) {
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, a);
    sqlite3_bind_int64(st, 4, b);
  } else {
    sqlite3_bind_int64(st, 2, a);
  }
  return st;
}

static void held_info(sqlite3_stmt *st, dsys_lock_info *out) {
  if (!out) return;
  snprintf(out->owner, sizeof out->owner, "%s", (const char *)sqlite3_column_text(st, 0));
  out->token = sqlite3_column_int64(st, 1);
  out->expires_at = sqlite3_column_int64(st, 2);
}

static int s_acquire(void *state, const char *name, const char *owner, int64_t now,
                     int64_t ttl_ms, int64_t *token, dsys_lock_info *held) {
  sl *s = state;
  pthread_mutex_lock(&s->mu);
  sqlite3_stmt *st = bind(s, L_ACQUIRE, name, owner, now, now + ttl_ms);
  int rc = sqlite3_step(st), e;
  if (rc == SQLITE_ROW) {
    *token = sqlite3_column_int64(st, 0);
    e = sqlite3_step(st) == SQLITE_DONE ? 0 : DSYS_EDB;
  } else if (rc == SQLITE_DONE) { /* the conflict's WHERE failed: a running lease */
    e = DSYS_EBUSY;
    if (held) {
      sqlite3_stmt *h = bind(s, L_HELD, name, NULL, now, 0);
      if (sqlite3_step(h) == SQLITE_ROW) held_info(h, held);
      sqlite3_reset(h);
    }
  } else {
    e = dsysi_db_err(rc);
  }
  sqlite3_reset(st);
  pthread_mutex_unlock(&s->mu);
  return e;
}

/* renew and release: one UPDATE that must change exactly the holder's row */
static int s_update(sl *s, int which, const char *name, const char *owner, int64_t token,
                    int64_t expires) {
  pthread_mutex_lock(&s->mu);
  sqlite3_stmt *st = bind(s, which, name, owner, token, expires);
  int rc = sqlite3_step(st);
  int e = rc != SQLITE_DONE ? dsysi_db_err(rc) : sqlite3_changes(s->db) == 1 ? 0 : DSYS_ELEASE;
  sqlite3_reset(st);
  pthread_mutex_unlock(&s->mu);
  return e;
}

static int s_renew(void *state, const char *name, const char *owner, int64_t token, int64_t now,
                   int64_t ttl_ms) {
  return s_update(state, L_RENEW, name, owner, token, now + ttl_ms);
}

static int s_release(void *state, const char *name, const char *owner, int64_t token) {
  return s_update(state, L_RELEASE, name, owner, token, 0);
}

static int s_holder(void *state, const char *name, int64_t now, dsys_lock_info *out) {
  sl *s = state;
  pthread_mutex_lock(&s->mu);
  sqlite3_stmt *st = bind(s, L_HELD, name, NULL, now, 0);
  int rc = sqlite3_step(st);
  int e = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? DSYS_ENOTFOUND : dsysi_db_err(rc);
  if (!e) held_info(st, out);
  sqlite3_reset(st);
  pthread_mutex_unlock(&s->mu);
  return e;
}

static const dsys_lock_ops sqlite_ops = {
    .version = DSYS_LOCK_OPS_VERSION,
    .name = "sqlite",
    .state_size = sizeof(sl),
    .open = s_open,
    .close = s_close,
    .acquire = s_acquire,
    .renew = s_renew,
    .release = s_release,
    .holder = s_holder,
};

const dsys_lock_ops *dsys_lock_ops_sqlite(void) { return &sqlite_ops; }
DSYSI_PLUGINS(lock_sqlite) = {{"lock", &sqlite_ops}, {0}};
