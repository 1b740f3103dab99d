/* Registry backend "sqlite": one database file shared by every handle and
 * process on the host. The change index is a counter row; the change log a
 * table pruned to the newest DSYSI_REGISTRY_LOG_KEEP rows. Writers take
 * BEGIN IMMEDIATE, so index bumps from several processes never collide. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/internal.h"
#include "core/db.h"
#include "core/plugin.h"
#include "resilience/registry_int.h"

typedef struct sq_state {
  sqlite3 *db;
} sq_state;

static const char *const steps[] = {
    "CREATE TABLE registry_instances("
    " id TEXT PRIMARY KEY, type TEXT NOT NULL, name TEXT NOT NULL,"
    " url TEXT NOT NULL, tags TEXT NOT NULL, metadata TEXT NOT NULL,"
    " weight INTEGER NOT NULL, healthy INTEGER NOT NULL,"
    " registered_ms INTEGER NOT NULL, heartbeat_ms INTEGER NOT NULL);"
    "CREATE INDEX registry_instances_type ON registry_instances(type, id);"
    "CREATE INDEX registry_instances_hb ON registry_instances(heartbeat_ms);"
    "CREATE TABLE registry_changes(idx INTEGER PRIMARY KEY,"
    " kind INTEGER NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL);"
    "CREATE TABLE registry_meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
    "INSERT INTO registry_meta VALUES('index', 0);"};

static int sq_open(void *vst, const char *target, char *err, size_t errlen) {
  sq_state *s = vst;
  if (!target || !*target) {
    if (err && errlen) snprintf(err, errlen, "sqlite registry needs a file path");
    return DSYS_EINVAL;
  }
  int rc = dsysi_db_open(target, 0, &s->db, err, errlen);
  if (rc) return rc;
  rc = dsysi_db_migrate(s->db, "registry", steps, 1, err, errlen);
  if (rc) {
    sqlite3_close(s->db);
    s->db = NULL;
  }
  return rc;
}

static void sq_close(void *vst) {
  sq_state *s = vst;
  sqlite3_close(s->db);
}

static int prep(sq_state *s, const char *sql, sqlite3_stmt **st) {
  int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
  if (rc != SQLITE_OK) {
    dsysi_log(DSYS_LOG_ERROR, "registry", "sqlite prepare: %s", sqlite3_errmsg(s->db));
    return dsysi_db_err(rc) ? dsysi_db_err(rc) : DSYS_EDB;
  }
  return 0;
}

static int step_done(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : (dsysi_db_err(rc) ? dsysi_db_err(rc) : DSYS_EDB);
}

static int begin(sq_state *s) { return dsysi_db_exec(s->db, "BEGIN IMMEDIATE", NULL, 0); }

static int end(sq_state *s, int rc) {
  if (rc) {
    dsysi_db_exec(s->db, "ROLLBACK", NULL, 0);
    return rc;
  }
  rc = dsysi_db_exec(s->db, "COMMIT", NULL, 0);
  if (rc) dsysi_db_exec(s->db, "ROLLBACK", NULL, 0);
  return rc;
}

/* Inside a transaction: bump the index and log one change. */
static int record(sq_state *s, int kind, const char *id, const char *type) {
  sqlite3_stmt *st;
  int rc = prep(s, "UPDATE registry_meta SET v = v + 1 WHERE k = 'index' RETURNING v", &st);
  if (rc) return rc;
  int64_t idx = -1;
  if (sqlite3_step(st) == SQLITE_ROW) idx = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  if (idx < 0) return DSYS_EDB;
  if ((rc = prep(s, "INSERT INTO registry_changes(idx, kind, id, type) VALUES(?,?,?,?)", &st)))
    return rc;
  sqlite3_bind_int64(st, 1, idx);
  sqlite3_bind_int(st, 2, kind);
  sqlite3_bind_text(st, 3, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 4, type, -1, SQLITE_TRANSIENT);
  if ((rc = step_done(st))) return rc;
  if ((rc = prep(s, "DELETE FROM registry_changes WHERE idx <= ?", &st))) return rc;
  sqlite3_bind_int64(st, 1, idx - DSYSI_REGISTRY_LOG_KEEP);
  return step_done(st);
}

