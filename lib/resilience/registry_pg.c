/*
 * Registry backend "postgresql" (alias "postgres"): the tables of the
 * sqlite backend on a PostgreSQL server shared by every host. Each write
 * is one statement: the change it makes, the bump of the index counter row
 * and the change log rows are data-modifying CTEs of that statement. The
 * counter row's lock orders the writers, so change indexes are assigned in
 * commit order and a reader never sees index N without every change up to
 * N (a sequence would not give that).
 *
 * Watches: each write that records changes also sends NOTIFY dsys_registry
 * (one per statement, the new index as payload). A thread per handle
 * LISTENs on one pooled connection and tells the generic layer
 * (env.changed), which reads the change log; the generic layer's sweep
 * (every second by default) polls the same log, the fallback when a
 * notification is lost with a connection.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/internal.h"
#include "core/pg.h"
#include "core/plugin.h"
#include "resilience/registry_int.h"

#define STR_(x) #x
#define STR(x) STR_(x)

static const char *const steps[] = {
    "CREATE TABLE registry_instances("
    " id text PRIMARY KEY, type text NOT NULL, name text NOT NULL,"
    " url text NOT NULL, tags text NOT NULL, metadata text NOT NULL,"
    " weight bigint NOT NULL, healthy integer NOT NULL,"
    " registered_ms bigint NOT NULL, heartbeat_ms bigint NOT NULL);"
    "CREATE INDEX registry_instances_type ON registry_instances(type, id);"
    "CREATE INDEX registry_instances_hb ON registry_instances(heartbeat_ms);"
    "CREATE TABLE registry_changes(idx bigint PRIMARY KEY,"
    " kind integer NOT NULL, id text NOT NULL, type text NOT NULL);"
    "CREATE TABLE registry_meta(k text PRIMARY KEY, v bigint NOT NULL);"
    "INSERT INTO registry_meta VALUES('index', 0);"};

/* The tail of every writing statement, after a CTE ch(id, type, kind, ord)
 * of the rows it changed: one index per row (in ord, id order), the log
 * rows, the pruning of the log, and the notification. The statement
 * returns one row (the count) when it changed something, none otherwise. */
#define RECORD                                                                    \
  ", bump AS (UPDATE registry_meta SET v = v + (SELECT count(*) FROM ch)"        \
  " WHERE k = 'index' AND EXISTS(SELECT 1 FROM ch) RETURNING v),"                \
  " logged AS (INSERT INTO registry_changes(idx, kind, id, type)"                \
  " SELECT bump.v - n.c + row_number() OVER (ORDER BY ch.ord, ch.id), ch.kind,"  \
  " ch.id, ch.type FROM ch, bump, (SELECT count(*) AS c FROM ch) n),"            \
  " pruned AS (DELETE FROM registry_changes WHERE idx <= (SELECT v FROM bump) - " \
  STR(DSYSI_REGISTRY_LOG_KEEP) ")"                                               \
  " SELECT (SELECT count(*) FROM ch), pg_notify('dsys_registry', bump.v::text) FROM bump"

/* change kinds written as literals in the statements below */
_Static_assert(DSYS_REG_REGISTERED == 0 && DSYS_REG_DEREGISTERED == 1 &&
                   DSYS_REG_UNHEALTHY == 2 && DSYS_REG_HEALTHY == 3 && DSYS_REG_REAPED == 4,
               "change kinds");

#define COLS "id, type, name, url, tags, metadata, weight, healthy, registered_ms, heartbeat_ms"

static const dsysi_pg_stmt st_put = {
    "registry_put",
    "WITH ch AS (INSERT INTO registry_instances(" COLS ")"
    " VALUES($1, $2, $3, $4, $5, $6, $7::bigint, 1, $8::bigint, $8::bigint)"
    " ON CONFLICT(id) DO UPDATE SET type = excluded.type, name = excluded.name,"
    " url = excluded.url, tags = excluded.tags, metadata = excluded.metadata,"
    " weight = excluded.weight, healthy = 1, registered_ms = excluded.registered_ms,"
    " heartbeat_ms = excluded.heartbeat_ms RETURNING id, type, 0 AS kind, 0 AS ord)" RECORD,
    8};
/* Most heartbeats: a healthy instance, nothing to record. */
static const dsysi_pg_stmt st_beat = {
    "registry_beat",
    "UPDATE registry_instances SET heartbeat_ms = $2::bigint WHERE id = $1 AND healthy = 1", 2};
/* An unhealthy instance turns healthy: one HEALTHY change. The WHERE is
 * re-checked on the newest row version, so of two racing heartbeats only
 * one records it. */
