/*
 * The PostgreSQL pool and helpers (lib/core/pg.h) against a real,
 * throwaway server: URL checks, bounded failures when the server is
 * absent, schema versions, error mapping, pool exhaustion, and recovery
 * after the server is killed and restarted (no new pool needed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/distsys.h>
#include "core/internal.h"
#include "core/pg.h"
#include "pgserver.h"
#include "tap.h"

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const dsysi_pg_stmt st_put = {
    "t_put", "INSERT INTO t(k, v) VALUES($1, $2::bigint) RETURNING v", 2};
static const dsysi_pg_stmt st_get = {"t_get", "SELECT v FROM t WHERE k = $1", 1};

static void test_urls(void) {
  dsysi_pg *p = NULL;
  char err[256] = "";
  is_int(dsysi_pg_is_url("postgresql://h/db"), 1, "postgresql:// is a PostgreSQL URL");
  is_int(dsysi_pg_is_url("postgres://h/db"), 1, "postgres:// too");
  is_int(dsysi_pg_is_url("sqlite:///x"), 0, "sqlite:// is not");
  is_int(dsysi_pg_open(&p, "sqlite:///x", NULL, err, sizeof err), DSYS_EURL,
         "open of a non-PostgreSQL URL: DSYS_EURL");
  is_int(dsysi_pg_open(&p, "postgresql://h/db?nosuchoption=1", NULL, err, sizeof err), DSYS_EURL,
         "unknown URI option: DSYS_EURL");
  ok(strstr(err, "nosuchoption") != NULL, "the message names the bad option (%s)", err);
  /* nothing listens on this socket directory: refused at once */
  int64_t t0 = mono_ms();
  is_int(dsysi_pg_open(&p, "postgresql://u:secret@/db?host=/nonexistent-dir&port=1", NULL, err,
                       sizeof err),
         DSYS_EUNAVAIL, "no server: DSYS_EUNAVAIL");
  ok(mono_ms() - t0 < 3000, "... at once (%lld ms)", (long long)(mono_ms() - t0));
  ok(strstr(err, "secret") == NULL && strstr(err, "***") != NULL,
     "the message hides the password (%s)", err);
  ok(p == NULL, "no pool on failure");
}

