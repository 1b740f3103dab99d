/*
 * Internal PostgreSQL helpers shared by every PostgreSQL backend (store,
 * queue, registry): a bounded connection pool per opened URL, prepared
 * statements cached per connection, schema versions per component (the
 * same dsys_schema(component, version) table and version numbers as the
 * SQLite backends), and one mapping from SQLSTATE to DSYS_E codes.
 *
 * Outages: every wait is bounded. Connecting uses connect_timeout; each
 * statement runs under statement_timeout (server side) and tcp_user_timeout
 * (a peer that stops acknowledging); a connection found dead is dropped and
 * the call fails with DSYS_EUNAVAIL; the next call connects afresh, so
 * callers recover by themselves when the server is back.
 */
#ifndef DSYSI_PG_H
#define DSYSI_PG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <libpq-fe.h>

/** Defaults of dsysi_pg_options. */
#define DSYSI_PG_MAX_CONNS 8
#define DSYSI_PG_CONNECT_TIMEOUT_S 5
#define DSYSI_PG_STATEMENT_TIMEOUT_MS 10000
#define DSYSI_PG_TCP_USER_TIMEOUT_MS 5000
#define DSYSI_PG_ACQUIRE_TIMEOUT_MS 10000

typedef struct dsysi_pg dsysi_pg;

/** A pooled connection: use only between acquire and release, on one
 *  thread. */
typedef struct dsysi_pg_conn {
  PGconn *pg;
  dsysi_pg *pool;
  /* private */
  const void *prepared[32]; /* statements prepared on this connection */
  int nprepared;
  struct dsysi_pg_conn *next;
} dsysi_pg_conn;

/** A statement prepared on demand on each connection (a static object:
 *  its address identifies it). */
typedef struct dsysi_pg_stmt {
  const char *name; /**< unique among all statements, e.g. "store_get" */
  const char *sql;  /**< with $1.. placeholders */
  int nparams;
} dsysi_pg_stmt;

/** Pool options. Zero fields take the defaults above. */
typedef struct dsysi_pg_options {
  int max_conns;            /**< connections kept at most */
  int connect_timeout_s;    /**< libpq connect_timeout */
  int statement_timeout_ms; /**< server-side statement_timeout */
  int acquire_timeout_ms;   /**< wait for a free connection, then DSYS_EBUSY */
} dsysi_pg_options;

/**
 * 1 when url is a PostgreSQL connection URI (postgresql:// or postgres://).
 */
int dsysi_pg_is_url(const char *url);

/**
 * Open a pool for a libpq connection URI and check it by connecting once
 * (bounded by connect_timeout). Several hosts and target_session_attrs
 * are libpq's own URI features and work as documented there.
 * @return 0; DSYS_EURL (malformed URI), DSYS_EUNAVAIL (server not
 *         reachable), DSYS_EAUTH, DSYS_ENOMEM; message in err.
 */
int dsysi_pg_open(dsysi_pg **out, const char *url, const dsysi_pg_options *o,
                  char *err, size_t errlen);

/** Close every connection and free the pool (no connection may be in use). */
void dsysi_pg_close(dsysi_pg *p);

/**
 * Take a connection (connecting one when none is idle and the pool is not
 * full; waiting up to acquire_timeout otherwise). An idle connection whose
 * socket shows the peer closed it (server restarted) is dropped first, so
 * a statement is never sent on a connection known to be dead.
 * @return 0; DSYS_EUNAVAIL (cannot connect: message via dsysi_pg_last_error),
 *         DSYS_EBUSY (pool exhausted for acquire_timeout).
 */
int dsysi_pg_acquire(dsysi_pg *p, dsysi_pg_conn **out);

/** Give a connection back; it is closed instead when it is broken or in a
 *  transaction (a caller that failed midway). */
void dsysi_pg_release(dsysi_pg_conn *c);

/**
 * Run a prepared statement (preparing it on this connection first if
 * needed) with text parameters (NULL = SQL NULL). *res (may be NULL) gets
 * the result on success (PQclear it).
 * @return 0 (PGRES_COMMAND_OK or PGRES_TUPLES_OK) or a DSYS_E code from
 *         dsysi_pg_result_err.
 */
int dsysi_pg_exec(dsysi_pg_conn *c, const dsysi_pg_stmt *st,
                  const char *const *params, PGresult **res);

/** 1 when statement st is prepared on this connection (its first
 *  dsysi_pg_exec there prepares it): a pipelined caller can then send it
 *  without a Parse round of its own. */
int dsysi_pg_is_prepared(const dsysi_pg_conn *c, const dsysi_pg_stmt *st);

/** Run SQL text without parameters (BEGIN, COMMIT, DDL). @return as above. */
int dsysi_pg_run(dsysi_pg_conn *c, const char *sql);

/**
 * Map a failed result (or NULL result) on a connection to a DSYS_E code:
 * connection lost / server shutting down / read-only standby -> EUNAVAIL;
 * unique violation -> EEXIST; statement timeout -> ETIMEDOUT; serialization
 * failure, deadlock, lock not available -> EBUSY; disk full -> ENOSPC;
 * invalid text representation / out of range -> EINVAL / ERANGE;
 * else EDB. Logs nothing.
 */
int dsysi_pg_result_err(PGconn *pg, const PGresult *r);

/**
 * Bring one component's schema up to date (steps[i] moves version i to
 * i + 1), in one transaction under an advisory lock so concurrent openers
 * do not race. A schema newer than nsteps fails with DSYS_ENOTSUP.
 * @return 0, DSYS_ENOTSUP, DSYS_EUNAVAIL, DSYS_EDB; message in err.
 */
int dsysi_pg_migrate(dsysi_pg *p, const char *component, const char *const *steps,
                     int nsteps, char *err, size_t errlen);

/** The pool's last connection error message (for logs), never NULL. */
const char *dsysi_pg_last_error(dsysi_pg *p);

/** A copy of url with any password replaced by "***" (for logs and
 *  messages; free() it), NULL on out of memory. */
char *dsysi_pg_redact_url(const char *url);

/** The URI the pool was opened with, password removed (for logs). */
const char *dsysi_pg_display_url(dsysi_pg *p);

/** A statement parameter from an integer: v as text in buf (a char
 *  array of at least 21 bytes), which the expression then names. */
#define DSYSI_PG_I64(buf, v) (snprintf((buf), sizeof(buf), "%lld", (long long)(v)), (buf))

/** Parse a bigint column; 0 for NULL. */
int64_t dsysi_pg_int64(const PGresult *r, int row, int col);

#endif