static const dsysi_pg_stmt st_beat_healthy = {
    "registry_beat_healthy",
    "WITH ch AS (UPDATE registry_instances SET heartbeat_ms = $2::bigint, healthy = 1"
    " WHERE id = $1 AND healthy = 0 RETURNING id, type, " "3" " AS kind,"
    " 0 AS ord)" RECORD, 2};
static const dsysi_pg_stmt st_remove = {
    "registry_remove",
    "WITH ch AS (DELETE FROM registry_instances WHERE id = $1 RETURNING id, type, "
    "1" " AS kind, 0 AS ord)" RECORD, 1};
/* $1 unhealthy_before, $2 reap_before: REAPED changes first, then
 * UNHEALTHY ones, each in id order (as the sqlite backend). The two sets
 * are disjoint: a statement must not change a row twice. */
static const dsysi_pg_stmt st_expire = {
    "registry_expire",
    "WITH reaped AS (DELETE FROM registry_instances WHERE heartbeat_ms < $2::bigint"
    " RETURNING id, type),"
    " unh AS (UPDATE registry_instances SET healthy = 0 WHERE healthy = 1"
    " AND heartbeat_ms < $1::bigint AND heartbeat_ms >= $2::bigint RETURNING id, type),"
    " ch AS (SELECT id, type, " "4" " AS kind, 0 AS ord FROM reaped"
    " UNION ALL SELECT id, type, " "2" ", 1 FROM unh)" RECORD, 2};
/* One instance of expire_ids: $1 id, $2 its heartbeat as read (no row when
 * a heartbeat came since), $3 1 to reap, 0 to mark unhealthy. */
static const dsysi_pg_stmt st_expire_id = {
    "registry_expire_id",
    "WITH reaped AS (DELETE FROM registry_instances WHERE id = $1 AND heartbeat_ms = $2::bigint"
    " AND $3::int = 1 RETURNING id, type),"
    " unh AS (UPDATE registry_instances SET healthy = 0 WHERE id = $1 AND heartbeat_ms = $2::bigint"
    " AND healthy = 1 AND $3::int = 0 RETURNING id, type),"
    " ch AS (SELECT id, type, " "4" " AS kind, 0 AS ord FROM reaped"
    " UNION ALL SELECT id, type, " "2" ", 1 FROM unh)" RECORD, 3};
static const dsysi_pg_stmt st_get = {
    "registry_get", "SELECT " COLS " FROM registry_instances WHERE id = $1", 1};
static const dsysi_pg_stmt st_list_type = {
    "registry_list_type",
    "SELECT " COLS " FROM registry_instances WHERE type = $1 ORDER BY id", 1};
static const dsysi_pg_stmt st_list = {
    "registry_list", "SELECT " COLS " FROM registry_instances ORDER BY id", 0};
static const dsysi_pg_stmt st_index = {
    "registry_index", "SELECT v FROM registry_meta WHERE k = 'index'", 0};
/* One statement, so one snapshot: the index, the oldest kept change and
 * the changes after $1 agree (columns 0 and 1 repeat on every row; one row
 * of NULL changes when there are none). */
static const dsysi_pg_stmt st_changes = {
    "registry_changes",
    "SELECT m.v, o.oldest, c.idx, c.kind, c.id, c.type"
    " FROM (SELECT v FROM registry_meta WHERE k = 'index') m"
    " CROSS JOIN (SELECT min(idx) AS oldest FROM registry_changes) o"
    " LEFT JOIN registry_changes c ON c.idx > $1::bigint ORDER BY c.idx", 1};

typedef struct pgr {
  dsysi_pg *pool;
  dsys_registry_env env;
  pthread_t th;
  int th_started;
  int wake[2]; /* written once to stop the listener */
} pgr;

/* Run one statement; *res (may be NULL) gets the result. */
static int run1(pgr *s, const dsysi_pg_stmt *st, const char *const *p, PGresult **res) {
  dsysi_pg_conn *c = NULL;
  int e = dsysi_pg_acquire(s->pool, &c);
  if (e) return e;
  e = dsysi_pg_exec(c, st, p, res);
  dsysi_pg_release(c);
  return e;
}

/* A recording statement: DSYS_ENOTFOUND when it changed nothing. */
static int run_record(pgr *s, const dsysi_pg_stmt *st, const char *const *p) {
  PGresult *r = NULL;
  int e = run1(s, st, p, &r);
  if (!e && PQntuples(r) < 1) e = DSYS_ENOTFOUND;
  PQclear(r);
  return e;
}

