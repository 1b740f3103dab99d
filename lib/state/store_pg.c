/*
 * PostgreSQL store backend (postgresql:// and postgres:// URLs), on the
 * shared pool of core/pg.h. Every operation but put_many (one transaction
 * of a put per entry) is one statement, so one round trip in autocommit: upserts (INSERT ... ON CONFLICT ... RETURNING) and
 * data-modifying CTEs replace the SQLite backend's explicit transactions,
 * and row locks taken by those statements make CAS and increments atomic
 * across processes and hosts.
 *
 * Keys are bytea, not text: bytea compares with memcmp (the SQLite
 * backend's order, needed for prefix listing) and, unlike text in a UTF8
 * database, accepts every byte string the front end accepts as a key.
 * Expired rows (expires_at != 0 and <= now, now from the caller's clock)
 * are filtered by every statement and replaced in place by writes that
 * treat them as absent (a fresh id, version 1), so no delete-then-insert
 * transaction is needed.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/clock.h>
#include <distsys/store.h>
#include "core/internal.h"
#include "core/pg.h"
#include "core/plugin.h"

#define COLS "id, key, value, metadata, version, created_at, updated_at, expires_at"
/* a row is live at now ($N, bigint) */
#define LIVE(n) "(expires_at = 0 OR expires_at > $" #n "::bigint)"
#define EXPIRED_T(n) "(t.expires_at > 0 AND t.expires_at <= $" #n "::bigint)"
#define INSERT_T                                                               \
  "INSERT INTO dsys_store_items AS t(key, value, metadata, version, "          \
  "created_at, updated_at, expires_at) "

static const char *const migrations[] = {
    "CREATE TABLE dsys_store_items("
    " id bigserial PRIMARY KEY,"
    " key bytea NOT NULL UNIQUE,"
    " value text NOT NULL,"
    " metadata text NOT NULL DEFAULT '{}',"
    " version bigint NOT NULL,"
    " created_at bigint NOT NULL,"
    " updated_at bigint NOT NULL,"
    " expires_at bigint NOT NULL DEFAULT 0);"
    "CREATE INDEX dsys_store_items_expiry ON dsys_store_items(expires_at)"
    " WHERE expires_at > 0;",
};

static const dsysi_pg_stmt st_get_key = {
    "store_get_key",
    "SELECT " COLS " FROM dsys_store_items WHERE key = $1::bytea AND " LIVE(2), 2};
static const dsysi_pg_stmt st_get_id = {
    "store_get_id",
    "SELECT " COLS " FROM dsys_store_items WHERE id = $1::bigint AND " LIVE(2), 2};
/* $1 key, $2 value, $3 metadata, $4 now, $5 expires_at. An expired row is
 * replaced as if it were absent: the fresh id the INSERT drew, version 1. */
static const dsysi_pg_stmt st_put = {
    "store_put",
    INSERT_T "VALUES($1::bytea, $2, $3, 1, $4::bigint, $4::bigint, $5::bigint) "
    "ON CONFLICT(key) DO UPDATE SET "
    "id = CASE WHEN " EXPIRED_T(4) " THEN excluded.id ELSE t.id END, "
    "value = excluded.value, metadata = excluded.metadata, "
    "version = CASE WHEN " EXPIRED_T(4) " THEN 1 ELSE t.version + 1 END, "
    "created_at = CASE WHEN " EXPIRED_T(4) " THEN excluded.created_at ELSE t.created_at END, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at "
    "RETURNING " COLS, 5};
/* No row back: the key exists and is live (DSYS_EEXIST). */
static const dsysi_pg_stmt st_create = {
    "store_create",
    INSERT_T "VALUES($1::bytea, $2, $3, 1, $4::bigint, $4::bigint, $5::bigint) "
    "ON CONFLICT(key) DO UPDATE SET id = excluded.id, value = excluded.value, "
    "metadata = excluded.metadata, version = 1, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at "
    "WHERE " EXPIRED_T(4) " RETURNING " COLS, 5};
/* $6 expected version (0: any). A row with a NULL id back: the live row's
 * version did not match (DSYS_ECONFLICT); no row: absent (DSYS_ENOTFOUND).
 * The fallback SELECT reads the statement's snapshot, before the UPDATE. */