static int sq_put(void *vst, const dsys_instance *in, int64_t now) {
  sq_state *s = vst;
  char *tags = dsysi_registry_tags_json(in);
  if (!tags) return DSYS_ENOMEM;
  int rc = begin(s);
  if (rc) {
    free(tags);
    return rc;
  }
  sqlite3_stmt *st;
  rc = prep(s, "INSERT OR REPLACE INTO registry_instances(id, type, name, url, tags,"
               " metadata, weight, healthy, registered_ms, heartbeat_ms)"
               " VALUES(?,?,?,?,?,?,?,1,?,?)", &st);
  if (!rc) {
    sqlite3_bind_text(st, 1, in->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, in->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, in->url, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, tags, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, in->metadata, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, in->weight);
    sqlite3_bind_int64(st, 8, now);
    sqlite3_bind_int64(st, 9, now);
    rc = step_done(st);
  }
  if (!rc) rc = record(s, DSYS_REG_REGISTERED, in->id, in->type);
  free(tags);
  return end(s, rc);
}

/* Inside a transaction: type and healthy flag of id. */
static int lookup_row(sq_state *s, const char *id, char **type, int *healthy) {
  sqlite3_stmt *st;
  int rc = prep(s, "SELECT type, healthy FROM registry_instances WHERE id = ?", &st);
  if (rc) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  int sr = sqlite3_step(st);
  if (sr == SQLITE_ROW) {
    *type = strdup((const char *)sqlite3_column_text(st, 0));
    *healthy = sqlite3_column_int(st, 1);
    rc = *type ? 0 : DSYS_ENOMEM;
  } else {
    rc = sr == SQLITE_DONE ? DSYS_ENOTFOUND : DSYS_EDB;
  }
  sqlite3_finalize(st);
  return rc;
}

static int sq_heartbeat(void *vst, const char *id, int64_t now) {
  sq_state *s = vst;
  int rc = begin(s);
  if (rc) return rc;
  char *type = NULL;
  int healthy = 0;
  rc = lookup_row(s, id, &type, &healthy);
  sqlite3_stmt *st;
  if (!rc) rc = prep(s, "UPDATE registry_instances SET heartbeat_ms = ?, healthy = 1 WHERE id = ?", &st);
  if (!rc) {
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    rc = step_done(st);
  }
  if (!rc && !healthy) rc = record(s, DSYS_REG_HEALTHY, id, type);
  free(type);
  return end(s, rc);
}

static int delete_row(sq_state *s, const char *id) {
  sqlite3_stmt *st;
  int rc = prep(s, "DELETE FROM registry_instances WHERE id = ?", &st);
  if (rc) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  return step_done(st);
}

static int sq_remove(void *vst, const char *id) {
  sq_state *s = vst;
  int rc = begin(s);
  if (rc) return rc;
  char *type = NULL;
  int healthy;
  rc = lookup_row(s, id, &type, &healthy);
  if (!rc) rc = delete_row(s, id);
  if (!rc) rc = record(s, DSYS_REG_DEREGISTERED, id, type);
  free(type);
  return end(s, rc);
}

#define COLS "id, type, name, url, tags, metadata, weight, healthy, registered_ms, heartbeat_ms"

/* Row source over a prepared SELECT COLS (dsysi_registry_rows). */
static int next_row(void *src, const char **col) {
  sqlite3_stmt *st = src;
  int sr = sqlite3_step(st);
  if (sr == SQLITE_DONE) return 0;
  if (sr != SQLITE_ROW) return dsysi_db_err(sr) ? dsysi_db_err(sr) : DSYS_EDB;
  for (int i = 0; i < DSYSI_REGISTRY_NCOLS; i++) col[i] = (const char *)sqlite3_column_text(st, i);
  return 1;
}

/* Read rows of a prepared SELECT COLS into one instance block. */
static int read_rows(sqlite3_stmt *st, dsys_instance **out, size_t *n) {
  int rc = dsysi_registry_rows(next_row, st, out, n);
  sqlite3_finalize(st);
  return rc;
}