static int pgr_open(void *vst, const char *target, char *err, size_t errlen) {
  pgr *s = vst;
  s->wake[0] = s->wake[1] = -1;
  if (!target || !*target) {
    if (err && errlen) snprintf(err, errlen, "postgresql registry needs a postgresql:// URI");
    return DSYS_EINVAL;
  }
  /* "postgresql", "postgresql://..." as (backend, target), or the backend
   * URL itself, whose target is what follows "scheme://" */
  char *url = NULL;
  if (dsysi_pg_is_url(target)) {
    url = strdup(target);
  } else if ((url = malloc(strlen(target) + 14))) {
    strcpy(url, "postgresql://");
    strcat(url, target);
  }
  if (!url) return DSYS_ENOMEM;
  /* calls are serialised by the generic layer; one more connection for
   * the listener and one for a sweep racing a call */
  dsysi_pg_options o = {.max_conns = 3};
  int e = dsysi_pg_open(&s->pool, url, &o, err, errlen);
  free(url);
  if (!e) e = dsysi_pg_migrate(s->pool, "registry", steps, 1, err, errlen);
  if (!e && pipe(s->wake)) e = DSYS_EIO;
  if (e) {
    dsysi_pg_close(s->pool);
    s->pool = NULL;
  }
  return e;
}

/* Wait up to ms for the stop pipe; 1 when stopping. */
static int stopping(pgr *s, int ms) {
  struct pollfd p = {.fd = s->wake[0], .events = POLLIN};
  return poll(&p, 1, ms) > 0;
}

/* LISTEN on a pooled connection and pass every notification on; after a
 * (re)connection pass one on anyway: changes may have been missed. */
static void *listener(void *arg) {
  pgr *s = arg;
  for (;;) {
    dsysi_pg_conn *c = NULL;
    if (!dsysi_pg_acquire(s->pool, &c) && !dsysi_pg_run(c, "LISTEN dsys_registry")) {
      s->env.changed(s->env.ctx);
      for (;;) {
        struct pollfd p[2] = {{.fd = s->wake[0], .events = POLLIN},
                              {.fd = PQsocket(c->pg), .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR) break;
        if (p[0].revents) {
          dsysi_pg_run(c, "UNLISTEN *");
          dsysi_pg_release(c);
          return NULL;
        }
        if (!p[1].revents) continue;
        if (!PQconsumeInput(c->pg) || PQstatus(c->pg) != CONNECTION_OK) break;
        int got = 0;
        PGnotify *n;
        while ((n = PQnotifies(c->pg))) {
          got = 1;
          PQfreemem(n);
        }
        if (got) s->env.changed(s->env.ctx);
      }
    }
    dsysi_pg_release(c); /* a broken connection is closed, not pooled */
    if (stopping(s, 1000)) return NULL;
  }
}

static int pgr_attach(void *vst, const dsys_registry_env *env) {
  pgr *s = vst;
  s->env = *env;
  if (!env->changed) return 0;
  if (pthread_create(&s->th, NULL, listener, s)) return DSYS_ENOMEM;
  s->th_started = 1;
  return 0;
}

static void pgr_close(void *vst) {
  pgr *s = vst;
  if (s->th_started) {
    if (write(s->wake[1], "x", 1) != 1) {}
    pthread_join(s->th, NULL);
  }
  if (s->wake[0] >= 0) close(s->wake[0]);
  if (s->wake[1] >= 0) close(s->wake[1]);
  dsysi_pg_close(s->pool);
}

static int pgr_put(void *vst, const dsys_instance *in, int64_t now) {
  char *tags = dsysi_registry_tags_json(in);
  if (!tags) return DSYS_ENOMEM;
  char w[24], nows[24];
  const char *p[] = {in->id, in->type, in->name ? in->name : "", in->url, tags,
                     in->metadata ? in->metadata : "{}", DSYSI_PG_I64(w, in->weight),
                     DSYSI_PG_I64(nows, now)};
  int e = run_record(vst, &st_put, p);
  free(tags);
  return e == DSYS_ENOTFOUND ? DSYS_EDB : e;
}

static int pgr_heartbeat(void *vst, const char *id, int64_t now) {
  char nows[24];
  const char *p[] = {id, DSYSI_PG_I64(nows, now)};
  /* healthy (the usual case), else turning healthy, else healthy again
   * because a racing heartbeat turned it so, else absent */
  for (int i = 0; i < 3; i++) {
    PGresult *r = NULL;
    int e = i == 1 ? run_record(vst, &st_beat_healthy, p) : run1(vst, &st_beat, p, &r);
    if (i != 1) {
      if (!e && !strcmp(PQcmdTuples(r), "0")) e = DSYS_ENOTFOUND;
      PQclear(r);
    }
    if (e != DSYS_ENOTFOUND) return e;
  }
  return DSYS_ENOTFOUND;
}

static int pgr_remove(void *vst, const char *id) {
  const char *p[] = {id};
  return run_record(vst, &st_remove, p);
}

typedef struct rows {
  PGresult *r;
  int i;
} rows;

static int next_row(void *src, const char **col) {
  rows *w = src;
  if (w->i >= PQntuples(w->r)) return 0;
  for (int k = 0; k < DSYSI_REGISTRY_NCOLS; k++) col[k] = PQgetvalue(w->r, w->i, k);
  w->i++;
  return 1;
}

static int read_rows(pgr *s, const dsysi_pg_stmt *st, const char *const *p, dsys_instance **out,
                     size_t *n) {
  rows w = {NULL, 0};
  int e = run1(s, st, p, &w.r);
  if (!e) e = dsysi_registry_rows(next_row, &w, out, n);
  PQclear(w.r);
  return e;
}

static int pgr_get(void *vst, const char *id, dsys_instance **out) {
  const char *p[] = {id};
  dsys_instance *v = NULL;
  size_t n = 0;
  int e = read_rows(vst, &st_get, p, &v, &n);
  if (!e && !n) {
    dsys_free(v);
    e = DSYS_ENOTFOUND;
  }
  if (!e) *out = v;
  return e;
}

static int pgr_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  const char *p[] = {type};
  return read_rows(vst, type ? &st_list_type : &st_list, type ? p : NULL, out, n);
}