static void test_server(tpg *srv) {
  dsysi_pg *p = NULL;
  char err[256] = "";
  dsysi_pg_options o = {.max_conns = 2, .acquire_timeout_ms = 300, .statement_timeout_ms = 1000};
  if (!is_int(dsysi_pg_open(&p, srv->url, &o, err, sizeof err), 0, "open %s", srv->url)) {
    tap_diag("%s", err);
    return;
  }
  /* schema versions */
  const char *steps[] = {"CREATE TABLE t(k text COLLATE \"C\" PRIMARY KEY, v bigint NOT NULL)",
                         "CREATE INDEX t_v ON t(v)"};
  is_int(dsysi_pg_migrate(p, "testcomp", steps, 2, err, sizeof err), 0, "migrate to version 2");
  is_int(dsysi_pg_migrate(p, "testcomp", steps, 2, err, sizeof err), 0,
         "migrate again: nothing to do");
  is_int(dsysi_pg_migrate(p, "testcomp", steps, 1, err, sizeof err), DSYS_ENOTSUP,
         "a library that knows only version 1: DSYS_ENOTSUP");
  ok(strstr(err, "newer") != NULL, "... saying the schema is newer (%s)", err);
  const char *bad[] = {"CREATE TABLE broken("};
  ok(dsysi_pg_migrate(p, "badcomp", bad, 1, err, sizeof err) != 0, "a failing step fails (%s)",
     err);

  /* statements and error mapping */
  dsysi_pg_conn *c = NULL;
  is_int(dsysi_pg_acquire(p, &c), 0, "acquire");
  const char *a[] = {"a", "41"};
  PGresult *r = NULL;
  is_int(dsysi_pg_exec(c, &st_put, a, &r), 0, "insert through a prepared statement");
  is_int(r ? dsysi_pg_int64(r, 0, 0) : -1, 41, "RETURNING value");
  PQclear(r);
  is_int(dsysi_pg_exec(c, &st_put, a, NULL), DSYS_EEXIST, "duplicate key: DSYS_EEXIST");
  const char *b[] = {"b", "notanumber"};
  is_int(dsysi_pg_exec(c, &st_put, b, NULL), DSYS_EINVAL, "bad bigint text: DSYS_EINVAL");
  const char *huge[] = {"c", "99999999999999999999999"};
  is_int(dsysi_pg_exec(c, &st_put, huge, NULL), DSYS_ERANGE, "out of range: DSYS_ERANGE");
  const dsysi_pg_stmt slow = {"t_slow", "SELECT pg_sleep(5)", 0};
  int64_t t0 = mono_ms();
  is_int(dsysi_pg_exec(c, &slow, NULL, NULL), DSYS_ETIMEDOUT,
         "a statement past statement_timeout: DSYS_ETIMEDOUT");
  ok(mono_ms() - t0 < 3000, "... after about 1 s (%lld ms)", (long long)(mono_ms() - t0));
  is_int(dsysi_pg_run(c, "BEGIN"), 0, "BEGIN");
  /* a connection given back inside a transaction is closed, not reused */
  dsysi_pg_release(c);

  /* pool exhaustion is bounded */
  dsysi_pg_conn *c1 = NULL, *c2 = NULL, *c3 = NULL;
  is_int(dsysi_pg_acquire(p, &c1), 0, "acquire 1 of 2");
  is_int(dsysi_pg_acquire(p, &c2), 0, "acquire 2 of 2");
  t0 = mono_ms();
  is_int(dsysi_pg_acquire(p, &c3), DSYS_EBUSY, "a third waits acquire_timeout: DSYS_EBUSY");
  int64_t waited = mono_ms() - t0;
  ok(waited >= 250 && waited < 2000, "... about 300 ms (%lld ms)", (long long)waited);
  const char *k[] = {"a"};
  r = NULL;
  is_int(dsysi_pg_exec(c1, &st_get, k, &r), 0, "the committed row is there");
  is_int(r && PQntuples(r) == 1 ? dsysi_pg_int64(r, 0, 0) : -1, 41, "... with its value");
  PQclear(r);
  dsysi_pg_release(c1);
  dsysi_pg_release(c2);

  /* server killed: bounded failure, then recovery on the same pool */
  tpg_kill(srv);
  t0 = mono_ms();
  int e = dsysi_pg_acquire(p, &c);
  if (!e) { /* an idle connection may not show the close yet */
    e = dsysi_pg_exec(c, &st_get, k, NULL);
    dsysi_pg_release(c);
  }
  is_int(e, DSYS_EUNAVAIL, "server killed: DSYS_EUNAVAIL");
  ok(mono_ms() - t0 < 6000, "... within the connect timeout (%lld ms)",
     (long long)(mono_ms() - t0));
  if (!ok(tpg_restart(srv) == 0, "server restarted")) {
    dsysi_pg_close(p);
    return;
  }
  e = -1;
  for (int i = 0; i < 50 && e; i++) { /* the old idle connection is dropped on the way */
    if (!(e = dsysi_pg_acquire(p, &c))) {
      r = NULL;
      e = dsysi_pg_exec(c, &st_get, k, &r);
      if (!e && !(PQntuples(r) == 1 && dsysi_pg_int64(r, 0, 0) == 41)) e = DSYS_EDB;
      PQclear(r);
      dsysi_pg_release(c);
    }
  }
  is_int(e, 0, "the same pool works again after the restart, the row survived");
  dsysi_pg_close(p);
}

int main(void) {
  test_urls();
  tpg srv;
  if (!ok(tpg_start(&srv) == 0, "start a throwaway PostgreSQL")) {
    tpg_stop(&srv);
    return tap_done();
  }
  test_server(&srv);
  tpg_stop(&srv);
  return tap_done();
}