static int sq_get(void *vst, const char *id, dsys_instance **out) {
  sq_state *s = vst;
  sqlite3_stmt *st;
  int rc = prep(s, "SELECT " COLS " FROM registry_instances WHERE id = ?", &st);
  if (rc) return rc;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  size_t n = 0;
  dsys_instance *v = NULL;
  rc = read_rows(st, &v, &n);
  if (!rc && n == 0) rc = DSYS_ENOTFOUND;
  if (!rc) *out = v;
  return rc;
}

static int sq_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  sq_state *s = vst;
  sqlite3_stmt *st;
  int rc = prep(s, type ? "SELECT " COLS " FROM registry_instances WHERE type = ? ORDER BY id"
                        : "SELECT " COLS " FROM registry_instances ORDER BY id", &st);
  if (rc) return rc;
  if (type) sqlite3_bind_text(st, 1, type, -1, SQLITE_TRANSIENT);
  return read_rows(st, out, n);
}

/* Inside a transaction: apply one expiry rule to every matching row. */
static int expire_rule(sq_state *s, const char *select_sql, int64_t before, int kind) {
  sqlite3_stmt *st;
  int rc = prep(s, select_sql, &st);
  if (rc) return rc;
  sqlite3_bind_int64(st, 1, before);
  char **ids = NULL, **types = NULL;
  size_t n = 0, cap = 0;
  int sr;
  while ((sr = sqlite3_step(st)) == SQLITE_ROW && !rc) {
    size_t cap_types = cap; /* both arrays grow alike; cap moves last */
    if (dsysi_grow(&types, &cap_types, n + 1, sizeof *types, 8) ||
        dsysi_grow(&ids, &cap, n + 1, sizeof *ids, 8)) {
      rc = DSYS_ENOMEM;
      break;
    }
    ids[n] = strdup((const char *)sqlite3_column_text(st, 0));
    types[n] = strdup((const char *)sqlite3_column_text(st, 1));
    n++;
    if (!ids[n - 1] || !types[n - 1]) rc = DSYS_ENOMEM;
  }
  sqlite3_finalize(st);
  for (size_t i = 0; i < n && !rc; i++) {
    if (kind == DSYS_REG_REAPED) {
      rc = delete_row(s, ids[i]);
    } else {
      rc = prep(s, "UPDATE registry_instances SET healthy = 0 WHERE id = ?", &st);
      if (!rc) {
        sqlite3_bind_text(st, 1, ids[i], -1, SQLITE_STATIC);
        rc = step_done(st);
      }
    }
    if (!rc) rc = record(s, kind, ids[i], types[i]);
  }
  for (size_t i = 0; i < n; i++) {
    free(ids[i]);
    free(types[i]);
  }
  free(ids);
  free(types);
  return rc;
}

static int sq_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  sq_state *s = vst;
  /* cheap read first: most sweeps find nothing and take no write lock */
  sqlite3_stmt *st;
  int rc = prep(s, "SELECT EXISTS(SELECT 1 FROM registry_instances WHERE heartbeat_ms < ?"
                   " AND (healthy = 1 OR heartbeat_ms < ?))", &st);
  if (rc) return rc;
  sqlite3_bind_int64(st, 1, unhealthy_before);
  sqlite3_bind_int64(st, 2, reap_before);
  int any = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  if (!any) return 0;
  if ((rc = begin(s))) return rc;
  rc = expire_rule(s, "SELECT id, type FROM registry_instances WHERE heartbeat_ms < ? ORDER BY id",
                   reap_before, DSYS_REG_REAPED);
  if (!rc)
    rc = expire_rule(s, "SELECT id, type FROM registry_instances WHERE healthy = 1 AND"
                        " heartbeat_ms < ? ORDER BY id", unhealthy_before, DSYS_REG_UNHEALTHY);
  return end(s, rc);
}