static int pgr_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  char u[24], r[24];
  const char *p[] = {DSYSI_PG_I64(u, unhealthy_before), DSYSI_PG_I64(r, reap_before)};
  int e = run_record(vst, &st_expire, p);
  return e == DSYS_ENOTFOUND ? 0 : e;
}

static int pgr_expire_ids(void *vst, const dsys_registry_expiry *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char h[24];
    const char *p[] = {v[i].id, DSYSI_PG_I64(h, v[i].heartbeat_ms), v[i].reap ? "1" : "0"};
    int e = run_record(vst, &st_expire_id, p);
    if (e && e != DSYS_ENOTFOUND) return e; /* ENOTFOUND: gone or alive */
  }
  return 0;
}

static int pgr_index(void *vst, uint64_t *out) {
  PGresult *r = NULL;
  int e = run1(vst, &st_index, NULL, &r);
  if (!e && PQntuples(r) == 1) *out = (uint64_t)dsysi_pg_int64(r, 0, 0);
  else if (!e) e = DSYS_EDB;
  PQclear(r);
  return e;
}

static int pgr_changes(void *vst, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  char a[24];
  /* indexes stay far below INT64_MAX, so the signed form is exact */
  const char *p[] = {DSYSI_PG_I64(a, after)};
  PGresult *r = NULL;
  int e = run1(vst, &st_changes, p, &r);
  if (e) return e;
  int n = PQntuples(r);
  uint64_t idx = n ? (uint64_t)dsysi_pg_int64(r, 0, 0) : 0;
  uint64_t oldest = n && !PQgetisnull(r, 0, 1) ? (uint64_t)dsysi_pg_int64(r, 0, 1) : idx + 1;
  if (idx > after && oldest > after + 1) e = DSYS_ERANGE;
  for (int i = 0; !e && i < n; i++) {
    if (PQgetisnull(r, i, 2)) continue;
    dsys_registry_change c = {.index = (uint64_t)dsysi_pg_int64(r, i, 2),
                              .kind = atoi(PQgetvalue(r, i, 3)),
                              .id = PQgetvalue(r, i, 4),
                              .type = PQgetvalue(r, i, 5)};
    fn(ctx, &c);
  }
  PQclear(r);
  return e;
}

#define PG_REGISTRY_OPS(scheme)                                                       \
  {.version = DSYS_REGISTRY_OPS_VERSION, .name = scheme, .state_size = sizeof(pgr),  \
   .open = pgr_open, .close = pgr_close, .put = pgr_put, .heartbeat = pgr_heartbeat, \
   .remove = pgr_remove, .get = pgr_get, .list = pgr_list, .expire = pgr_expire,     \
   .index = pgr_index, .changes = pgr_changes, .attach = pgr_attach,               \
   .expire_ids = pgr_expire_ids}

/* libpq takes both URI schemes; a family finds a backend by its name, so
 * the alias is a second table with the same ops. */
static const dsys_registry_ops pg_ops = PG_REGISTRY_OPS("postgresql");
static const dsys_registry_ops pg_alias_ops = PG_REGISTRY_OPS("postgres");
DSYSI_PLUGINS(registry_pg) = {{"registry", &pg_ops}, {"registry", &pg_alias_ops}, {0}};