static const dsysi_pg_stmt st_update = {
    "store_update",
    "WITH u AS (UPDATE dsys_store_items SET value = $2, "
    "metadata = COALESCE($3, metadata), version = version + 1, "
    "updated_at = $4::bigint, expires_at = $5::bigint "
    "WHERE key = $1::bytea AND " LIVE(4) " AND ($6::bigint = 0 OR version = $6::bigint) "
    "RETURNING " COLS ") "
    "SELECT " COLS " FROM u UNION ALL "
    "SELECT NULL, NULL, NULL, NULL, version, NULL, NULL, NULL FROM dsys_store_items "
    "WHERE key = $1::bytea AND " LIVE(4) " AND NOT EXISTS(SELECT 1 FROM u)", 6};
/* $1 key, $2 expected version, $3 now: answers as st_update. */
static const dsysi_pg_stmt st_delete = {
    "store_delete",
    "WITH d AS (DELETE FROM dsys_store_items WHERE key = $1::bytea AND " LIVE(3)
    " AND ($2::bigint = 0 OR version = $2::bigint) RETURNING " COLS ") "
    "SELECT " COLS " FROM d UNION ALL "
    "SELECT NULL, NULL, NULL, NULL, version, NULL, NULL, NULL FROM dsys_store_items "
    "WHERE key = $1::bytea AND " LIVE(3) " AND NOT EXISTS(SELECT 1 FROM d)", 3};
/* $1 key, $2 delta, $3 now. The upsert's row lock makes concurrent
 * increments queue up (no lost update). A live value that is not a JSON
 * integer fails the WHERE: no row back (DSYS_ETYPE); the values are valid
 * JSON already, so the pattern matches exactly the integers. Overflow of
 * the value or of the sum raises SQLSTATE 22003 (DSYS_ERANGE). */
static const dsysi_pg_stmt st_incr = {
    "store_incr",
    INSERT_T "VALUES($1::bytea, $2::bigint::text, '{}', 1, $3::bigint, $3::bigint, 0) "
    "ON CONFLICT(key) DO UPDATE SET "
    "id = CASE WHEN " EXPIRED_T(3) " THEN excluded.id ELSE t.id END, "
    "value = CASE WHEN " EXPIRED_T(3) " THEN excluded.value "
    "ELSE (t.value::bigint + $2::bigint)::text END, "
    "metadata = CASE WHEN " EXPIRED_T(3) " THEN '{}' ELSE t.metadata END, "
    "version = CASE WHEN " EXPIRED_T(3) " THEN 1 ELSE t.version + 1 END, "
    "created_at = CASE WHEN " EXPIRED_T(3) " THEN excluded.created_at ELSE t.created_at END, "
    "updated_at = excluded.updated_at, "
    "expires_at = CASE WHEN " EXPIRED_T(3) " THEN 0 ELSE t.expires_at END "
    "WHERE " EXPIRED_T(3) " OR t.value ~ '^\\s*-?[0-9]+\\s*$' RETURNING " COLS, 3};
/* $1 prefix, $2 after, $3 upper bound of the prefix range (none in the
 * open form), then now and limit. Two forms so both stay index range scans (an "$3 IS NULL OR"
 * would scan to the end of the table for a short prefix). */
static const dsysi_pg_stmt st_list_upper = {
    "store_list_upper",
    "SELECT " COLS " FROM dsys_store_items WHERE key >= $1::bytea AND key > $2::bytea "
    "AND key < $3::bytea AND " LIVE(4) " ORDER BY key LIMIT $5::bigint", 5};
static const dsysi_pg_stmt st_list_open = {
    "store_list_open",
    "SELECT " COLS " FROM dsys_store_items WHERE key >= $1::bytea AND key > $2::bytea "
    "AND " LIVE(3) " ORDER BY key LIMIT $4::bigint", 4};
/* SKIP LOCKED: rows being rewritten right now are left to a later purge;
 * the outer condition is re-checked on the row version it locks. */
static const dsysi_pg_stmt st_purge = {
    "store_purge",
    "DELETE FROM dsys_store_items WHERE id IN (SELECT id FROM dsys_store_items "
    "WHERE expires_at > 0 AND expires_at <= $1::bigint LIMIT $2::bigint "
    "FOR UPDATE SKIP LOCKED) AND expires_at > 0 AND expires_at <= $1::bigint", 2};

typedef struct pgs {
  dsysi_pg *pool;
  atomic_int down; /* the last call found the server unavailable (logged once) */
  atomic_llong lost_ms; /* monotonic ms when a call first found it unavailable; 0: up */
} pgs;

/* How long reads keep trying after the server was lost: a switchover
 * (Patroni demotes the primary, then promotes the synchronous standby:
 * 1 to 2.4 s without a primary in multihost-rolling.test) then delays them
 * instead of failing them; past it, a real outage, a read fails after one
 * more try as before. Below the gateways' health checks (3 failures 2 s
 * apart), which would take the instances out of rotation anyway. */
