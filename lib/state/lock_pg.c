/*
 * PostgreSQL lock backend ("postgresql://..." and "postgres://..."): the
 * table dsys_locks in the database, each op one statement on a pooled
 * connection (lib/core/pg.h), atomic under the row lock the upsert or
 * update takes. Names' rows stay after release so tokens keep growing.
 * The server's outage gives DSYS_EUNAVAIL within the pool's bounds; a
 * holder whose renewals fail that way loses the lock when its lease ends
 * (lock.h), as with any backend.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/lock.h>
#include "core/internal.h"
#include "core/pg.h"
#include "core/plugin.h"

static const char *const migrations[] = {
    "CREATE TABLE dsys_locks(name text COLLATE \"C\" PRIMARY KEY, owner text, "
    "token bigint NOT NULL, expires_at bigint NOT NULL)",
};

static const dsysi_pg_stmt st_acquire = {
    "lock_acquire",
    "INSERT INTO dsys_locks AS l(name, owner, token, expires_at) VALUES($1, $2, 1, $4) "
    "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, token = l.token + 1, "
    "expires_at = excluded.expires_at WHERE l.owner IS NULL OR l.expires_at <= $3::bigint "
    "RETURNING token",
    4};
static const dsysi_pg_stmt st_held = {
    "lock_held",
    "SELECT owner, token, expires_at FROM dsys_locks WHERE name = $1 AND owner IS NOT NULL "
    "AND expires_at > $2::bigint",
    2};
static const dsysi_pg_stmt st_renew = {
    "lock_renew",
    "UPDATE dsys_locks SET expires_at = $4 WHERE name = $1 AND owner = $2 AND token = $3",
    4};
static const dsysi_pg_stmt st_release = {
    "lock_release",
    "UPDATE dsys_locks SET owner = NULL, expires_at = 0 WHERE name = $1 AND owner = $2 "
    "AND token = $3",
    3};

typedef struct pl {
  dsysi_pg *pool;
} pl;

static int p_open(void *state, const char *location, char *err, size_t errlen) {
  pl *p = state;
  /* the family hands over what follows "scheme:": give libpq its URI back */
  size_t n = strlen(location) + 16;
  char *url = malloc(n);
  if (!url) return DSYS_ENOMEM;
  snprintf(url, n, "postgresql://%s", location);
  int e = dsysi_pg_open(&p->pool, url, NULL, err, errlen);
  free(url);
  if (!e) e = dsysi_pg_migrate(p->pool, "lock", migrations, 1, err, errlen);
  if (e) dsysi_pg_close(p->pool);
  return e;
}

static void p_close(void *state) { dsysi_pg_close(((pl *)state)->pool); }

/* Run st with params; *res gets the result (may be NULL). */
static int run(pl *p, const dsysi_pg_stmt *st, const char *const *params, PGresult **res) {
  dsysi_pg_conn *c = NULL;
  int e = dsysi_pg_acquire(p->pool, &c);
  if (e) return e == DSYS_EBUSY ? DSYS_EUNAVAIL : e; /* EBUSY means "held" here */
  e = dsysi_pg_exec(c, st, params, res);
  dsysi_pg_release(c);
  return e == DSYS_EBUSY ? DSYS_EUNAVAIL : e;
}

static void held_info(PGresult *r, dsys_lock_info *out) {
  if (!out) return;
  snprintf(out->owner, sizeof out->owner, "%s", PQgetvalue(r, 0, 0));
  out->token = dsysi_pg_int64(r, 0, 1);
  out->expires_at = dsysi_pg_int64(r, 0, 2);
}

static int p_acquire(void *state, const char *name, const char *owner, int64_t now,
                     int64_t ttl_ms, int64_t *token, dsys_lock_info *held) {
  pl *p = state;
  char nows[24], exps[24];
  const char *a[] = {name, owner, DSYSI_PG_I64(nows, now), DSYSI_PG_I64(exps, now + ttl_ms)};
  PGresult *r = NULL;
  int e = run(p, &st_acquire, a, &r);
  if (!e && PQntuples(r) == 1) {
    *token = dsysi_pg_int64(r, 0, 0);
  } else if (!e) { /* the conflict's WHERE failed: a running lease */
    e = DSYS_EBUSY;
    PGresult *h = NULL;
    const char *b[] = {name, nows};
    if (held && !run(p, &st_held, b, &h) && PQntuples(h) == 1) held_info(h, held);
    PQclear(h);
  }
  PQclear(r);
  return e;
}

/* renew and release: an UPDATE that must change exactly the holder's row */
static int p_update(pl *p, const dsysi_pg_stmt *st, const char *const *a) {
  PGresult *r = NULL;
  int e = run(p, st, a, &r);
  if (!e) e = atoi(PQcmdTuples(r)) == 1 ? 0 : DSYS_ELEASE;
  PQclear(r);
  return e;
}

static int p_renew(void *state, const char *name, const char *owner, int64_t token, int64_t now,
                   int64_t ttl_ms) {
  char tok[24], exps[24];
  const char *a[] = {name, owner, DSYSI_PG_I64(tok, token), DSYSI_PG_I64(exps, now + ttl_ms)};
  return p_update(state, &st_renew, a);
}

static int p_release(void *state, const char *name, const char *owner, int64_t token) {
  char tok[24];
  const char *a[] = {name, owner, DSYSI_PG_I64(tok, token)};
  return p_update(state, &st_release, a);
}

static int p_holder(void *state, const char *name, int64_t now, dsys_lock_info *out) {
  char nows[24];
  const char *a[] = {name, DSYSI_PG_I64(nows, now)};
  PGresult *r = NULL;
  int e = run(state, &st_held, a, &r);
  if (!e && PQntuples(r) != 1) e = DSYS_ENOTFOUND;
  if (!e) held_info(r, out);
  PQclear(r);
  return e;
}

#define PG_LOCK_OPS(scheme)                                                              \
  {.version = DSYS_LOCK_OPS_VERSION, .name = scheme, .state_size = sizeof(pl),           \
   .open = p_open, .close = p_close, .acquire = p_acquire, .renew = p_renew,             \
   .release = p_release, .holder = p_holder}
static const dsys_lock_ops pg_ops = PG_LOCK_OPS("postgresql");
static const dsys_lock_ops pg_alias_ops = PG_LOCK_OPS("postgres");

DSYSI_PLUGINS(lock_pg) = {{"lock", &pg_ops}, {"lock", &pg_alias_ops}, {0}};