static int sq_expire_ids(void *vst, const dsys_registry_expiry *v, size_t n) {
  sq_state *s = vst;
  int rc = begin(s);
  if (rc) return rc;
  for (size_t i = 0; i < n && !rc; i++) {
    char *type = NULL;
    int healthy = 0;
    rc = lookup_row(s, v[i].id, &type, &healthy);
    if (rc == DSYS_ENOTFOUND) { /* gone meanwhile */
      rc = 0;
      continue;
    }
    sqlite3_stmt *st;
    if (!rc && (v[i].reap || healthy))
      rc = prep(s, v[i].reap ? "DELETE FROM registry_instances WHERE id = ? AND heartbeat_ms = ?"
                             : "UPDATE registry_instances SET healthy = 0 WHERE id = ? AND heartbeat_ms = ?",
                &st);
    else
      st = NULL;
    if (!rc && st) {
      sqlite3_bind_text(st, 1, v[i].id, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 2, v[i].heartbeat_ms);
      rc = step_done(st);
      /* no row changed: a heartbeat came since the caller read it */
      if (!rc && sqlite3_changes(s->db) > 0)
        rc = record(s, v[i].reap ? DSYS_REG_REAPED : DSYS_REG_UNHEALTHY, v[i].id, type);
    }
    free(type);
  }
  return end(s, rc);
}

static int sq_index(void *vst, uint64_t *out) {
  sq_state *s = vst;
  sqlite3_stmt *st;
  int rc = prep(s, "SELECT v FROM registry_meta WHERE k = 'index'", &st);
  if (rc) return rc;
  int sr = sqlite3_step(st);
  if (sr == SQLITE_ROW) *out = (uint64_t)sqlite3_column_int64(st, 0);
  else rc = dsysi_db_err(sr) ? dsysi_db_err(sr) : DSYS_EDB;
  sqlite3_finalize(st);
  return rc;
}

static int sq_changes(void *vst, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  sq_state *s = vst;
  /* one read transaction so index, oldest kept row and rows agree */
  int rc = dsysi_db_exec(s->db, "BEGIN", NULL, 0);
  if (rc) return rc;
  uint64_t idx = 0;
  rc = sq_index(s, &idx);
  sqlite3_stmt *st = NULL;
  if (!rc && idx > after) {
    rc = prep(s, "SELECT min(idx) FROM registry_changes", &st);
    if (!rc) {
      int64_t oldest = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL
                           ? sqlite3_column_int64(st, 0) : (int64_t)idx + 1;
      sqlite3_finalize(st);
      if ((uint64_t)oldest > after + 1) rc = DSYS_ERANGE;
    }
    if (!rc) rc = prep(s, "SELECT idx, kind, id, type FROM registry_changes WHERE idx > ? ORDER BY idx", &st);
    if (!rc) {
      sqlite3_bind_int64(st, 1, (int64_t)after);
      int sr;
      while ((sr = sqlite3_step(st)) == SQLITE_ROW) {
        dsys_registry_change c = {.index = (uint64_t)sqlite3_column_int64(st, 0),
                                  .kind = sqlite3_column_int(st, 1),
                                  .id = (const char *)sqlite3_column_text(st, 2),
                                  .type = (const char *)sqlite3_column_text(st, 3)};
        fn(ctx, &c);
      }
      if (sr != SQLITE_DONE) rc = DSYS_EDB;
      sqlite3_finalize(st);
    }
  }
  dsysi_db_exec(s->db, "COMMIT", NULL, 0);
  return rc;
}

static const dsys_registry_ops sqlite_ops = {
    .version = DSYS_REGISTRY_OPS_VERSION,
    .name = "sqlite",
    .state_size = sizeof(sq_state),
    .open = sq_open,
    .close = sq_close,
    .put = sq_put,
    .heartbeat = sq_heartbeat,
    .remove = sq_remove,
    .get = sq_get,
    .list = sq_list,
    .expire = sq_expire,
    .index = sq_index,
    .changes = sq_changes,
    .expire_ids = sq_expire_ids,
};
DSYSI_PLUGINS(registry_sqlite) = {{"registry", &sqlite_ops}, {0}};