#define READ_GRACE_MS 3000

static int64_t mono_ms(void) { return dsys_clock_now_ms(dsys_clock_real()); }

/* When the server was found unavailable first (now, if this is the first). */
static int64_t lost_since(pgs *s) {
  long long zero = 0, now = mono_ms();
  return atomic_compare_exchange_strong(&s->lost_ms, &zero, now) ? now : zero;
}

/* "\x" + hex: a bytea parameter in text format (raw bytes could be
 * rejected as invalid UTF-8 before they reach the bytea input). */
static char *hex_key(const char *key) {
  static const char hx[] = "0123456789abcdef";
  size_t n = strlen(key);
  char *h = malloc(2 * n + 3);
  if (!h) return NULL;
  h[0] = '\\';
  h[1] = 'x';
  for (size_t i = 0; i < n; i++) {
    h[2 + 2 * i] = hx[(unsigned char)key[i] >> 4];
    h[3 + 2 * i] = hx[(unsigned char)key[i] & 15];
  }
  h[2 * n + 2] = 0;
  return h;
}

static dsys_item *row_item(const PGresult *r, int row) {
  size_t kl = 0;
  unsigned char *k = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, 1), &kl);
  if (!k) return NULL;
  dsys_item *it = NULL;
  char *key = malloc(kl + 1);
  if (key) {
    memcpy(key, k, kl);
    key[kl] = 0;
    it = dsys_item_new(dsysi_pg_int64(r, row, 0), key, PQgetvalue(r, row, 2),
                       PQgetvalue(r, row, 3), dsysi_pg_int64(r, row, 4),
                       dsysi_pg_int64(r, row, 5), dsysi_pg_int64(r, row, 6),
                       dsysi_pg_int64(r, row, 7));
  }
  free(key);
  PQfreemem(k);
  return it;
}

/* Log the server going away and coming back once each, not per call. */
static int note(pgs *s, int e, const char *why) {
  if (e == DSYS_EUNAVAIL) {
    lost_since(s);
    if (!atomic_exchange(&s->down, 1))
      dsysi_log(DSYS_LOG_WARN, "store", "PostgreSQL %s unavailable: %s",
                dsysi_pg_display_url(s->pool), why);
  } else {
    if (atomic_load(&s->lost_ms)) atomic_store(&s->lost_ms, 0);
    if (atomic_load(&s->down) && atomic_exchange(&s->down, 0))
      dsysi_log(DSYS_LOG_INFO, "store", "PostgreSQL %s available again",
                dsysi_pg_display_url(s->pool));
  }
  return e;
}

/* Run one statement on a pooled connection. A read that found its pooled
 * connection dead (the server restarted since) is tried once more on a
 * fresh one, and then every 100 ms while the server has been away for less
 * than READ_GRACE_MS; a write is not (it may have committed before the
 * loss). */
static int run1(pgs *s, const dsysi_pg_stmt *st, const char *const *params, int retry,
                PGresult **res) {
  for (int attempt = 0;; attempt++) {
    dsysi_pg_conn *c = NULL;
    char why[200] = "";
    int e = dsysi_pg_acquire(s->pool, &c);
    if (e) {
      snprintf(why, sizeof why, "%s", dsysi_pg_last_error(s->pool));
    } else {
      e = dsysi_pg_exec(c, st, params, res);
      if (e == DSYS_EUNAVAIL) {
        snprintf(why, sizeof why, "%s", PQerrorMessage(c->pg));
        why[strcspn(why, "\n")] = 0;
      }
      dsysi_pg_release(c);
    }
    if (e != DSYS_EUNAVAIL || !retry) return note(s, e, why);
    if (attempt && mono_ms() - lost_since(s) >= READ_GRACE_MS) return note(s, e, why);
    if (attempt) usleep(100 * 1000);
  }
}

static int pgs_open(void *state, const char *location, const dsys_store_options *o, char *err,
                    size_t errlen) {
  (void)o; /* full_sync: durability is the server's synchronous_commit */
  pgs *s = state;
  if (!*location) return DSYS_EURL;
  /* the front end passes what follows "scheme://": libpq wants the URI */
  size_t n = strlen(location);
  char *url = malloc(n + 14);
  if (!url) return DSYS_ENOMEM;
  memcpy(url, "postgresql://", 13);
  memcpy(url + 13, location, n + 1);
  int e = dsysi_pg_open(&s->pool, url, NULL, err, errlen);
  free(url);
  if (!e) e = dsysi_pg_migrate(s->pool, "store", migrations, 1, err, errlen);
  if (e) {
    dsysi_pg_close(s->pool);
    s->pool = NULL;
  }
  return e;
}

