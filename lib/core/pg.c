/* PostgreSQL connection pool and helpers shared by the PostgreSQL backends
 * (see pg.h). */
#include "core/pg.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"

struct dsysi_pg {
  char *url;
  char *display;
  dsysi_pg_options o;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsysi_pg_conn *idle; /* stack of idle connections */
  int open;            /* connections existing (idle or in use) */
};

/* Per-thread: the message of the calling thread's last failed connect. */
static __thread char tl_err[256];

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int dsysi_pg_is_url(const char *url) {
  return url && (!strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11));
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *msg) {
  if (!err || !errlen) return;
  snprintf(err, errlen, fmt, msg ? msg : "");
  /* libpq messages end with a newline */
  size_t n = strlen(err);
  while (n && (err[n - 1] == '\n' || err[n - 1] == ' ')) err[--n] = 0;
}

char *dsysi_pg_redact_url(const char *url) {
  size_t n = strlen(url);
  char *d = malloc(n + 8);
  if (!d) return NULL;
  const char *s = strstr(url, "://");
  const char *at = s ? strpbrk(s + 3, "@/?") : NULL;
  const char *colon = NULL;
  if (at && *at == '@')
    for (const char *p = s + 3; p < at; p++)
      if (*p == ':') { colon = p; break; }
  if (colon) {
    size_t k = (size_t)(colon - url) + 1;
    memcpy(d, url, k);
    strcpy(d + k, "***");
    strcat(d, at);
  } else {
    memcpy(d, url, n + 1);
  }
  char *pw = strstr(d, "password=");
  if (pw) {
    char *end = strchr(pw, '&');
    char tail[n + 1];
    strcpy(tail, end ? end : "");
    strcpy(pw + 9, "***");
    strcat(d, tail);
  }
  return d;
}

/* Connect with the pool's defaults; the URI's own settings win. */
static PGconn *connect_one(dsysi_pg *p) {
  char ct[16], opts[160], tut[24];
  snprintf(ct, sizeof ct, "%d", p->o.connect_timeout_s);
  snprintf(opts, sizeof opts,
           "-c statement_timeout=%d -c idle_in_transaction_session_timeout=%d"
           " -c client_min_messages=warning",
           p->o.statement_timeout_ms, p->o.statement_timeout_ms * 3);
  /* A host that died (no RST: its connections just go silent) must fail
   * the calls on it, and the idle connections to it must be found dead
   * before a failover is over (multi-host.md, "Failure timings"), not
   * after TCP gives up (minutes). tcp_user_timeout bounds how long sent
   * data may stay unacknowledged: the peer's kernel acknowledges at once
   * even while a long statement runs, so it need not exceed
   * statement_timeout. Keepalives (2 s idle, 1 s apart, 3 probes) find a
   * silent peer of an idle connection, or one waiting for an answer,
   * within 5 s: a few bytes a second per connection. */
  snprintf(tut, sizeof tut, "%d", DSYSI_PG_TCP_USER_TIMEOUT_MS);
  const char *keys[] = {"connect_timeout", "options", "tcp_user_timeout", "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "application_name",
                        "dbname", NULL};
  const char *vals[] = {ct, opts, tut, "2", "1", "3", "libdistsys", p->url, NULL};
  return PQconnectdbParams(keys, vals, 1);
}

int dsysi_pg_open(dsysi_pg **out, const char *url, const dsysi_pg_options *o, char *err,
                  size_t errlen) {
  *out = NULL;
  if (!dsysi_pg_is_url(url)) {
    set_err(err, errlen, "not a PostgreSQL URI (postgresql://...): %s", url ? url : "(null)");
    return DSYS_EURL;
  }
  char *perr = NULL;
  PQconninfoOption *info = PQconninfoParse(url, &perr);
  if (!info) {
    set_err(err, errlen, "malformed PostgreSQL URI: %s", perr ? perr : "out of memory");
    int rc = perr ? DSYS_EURL : DSYS_ENOMEM;
    PQfreemem(perr);
    return rc;
  }
  PQconninfoFree(info);
  dsysi_pg *p = calloc(1, sizeof *p);
  if (!p) return DSYS_ENOMEM;
  if (o) p->o = *o;
  if (p->o.max_conns <= 0) p->o.max_conns = DSYSI_PG_MAX_CONNS;
  if (p->o.connect_timeout_s <= 0) p->o.connect_timeout_s = DSYSI_PG_CONNECT_TIMEOUT_S;
  if (p->o.statement_timeout_ms <= 0) p->o.statement_timeout_ms = DSYSI_PG_STATEMENT_TIMEOUT_MS;
  if (p->o.acquire_timeout_ms <= 0) p->o.acquire_timeout_ms = DSYSI_PG_ACQUIRE_TIMEOUT_MS;
  p->url = strdup(url);
  p->display = dsysi_pg_redact_url(url);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  if (!p->url || !p->display) {
    dsysi_pg_close(p);
    return DSYS_ENOMEM;
  }
  /* one connection now: a wrong URI, password or database is reported at
   * open rather than on the first call */
  dsysi_pg_conn *c = NULL;
  int rc = dsysi_pg_acquire(p, &c);
  if (rc) {
    if (err && errlen) snprintf(err, errlen, "%s: %s", p->display, tl_err);
    dsysi_pg_close(p);
    return rc;
  }
  dsysi_pg_release(c);
  *out = p;
  return 0;
}

static void conn_free(dsysi_pg_conn *c) {
  PQfinish(c->pg);
  free(c);
}

void dsysi_pg_close(dsysi_pg *p) {
  if (!p) return;
  while (p->idle) {
    dsysi_pg_conn *c = p->idle;
    p->idle = c->next;
    conn_free(c);
  }
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->url);
  free(p->display);
  free(p);
}

/* An idle connection whose socket is readable has either a notification
 * waiting or an end of file (server restarted or closed it): read what is
 * there and let libpq tell. */
static int conn_alive(dsysi_pg_conn *c) {
  if (PQstatus(c->pg) != CONNECTION_OK) return 0;
  struct pollfd pfd = {.fd = PQsocket(c->pg), .events = POLLIN};
  if (pfd.fd < 0) return 0;
  if (poll(&pfd, 1, 0) > 0) {
    if (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) return 0;
    if (!PQconsumeInput(c->pg)) return 0;
    PGnotify *n;
    while ((n = PQnotifies(c->pg))) PQfreemem(n);
  }
  return PQstatus(c->pg) == CONNECTION_OK;
}

static int connect_err(PGconn *pg) {
  const char *m = PQerrorMessage(pg);
  if (m && (strstr(m, "password authentication failed") || strstr(m, "no pg_hba.conf entry") ||
            strstr(m, "role \"") || strstr(m, "authentication")))
    return DSYS_EAUTH;
  return DSYS_EUNAVAIL;
}

int dsysi_pg_acquire(dsysi_pg *p, dsysi_pg_conn **out) {
  *out = NULL;
  int64_t deadline = mono_ms() + p->o.acquire_timeout_ms;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->idle) {
      dsysi_pg_conn *c = p->idle;
      p->idle = c->next;
      c->next = NULL;
      pthread_mutex_unlock(&p->mu);
      if (conn_alive(c)) {
        *out = c;
        return 0;
      }
      conn_free(c);
      pthread_mutex_lock(&p->mu);
      p->open--;
    }
    if (p->open < p->o.max_conns) {
      p->open++;
      pthread_mutex_unlock(&p->mu);
      dsysi_pg_conn *c = calloc(1, sizeof *c);
      PGconn *pg = c ? connect_one(p) : NULL;
      if (c && pg && PQstatus(pg) == CONNECTION_OK) {
        c->pg = pg;
        c->pool = p;
        *out = c;
        return 0;
      }
      int rc = !c || !pg ? DSYS_ENOMEM : connect_err(pg);
      set_err(tl_err, sizeof tl_err, "%s", pg ? PQerrorMessage(pg) : "out of memory");
      PQfinish(pg);
      free(c);
      pthread_mutex_lock(&p->mu);
      p->open--;
      pthread_cond_signal(&p->cv);
      pthread_mutex_unlock(&p->mu);
      return rc;
    }
    int64_t left = deadline - mono_ms();
    if (left <= 0) {
      pthread_mutex_unlock(&p->mu);
      snprintf(tl_err, sizeof tl_err, "all %d connections busy for %d ms", p->o.max_conns,
               p->o.acquire_timeout_ms);
      return DSYS_EBUSY;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += left / 1000;
    ts.tv_nsec += (left % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&p->cv, &p->mu, &ts);
  }
}

void dsysi_pg_release(dsysi_pg_conn *c) {
  if (!c) return;
  dsysi_pg *p = c->pool;
  int keep = PQstatus(c->pg) == CONNECTION_OK &&
             PQtransactionStatus(c->pg) == PQTRANS_IDLE;
  if (!keep) conn_free(c);
  pthread_mutex_lock(&p->mu);
  if (keep) {
    c->next = p->idle;
    p->idle = c;
  } else {
    p->open--;
  }
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

int dsysi_pg_result_err(PGconn *pg, const PGresult *r) {
  if (pg && PQstatus(pg) != CONNECTION_OK) return DSYS_EUNAVAIL;
  if (!r) return pg && PQstatus(pg) == CONNECTION_OK ? DSYS_ENOMEM : DSYS_EUNAVAIL;
  ExecStatusType s = PQresultStatus(r);
  if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) return 0;
  const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  if (!st) return DSYS_EDB;
  if (!strcmp(st, "23505")) return DSYS_EEXIST;           /* unique_violation */
  if (!strcmp(st, "57014")) return DSYS_ETIMEDOUT;        /* query_canceled */
  if (!strcmp(st, "40001") || !strcmp(st, "40P01") ||     /* serialization, deadlock */
      !strcmp(st, "55P03"))                               /* lock_not_available */
    return DSYS_EBUSY;
  if (!strcmp(st, "53100")) return DSYS_ENOSPC;           /* disk_full */
  if (!strcmp(st, "25006")) return DSYS_EUNAVAIL;         /* read-only: a standby */
  if (!strncmp(st, "08", 2) || !strncmp(st, "57P", 3))    /* connection, shutdown */
    return DSYS_EUNAVAIL;
  if (!strcmp(st, "22003")) return DSYS_ERANGE;           /* numeric out of range */
  if (!strncmp(st, "22", 2)) return DSYS_EINVAL;          /* data exceptions */
  if (!strncmp(st, "53", 2)) return DSYS_EIO;             /* out of resources */
  return DSYS_EDB;
}