static void pgs_close(void *state) {
  pgs *s = state;
  dsysi_pg_close(s->pool);
}

/* One item from a result of at most one row; DSYS_ENOTFOUND for none. */
static int one_item(PGresult *r, dsys_item **out) {
  int e = 0;
  if (PQntuples(r) < 1) e = DSYS_ENOTFOUND;
  else if (!(*out = row_item(r, 0))) e = DSYS_ENOMEM;
  PQclear(r);
  return e;
}

static int pgs_get(void *state, const char *key, int64_t id, int64_t now, dsys_item **out) {
  char a[24], nows[24];
  char *hk = NULL;
  if (key && !(hk = hex_key(key))) return DSYS_ENOMEM;
  const char *p[] = {key ? hk : DSYSI_PG_I64(a, id), DSYSI_PG_I64(nows, now)};
  PGresult *r = NULL;
  int e = run1(state, key ? &st_get_key : &st_get_id, p, 1, &r);
  free(hk);
  return e ? e : one_item(r, out);
}

/* The answer of st_update / st_delete: the changed item, or why not. */
static int cas_answer(PGresult *r, dsys_item **out) {
  if (PQntuples(r) >= 1 && PQgetisnull(r, 0, 0)) {
    PQclear(r);
    return DSYS_ECONFLICT;
  }
  return one_item(r, out);
}

static int pgs_write(void *state, int mode, const char *key, const char *value, const char *meta,
                     int64_t exp, int64_t ev, int64_t now, dsys_item **out) {
  char *hk = hex_key(key);
  if (!hk) return DSYS_ENOMEM;
  char nows[24], exps[24], evs[24];
  const char *p[] = {hk, value, meta, DSYSI_PG_I64(nows, now), DSYSI_PG_I64(exps, exp),
                     DSYSI_PG_I64(evs, ev)};
  const dsysi_pg_stmt *st = mode == DSYS_STORE_W_PUT      ? &st_put
                            : mode == DSYS_STORE_W_CREATE ? &st_create
                                                          : &st_update;
  PGresult *r = NULL;
  int e = run1(state, st, p, 0, &r);
  free(hk);
  if (e) return e;
  if (mode == DSYS_STORE_W_UPDATE) return cas_answer(r, out);
  e = one_item(r, out);
  return e == DSYS_ENOTFOUND ? (mode == DSYS_STORE_W_CREATE ? DSYS_EEXIST : DSYS_EDB) : e;
}

/* One transaction on one pooled connection, a statement per entry (round
 * trips, not commits, are what it costs: one commit for the lot). Like
 * every write, not retried after a lost connection. */
static int pgs_put_many(void *state, const dsys_store_entry *ents, size_t n,
                        const int64_t *exps, int64_t now, dsys_item **items,
                        size_t *failed) {
  pgs *s = state;
  dsysi_pg_conn *c = NULL;
  char why[200] = "";
  *failed = n;
  int e = dsysi_pg_acquire(s->pool, &c);
  if (e) {
    snprintf(why, sizeof why, "%s", dsysi_pg_last_error(s->pool));
    return note(s, e, why);
  }
  e = dsysi_pg_run(c, "BEGIN");
  size_t i = 0;
  for (; !e && i < n; i++) {
    char *hk = hex_key(ents[i].key);
    char nows[24], exps_s[24];
    const char *p[] = {hk, ents[i].value, ents[i].metadata, DSYSI_PG_I64(nows, now),
                       DSYSI_PG_I64(exps_s, exps[i])};
    PGresult *r = NULL;
    e = hk ? dsysi_pg_exec(c, &st_put, p, &r) : DSYS_ENOMEM;
    free(hk);
    if (!e && (e = one_item(r, &items[i])) == DSYS_ENOTFOUND) e = DSYS_EDB;
    if (e) *failed = i;
  }
  if (!e) e = dsysi_pg_run(c, "COMMIT");
  if (e) {
    if (e == DSYS_EUNAVAIL) {
      snprintf(why, sizeof why, "%s", PQerrorMessage(c->pg));
      why[strcspn(why, "\n")] = 0;
    } else {
      dsysi_pg_run(c, "ROLLBACK");
    }
    for (size_t j = 0; j < n; j++) {
      free(items[j]);
      items[j] = NULL;
    }
  }
  dsysi_pg_release(c);
  return note(s, e, why);
}

static int pgs_del(void *state, const char *key, int64_t ev, int64_t now, dsys_item **out) {
  char *hk = hex_key(key);
  if (!hk) return DSYS_ENOMEM;
  char nows[24], evs[24];
  const char *p[] = {hk, DSYSI_PG_I64(evs, ev), DSYSI_PG_I64(nows, now)};
  PGresult *r = NULL;
  int e = run1(state, &st_delete, p, 0, &r);
  free(hk);
  if (e) return e;
  dsys_item *it = NULL;
  e = cas_answer(r, &it);
  if (!e && out) *out = it;
  else free(it);
  return e;
}

static int pgs_incr(void *state, const char *key, int64_t delta, int64_t now, dsys_item **out) {
  char *hk = hex_key(key);
  if (!hk) return DSYS_ENOMEM;
  char ds[24], nows[24];
  const char *p[] = {hk, DSYSI_PG_I64(ds, delta), DSYSI_PG_I64(nows, now)};
  PGresult *r = NULL;
  int e = run1(state, &st_incr, p, 0, &r);
  free(hk);
  if (e) return e;
  e = one_item(r, out);
  return e == DSYS_ENOTFOUND ? DSYS_ETYPE : e;
}

/* The first byte string above every key starting with prefix: prefix with
 * trailing 0xff bytes dropped and the last byte raised; NULL (no bound)
 * for "" or all 0xff. */
static char *prefix_upper(const char *prefix) {
  size_t n = strlen(prefix);
  while (n && (unsigned char)prefix[n - 1] == 0xff) n--;
  if (!n) return NULL;
  char *u = malloc(n + 1);
  if (!u) return NULL;
  memcpy(u, prefix, n);
  u[n - 1] = (char)((unsigned char)u[n - 1] + 1);
  u[n] = 0;
  return u;
}

static int pgs_list(void *state, const char *prefix, const char *after, size_t limit,
                    int64_t now, dsys_item ***items, size_t *count) {
  char *up = prefix_upper(prefix);
  char *hp = hex_key(prefix), *ha = hex_key(after ? after : ""), *hu = up ? hex_key(up) : NULL;
  char nows[24], lims[24];
  DSYSI_PG_I64(nows, now);
  DSYSI_PG_I64(lims, limit);
  const char *pu[] = {hp, ha, hu, nows, lims}, *po[] = {hp, ha, nows, lims};
  PGresult *r = NULL;
  int e = !hp || !ha || (up && !hu) ? DSYS_ENOMEM
                                    : up ? run1(state, &st_list_upper, pu, 1, &r)
                                         : run1(state, &st_list_open, po, 1, &r);
  free(up);
  free(hp);
  free(ha);
  free(hu);
  if (e) return e;
  size_t n = (size_t)PQntuples(r);
  dsys_item **arr = calloc(n ? n : 1, sizeof *arr);
  if (!arr) e = DSYS_ENOMEM;
  for (size_t i = 0; !e && i < n; i++)
    if (!(arr[i] = row_item(r, (int)i))) {
      dsys_item_list_free(arr, i);
      e = DSYS_ENOMEM;
    }
  PQclear(r);
  if (e) return e;
  *items = arr;
  *count = n;
  return 0;
}

static int pgs_purge(void *state, int64_t now, size_t limit, size_t *removed) {
  char nows[24], lims[24];
  const char *p[] = {DSYSI_PG_I64(nows, now), DSYSI_PG_I64(lims, limit)};
  PGresult *r = NULL;
  int e = run1(state, &st_purge, p, 0, &r);
  if (e) return e;
  *removed = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
  PQclear(r);
  return 0;
}

#define PG_STORE_OPS(scheme)                                                   \
  {.version = DSYS_STORE_OPS_VERSION, .name = scheme, .state_size = sizeof(pgs), \
   .open = pgs_open, .close = pgs_close, .get = pgs_get, .write = pgs_write,   \
   .del = pgs_del, .incr = pgs_incr, .list = pgs_list, .purge = pgs_purge, \
   .put_many = pgs_put_many}

/* libpq takes both URI schemes; a family finds a backend by its name, so
 * the alias is a second table with the same ops. */
static const dsys_store_ops pg_ops = PG_STORE_OPS("postgresql");
static const dsys_store_ops pg_alias_ops = PG_STORE_OPS("postgres");
DSYSI_PLUGINS(store_pg) = {{"store", &pg_ops}, {"store", &pg_alias_ops}, {0}};