int dsysi_pg_is_prepared(const dsysi_pg_conn *c, const dsysi_pg_stmt *st) {
  for (int i = 0; i < c->nprepared; i++)
    if (c->prepared[i] == st) return 1;
  return 0;
}

int dsysi_pg_exec(dsysi_pg_conn *c, const dsysi_pg_stmt *st, const char *const *params,
                  PGresult **res) {
  if (res) *res = NULL;
  int cache = (size_t)c->nprepared < sizeof c->prepared / sizeof c->prepared[0];
  PGresult *r;
  if (!dsysi_pg_is_prepared(c, st) && cache) {
    r = PQprepare(c->pg, st->name, st->sql, st->nparams, NULL);
    int e = dsysi_pg_result_err(c->pg, r);
    PQclear(r);
    if (e) return e;
    c->prepared[c->nprepared++] = st;
  }
  if (dsysi_pg_is_prepared(c, st))
    r = PQexecPrepared(c->pg, st->name, st->nparams, params, NULL, NULL, 0);
  else /* cache full: unnamed statement */
    r = PQexecParams(c->pg, st->sql, st->nparams, NULL, params, NULL, NULL, 0);
  int e = dsysi_pg_result_err(c->pg, r);
  if (e || !res) PQclear(r);
  else *res = r;
  return e;
}

int dsysi_pg_run(dsysi_pg_conn *c, const char *sql) {
  PGresult *r = PQexec(c->pg, sql);
  int e = dsysi_pg_result_err(c->pg, r);
  PQclear(r);
  return e;
}

static int run_err(dsysi_pg_conn *c, const char *sql, char *err, size_t errlen) {
  PGresult *r = PQexec(c->pg, sql);
  int e = dsysi_pg_result_err(c->pg, r);
  if (e) set_err(err, errlen, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg));
  PQclear(r);
  return e;
}

int dsysi_pg_migrate(dsysi_pg *p, const char *component, const char *const *steps, int nsteps,
                     char *err, size_t errlen) {
  dsysi_pg_conn *c = NULL;
  int e = dsysi_pg_acquire(p, &c);
  if (e) {
    set_err(err, errlen, "%s", tl_err);
    return e;
  }
  /* the advisory lock serializes concurrent openers, CREATE TABLE IF NOT
   * EXISTS included (it is not safe against a concurrent creator) */
  e = run_err(c, "BEGIN; SELECT pg_advisory_xact_lock(7305477829338415187);"
                 "CREATE TABLE IF NOT EXISTS dsys_schema(component text PRIMARY KEY,"
                 " version integer NOT NULL)", err, errlen);
  int version = 0;
  if (!e) {
    const char *pv[] = {component};
    PGresult *r = PQexecParams(c->pg, "SELECT version FROM dsys_schema WHERE component = $1", 1,
                               NULL, pv, NULL, NULL, 0);
    e = dsysi_pg_result_err(c->pg, r);
    if (e) set_err(err, errlen, "%s", PQerrorMessage(c->pg));
    else if (PQntuples(r) == 1) version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
  }
  if (!e && version > nsteps) {
    if (err && errlen)
      snprintf(err, errlen, "%s schema version %d is newer than this library knows (%d)",
               component, version, nsteps);
    e = DSYS_ENOTSUP;
  }
  for (int v = version; !e && v < nsteps; v++) {
    e = run_err(c, steps[v], err, errlen);
    if (!e) {
      char vs[16];
      snprintf(vs, sizeof vs, "%d", v + 1);
      const char *pv[] = {component, vs};
      PGresult *r = PQexecParams(c->pg,
                                 "INSERT INTO dsys_schema(component, version) VALUES($1, $2) "
                                 "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                                 2, NULL, pv, NULL, NULL, 0);
      e = dsysi_pg_result_err(c->pg, r);
      if (e) set_err(err, errlen, "%s", PQerrorMessage(c->pg));
      PQclear(r);
    }
  }
  if (!e) e = run_err(c, "COMMIT", err, errlen);
  else dsysi_pg_run(c, "ROLLBACK");
  dsysi_pg_release(c);
  return e;
}

const char *dsysi_pg_last_error(dsysi_pg *p) {
  (void)p;
  return tl_err;
}

const char *dsysi_pg_display_url(dsysi_pg *p) { return p->display; }

int64_t dsysi_pg_int64(const PGresult *r, int row, int col) {
  if (PQgetisnull(r, row, col)) return 0;
  return strtoll(PQgetvalue(r, row, col), NULL, 10);
}
