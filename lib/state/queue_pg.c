/*
 * PostgreSQL queue backend (dsys_queue_ops "postgresql", alias "postgres"):
 * the semantics of queue_sqlite.c on a shared server, so that stateless
 * processes on several hosts share one queue.
 *
 * Groups: the front end runs up to GROUPS groups at once per handle (their
 * commits wait for the server's WAL flush side by side); a group is one
 * READ COMMITTED transaction on one pooled connection (taken at begin, given
 * back at commit). Its round trips: one per op (the first one also carries
 * BEGIN and housekeeping, in pipeline mode; the worker's outcomes of a
 * group are one statement: finish_many), and COMMIT with at most one
 * NOTIFY. Transactions stay as short as the
 * group (vacuum must not be held back).
 *
 * Concurrency between processes: claims take rows with FOR UPDATE SKIP
 * LOCKED (a row being claimed or reclaimed elsewhere is skipped, not waited
 * for); housekeeping also skips locked rows; every change of an active job
 * is conditional on (state active, token), so a stale token changes
 * nothing and gets DSYS_ELEASE. Statements that could fail on input
 * (invalid UTF-8, an idempotency key inserted concurrently) are prevented
 * (checked before sending; ON CONFLICT DO NOTHING): a failed statement
 * would abort the whole group's transaction.
 *
 * Wakeups: a group that made jobs ready sends one NOTIFY dsys_queue whose
 * payload is the sending handle's random id; each handle LISTENs on a
 * dedicated connection (thread) and wakes its local workers for the
 * others' notifications. Workers keep polling (poll_ms) as the fallback
 * (a notification is lost while the listener reconnects).
 *
 * Job ids come from a sequence: they give FIFO order, not commit order.
 * No reader of this queue resumes from an id (list_dead's after_id pages
 * through jobs in a state, like the SQLite backend), so no serialization
 * of id assignment is needed.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/queue.h>
#include <distsys/util.h>
#include "core/buf.h"
#include "core/internal.h"
#include "core/pg.h"
#include "core/plugin.h"
#include "state/queue_int.h"

#define JCOLS                                                               \
  "id, queue, payload, state, priority, attempts, max_attempts, token, "    \
  "worker, lease_until, progress, progress_msg, result, error, idem_key, "  \
  "created_at, run_at, finished_at"
#define JCOLS_J                                                             \
  "j.id, j.queue, j.payload, j.state, j.priority, j.attempts, "             \
  "j.max_attempts, j.token, j.worker, j.lease_until, j.progress, "          \
  "j.progress_msg, j.result, j.error, j.idem_key, j.created_at, j.run_at, " \
  "j.finished_at"

/* Version numbers match the SQLite backend's (component "queue"). */
static const char *const migrations[] = {
    "CREATE TABLE dsys_jobs("
    " id bigserial PRIMARY KEY,"
    " queue text COLLATE \"C\" NOT NULL,"
    " payload text NOT NULL,"
    " state smallint NOT NULL,"
    " priority integer NOT NULL DEFAULT 0,"
    " attempts integer NOT NULL DEFAULT 0,"
    " max_attempts integer NOT NULL,"
    " backoff_base bigint NOT NULL,"
    " backoff_cap bigint NOT NULL,"
    " token bigint NOT NULL DEFAULT 0,"
    " worker text,"
    " lease_until bigint NOT NULL DEFAULT 0,"
    " progress integer NOT NULL DEFAULT 0,"
    " progress_msg text,"
    " result text,"
    " error text,"
    " idem_key text COLLATE \"C\","
    " created_at bigint NOT NULL,"
    " run_at bigint NOT NULL,"
    " finished_at bigint NOT NULL DEFAULT 0)"
    /* a hot queue table: vacuum it early (dead tuples slow claims) */
    " WITH (autovacuum_vacuum_scale_factor = 0.01,"
    " autovacuum_vacuum_cost_delay = 0);"
    "CREATE INDEX dsys_jobs_claim ON dsys_jobs(queue, priority DESC, id)"
    " WHERE state = 1;"
    "CREATE INDEX dsys_jobs_state ON dsys_jobs(queue, state);"
    "CREATE INDEX dsys_jobs_delayed ON dsys_jobs(run_at) WHERE state = 2;"
    "CREATE INDEX dsys_jobs_lease ON dsys_jobs(lease_until) WHERE state = 3;"
    "CREATE INDEX dsys_jobs_finished ON dsys_jobs(finished_at)"
    " WHERE finished_at > 0;"
    "CREATE UNIQUE INDEX dsys_jobs_idem ON dsys_jobs(queue, idem_key)"
    " WHERE idem_key IS NOT NULL;",
    /* 2: paused queues (dsys_queue_pause), a row per paused queue */
    "CREATE TABLE dsys_queue_paused("
    " queue text COLLATE \"C\" PRIMARY KEY,"
    " paused_at bigint NOT NULL);",
};

/* Job times (ms since the epoch: lease_until, run_at, created_at,
 * finished_at, paused_at) are the server's clock: every statement's time
 * is NOW($n), the statement's start on the server, and the caller passes
 * durations (a lease, a delay, an age). Processes on several hosts then
 * share one clock, so a host whose wall clock is off neither judges the
 * others' leases expired nor writes leases that are already expired. On a
 * fake clock (tests driving leases and delays by hand) $n is the caller's
 * time instead, as on SQLite; NULL selects the server's. */
#define SNOW "(extract(epoch from statement_timestamp()) * 1000)::bigint"
#define NOW(P) "COALESCE(" P "::bigint, " SNOW ")"

/* Due delayed jobs become waiting; expired leases go back to waiting (or
 * to failed after the last attempt). Rows locked by another transaction
 * are left for the next group rather than waited for. "id = ANY(ARRAY(
 * subquery))" keeps the plan on the primary key whatever the estimates (a
 * generic plan of "id IN (subquery)" hash-joined a scan of the whole table:
 * 6 ms a group with 40k rows, measured with pg_stat_statements). */
static const dsysi_pg_stmt st_house = {
    "dq_house",
    "WITH p AS (UPDATE dsys_jobs SET state = 1 WHERE id = ANY(ARRAY(SELECT id "
    "FROM dsys_jobs WHERE state = 2 AND run_at <= " NOW("$1") " FOR UPDATE "
    "SKIP LOCKED))), e AS (UPDATE dsys_jobs SET "
    "state = CASE WHEN attempts >= max_attempts THEN 5 ELSE 1 END, "
    "error = 'lease expired', lease_until = 0, run_at = " NOW("$1") ", "
    "finished_at = CASE WHEN attempts >= max_attempts THEN " NOW("$1") " ELSE 0 "
    "END WHERE id = ANY(ARRAY(SELECT id FROM dsys_jobs WHERE state = 3 AND "
    "lease_until <= " NOW("$1") " FOR UPDATE SKIP LOCKED))) SELECT 1",
    1};
/* n payloads of one queue in one statement (all or none), ids in order;
 * $8 the time, $9 the delay */
static const dsysi_pg_stmt st_insert = {
    "dq_insert",
    "INSERT INTO dsys_jobs(queue, payload, state, priority, max_attempts, "
    "backoff_base, backoff_cap, created_at, run_at) SELECT $1, t.p, $3, $4, "
    "$5, $6, $7, " NOW("$8") ", " NOW("$8") " + $9 FROM unnest($2::text[]) "
    "WITH ORDINALITY AS t(p, o) ORDER BY t.o RETURNING id",
    9};
/* a key inserted meanwhile by another transaction: wait for it, insert
 * nothing (no error, which would abort the group) */
static const dsysi_pg_stmt st_insert_key = {
    "dq_insert_key",
    "INSERT INTO dsys_jobs(queue, payload, state, priority, max_attempts, "
    "backoff_base, backoff_cap, created_at, run_at, idem_key) VALUES($1, $2, "
    "$3, $4, $5, $6, $7, " NOW("$8") ", " NOW("$8") " + $9, $10) ON CONFLICT (queue, idem_key) WHERE "
    "idem_key IS NOT NULL DO NOTHING RETURNING id",
    10};
static const dsysi_pg_stmt st_idem = {
    "dq_idem", "SELECT id FROM dsys_jobs WHERE queue = $1 AND idem_key = $2", 2};
/* $4 the lease, $5 the time. One queue: the partial index gives the rows in claim order, so LIMIT
 * stops early; with several, every ready row of them is sorted (use one
 * queue per worker for large backlogs). */
#define CLAIM_SQL(WHERE_QUEUE)                                               \
  "UPDATE dsys_jobs j SET state = 3, token = j.token + 1, "                  \
  "attempts = j.attempts + 1, worker = $3, lease_until = " NOW("$5") " + $4, " \
  "progress = 0, " \
  "progress_msg = NULL WHERE j.id = ANY(ARRAY(SELECT id FROM dsys_jobs "     \
  "WHERE " WHERE_QUEUE " AND state = 1 AND queue <> ALL (SELECT queue FROM " \
  "dsys_queue_paused) ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP "  \
  "LOCKED)) RETURNING " JCOLS_J
static const dsysi_pg_stmt st_claim1 = {"dq_claim1", CLAIM_SQL("queue = $1"), 5};
static const dsysi_pg_stmt st_claim = {"dq_claim", CLAIM_SQL("queue = ANY($1::text[])"), 5};
static const dsysi_pg_stmt st_complete = {
    "dq_complete",
    "UPDATE dsys_jobs SET state = 4, result = $3, finished_at = " NOW("$4") ", "
    "lease_until = 0, progress = 100 WHERE id = $1 AND state = 3 AND "
    "token = $2",
    4};
static const dsysi_pg_stmt st_complete_many = {
    "dq_complete_many",
    "UPDATE dsys_jobs j SET state = 4, result = v.r, finished_at = " NOW("$4") ", "
    "lease_until = 0, progress = 100 FROM unnest($1::bigint[], $2::bigint[], "
    "$3::text[]) AS v(id, tok, r) WHERE j.id = v.id AND j.state = 3 AND "
    "j.token = v.tok RETURNING j.id",
    4};
static const dsysi_pg_stmt st_heartbeat_many = {
    "dq_heartbeat_many",
    "UPDATE dsys_jobs j SET lease_until = " NOW("$4") " + v.l FROM "
    "unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(id, tok, l) WHERE "
    "j.id = v.id AND j.state = 3 AND j.token = v.tok RETURNING j.id",
    4};
/* locked: nothing may change the row between this read and the update */
static const dsysi_pg_stmt st_getfail = {
    "dq_getfail",
    "SELECT attempts, max_attempts, backoff_base, backoff_cap FROM dsys_jobs "
    "WHERE id = $1 AND state = 3 AND token = $2 FOR UPDATE",
    2};
static const dsysi_pg_stmt st_retry = {
    "dq_retry",
    "UPDATE dsys_jobs SET state = $2, run_at = " NOW("$5") " + $3, error = $4, "
    "lease_until = 0 WHERE id = $1",
    5};
static const dsysi_pg_stmt st_dead = {
    "dq_dead",
    "UPDATE dsys_jobs SET state = 5, error = $2, finished_at = " NOW("$3") ", "
    "lease_until = 0 WHERE id = $1",
    3};
static const dsysi_pg_stmt st_heartbeat = {
    "dq_heartbeat",
    "UPDATE dsys_jobs SET lease_until = " NOW("$4") " + $3 WHERE id = $1 AND "
    "state = 3 AND token = $2",
    4};
static const dsysi_pg_stmt st_progress = {
    "dq_progress",
    "UPDATE dsys_jobs SET progress = $3, progress_msg = $4 WHERE id = $1 AND "
    "state = 3 AND token = $2",
    4};
static const dsysi_pg_stmt st_release = {
    "dq_release",
    "UPDATE dsys_jobs SET state = 1, attempts = attempts - 1, "
    "lease_until = 0, run_at = " NOW("$3") " WHERE id = $1 AND state = 3 AND "
    "token = $2",
    3};
static const dsysi_pg_stmt st_cancel = {
    "dq_cancel",
    "UPDATE dsys_jobs SET state = 6, finished_at = " NOW("$2") ", lease_until = 0 "
    "WHERE id = $1 AND state IN (1, 2, 3)",
    2};
static const dsysi_pg_stmt st_get = {
    "dq_get", "SELECT " JCOLS " FROM dsys_jobs WHERE id = $1", 1};
static const dsysi_pg_stmt st_exists = {
    "dq_exists", "SELECT state FROM dsys_jobs WHERE id = $1", 1};
static const dsysi_pg_stmt st_counts = {
    "dq_counts",
    "SELECT state, count(*) FROM dsys_jobs WHERE ($1::text IS NULL OR "
    "queue = $1) GROUP BY state",
    1};
static const dsysi_pg_stmt st_deadlist = {
    "dq_deadlist",
    "SELECT " JCOLS " FROM dsys_jobs WHERE state = 5 AND ($1::text IS NULL "
    "OR queue = $1) AND id > $2 ORDER BY id LIMIT $3",
    3};
static const dsysi_pg_stmt st_replay = {
    "dq_replay",
    "UPDATE dsys_jobs SET state = 1, attempts = 0, error = NULL, "
    "result = NULL, finished_at = 0, run_at = " NOW("$2") " WHERE id = $1 AND "
    "state IN (5, 6)",
    2};
static const dsysi_pg_stmt st_purge = {
    "dq_purge",
    "DELETE FROM dsys_jobs WHERE state IN (4, 5, 6) AND finished_at > 0 AND "
    "finished_at <= " NOW("$2") " - $1", /* $1 the age */
    2};
static const dsysi_pg_stmt st_queues = {
    "dq_queues",
    "SELECT name, state, n, paused_at FROM (SELECT queue AS name, state, "
    "count(*) AS n, 0::bigint AS paused_at FROM dsys_jobs GROUP BY queue, "
    "state UNION ALL SELECT queue, 0, 0, paused_at FROM dsys_queue_paused) "
    "s ORDER BY name",
    0};
static const dsysi_pg_stmt st_pause = {
    "dq_pause",
    "INSERT INTO dsys_queue_paused(queue, paused_at) VALUES($1, " NOW("$2") ") "
    "ON CONFLICT (queue) DO NOTHING",
    2};
static const dsysi_pg_stmt st_resume = {
    "dq_resume", "DELETE FROM dsys_queue_paused WHERE queue = $1", 1};
static const dsysi_pg_stmt st_purgedead = {
    "dq_purgedead",
    "DELETE FROM dsys_jobs WHERE state = 5 AND finished_at > 0 AND "
    "finished_at <= " NOW("$3") " - $1 AND ($2::text IS NULL OR queue = $2)",
    3};

#define NOTIFY_CHANNEL "dsys_queue"

typedef struct pq {
  dsysi_pg *pool;
  char *url;            /* full URI (for the listener) */
  char self[24];        /* this handle's id, the payload of its NOTIFYs */
  int server_clock;     /* not a fake clock: job times are the server's */
  /* listener */
  void (*wake)(void *);
  void *wake_ud;
  pthread_t th;
  int running;
  int stop_fd[2];
} pq;

/* The group being run by this thread: the front end runs each group
 * wholly on one thread (begin, ops, commit), up to GROUPS of them at once
 * per handle, each on its own pooled connection. */
#define GROUPS 4
typedef struct group {
  dsysi_pg_conn *c; /* between begin and commit / rollback */
  int64_t now;      /* the group's time on the caller's clock */
  int server_clock; /* job times on the server's clock (NOW($n) = NULL) */
  int begun;        /* BEGIN was sent (with the group's first statement) */
  int ready;        /* the group made jobs claimable: NOTIFY at commit */
  int broken;       /* an op changed rows it could not report: roll back */
} group;
static __thread group G;

/* ---- helpers ---- */

#define I64 DSYSI_PG_I64

/* The NOW($n) parameter: NULL for the server's clock, else the group's
 * time (buf: 24 bytes). */
static const char *now_arg(char *buf) {
  if (G.server_clock) return NULL;
  snprintf(buf, 24, "%lld", (long long)G.now);
  return buf;
}

/* PostgreSQL rejects invalid UTF-8 with an error that would abort the
 * group's transaction: refuse such text before sending it. */
static int utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    if (*p < 0x80) {
      p++;
      continue;
    }
    int n = (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0 || (n == 1 && *p < 0xC2) || (n == 3 && *p > 0xF4)) return 0;
    unsigned cp = *p & (0x3F >> n);
    for (int i = 1; i <= n; i++) {
      if ((p[i] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      return 0;
    p += n + 1;
  }
  return 1;
}

static int texts_ok(const char *const *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] && !utf8_ok(v[i])) return 0;
  return 1;
}

/* Append a text[] literal element, quoted and escaped. */
static void arr_elem(dsysi_buf *b, const char *s, int first) {
  if (!first) dsysi_buf_append(b, ",", 1);
  if (!s) {
    dsysi_buf_puts(b, "NULL");
    return;
  }
  dsysi_buf_append(b, "\"", 1);
  for (const char *p = s; *p;) {
    size_t k = strcspn(p, "\"\\");
    dsysi_buf_append(b, p, k);
    p += k;
    if (*p) {
      char esc[2] = {'\\', *p++};
      dsysi_buf_append(b, esc, 2);
    }
  }
  dsysi_buf_append(b, "\"", 1);
}

/* A text[] literal of n strings (NULL = SQL NULL); NULL when out of memory. */
static char *text_array(const char *const *v, size_t n) {
  dsysi_buf b = {0};
  dsysi_buf_append(&b, "{", 1);
  for (size_t i = 0; i < n; i++) arr_elem(&b, v[i], i == 0);
  dsysi_buf_append(&b, "}", 1);
  if (b.oom) {
    dsysi_buf_free(&b);
    return NULL;
  }
  return dsysi_buf_steal(&b, NULL);
}

static int64_t col64(const PGresult *r, int row, int col) {
  return dsysi_pg_int64(r, row, col);
}

static dsys_job *row_job(const PGresult *r, int row) {
  static const int scol[] = {1, 2, 8, 11, 12, 13, 14};
  dsys_job j = {0};
  const char *s[7];
  for (int i = 0; i < 7; i++)
    s[i] = PQgetisnull(r, row, scol[i]) ? NULL : PQgetvalue(r, row, scol[i]);
  j.id = col64(r, row, 0);
  j.queue = s[0];
  j.payload = s[1];
  j.state = (int32_t)col64(r, row, 3);
  j.priority = (int32_t)col64(r, row, 4);
  j.attempts = (int32_t)col64(r, row, 5);
  j.max_attempts = (int32_t)col64(r, row, 6);
  j.token = col64(r, row, 7);
  j.worker = s[2];
  j.lease_until = col64(r, row, 9);
  j.progress = (int32_t)col64(r, row, 10);
  j.progress_msg = s[3];
  j.result = s[4];
  j.error = s[5];
  j.idempotency_key = s[6];
  j.created_at = col64(r, row, 15);
  j.run_at = col64(r, row, 16);
  j.finished_at = col64(r, row, 17);
  return dsys_job_dup(&j);
}

/* BEGIN, housekeeping and the group's first statement in one round trip
 * (libpq pipeline mode; both statements already prepared on G.c). */
static int exec_pipelined(const dsysi_pg_stmt *st, const char *const *params, PGresult **res) {
  PGconn *pg = G.c->pg;
  char nv[24];
  const char *hp[] = {now_arg(nv)};
  if (!PQenterPipelineMode(pg)) return DSYS_EUNAVAIL;
  int sent = PQsendQueryParams(pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) &&
             PQsendQueryPrepared(pg, st_house.name, 1, hp, NULL, NULL, 0) &&
             PQsendQueryPrepared(pg, st->name, st->nparams, params, NULL, NULL, 0) &&
             PQpipelineSync(pg);
  int e = sent ? 0 : DSYS_EUNAVAIL;
  /* each query's results end with NULL; then the sync point */
  for (int i = 0; i < 3 && sent; i++) {
    PGresult *r;
    while ((r = PQgetResult(pg))) {
      int re = dsysi_pg_result_err(pg, r); /* aborted by an earlier error: EDB */
      if (!e && re) e = re;
      if (i == 2 && !e && res && !*res) *res = r;
      else PQclear(r);
    }
  }
  if (sent) {
    PGresult *r = PQgetResult(pg);
    if (!r) e = e ? e : DSYS_EUNAVAIL;
    else if (PQresultStatus(r) != PGRES_PIPELINE_SYNC && !e) e = DSYS_EDB;
    PQclear(r);
  }
  /* fails when results are left (the connection is then given up at
   * release: it is not idle) */
  if (!PQexitPipelineMode(pg) && !e) e = DSYS_EUNAVAIL;
  if (e && res) {
    PQclear(*res);
    *res = NULL;
  }
  return e;
}

/* The group's first statement also begins its transaction. */
static int exec_first(const dsysi_pg_stmt *st, const char *const *params, PGresult **res) {
  G.begun = 1;
  if (dsysi_pg_is_prepared(G.c, &st_house) && dsysi_pg_is_prepared(G.c, st))
    return exec_pipelined(st, params, res);
  /* first use on this connection: prepare them on the way. The plans of
   * prepared statements are cached, and one made while the table was
   * small scans it (measured: housekeeping at 1 ms a group, a scan of the
   * whole table, after a run that started empty): every statement here
   * has an index to use, so this connection never scans. */
  char a[24];
  const char *pv[] = {now_arg(a)};
  int e = dsysi_pg_is_prepared(G.c, &st_house) ? 0 : dsysi_pg_run(G.c, "SET enable_seqscan = off");
  if (!e) e = dsysi_pg_run(G.c, "BEGIN");
  if (!e) e = dsysi_pg_exec(G.c, &st_house, pv, NULL);
  if (!e) e = dsysi_pg_exec(G.c, st, params, res);
  return e;
}

static int exec(pq *q, const dsysi_pg_stmt *st, const char *const *params, PGresult **res) {
  (void)q;
  if (res) *res = NULL;
  if (!G.c) return DSYS_EUNAVAIL;
  if (!G.begun) return exec_first(st, params, res);
  return dsysi_pg_exec(G.c, st, params, res);
}

/* Rows changed by the last command of r. */
static int64_t changed(PGresult *r) { return strtoll(PQcmdTuples(r), NULL, 10); }

/* Why a conditional change of job id changed nothing. */
static int not_active_reason(pq *q, int64_t id) {
  char a[24];
  const char *p[] = {I64(a, id)};
  PGresult *r = NULL;
  int e = exec(q, &st_exists, p, &r);
  if (!e) e = PQntuples(r) ? DSYS_ELEASE : DSYS_ENOTFOUND;
  PQclear(r);
  return e;
}

/* Run a conditional change of one job: 0 when it changed a row, else why
 * not (DSYS_ELEASE / DSYS_ENOTFOUND). */
static int change_one(pq *q, const dsysi_pg_stmt *st, const char *const *params, int64_t id) {
  PGresult *r = NULL;
  int e = exec(q, st, params, &r);
  if (!e && changed(r) == 0) e = not_active_reason(q, id);
  PQclear(r);
  return e;
}

/* ---- listener: NOTIFY from other handles wakes local workers ---- */

/* Connect and LISTEN; every wait is bounded (connect_timeout; 5 s for
 * the LISTEN, cut short by close) so that close never hangs on a server
 * that stopped answering. */
static PGconn *listen_connect(pq *q) {
  const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
  const char *vals[] = {q->url, "2", "libdistsys-listen", NULL};
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  int ok = c && PQstatus(c) == CONNECTION_OK && PQsendQuery(c, "LISTEN " NOTIFY_CHANNEL);
  while (ok && PQisBusy(c)) {
    struct pollfd pfd[2] = {{.fd = q->stop_fd[0], .events = POLLIN},
                            {.fd = PQsocket(c), .events = POLLIN}};
    if (poll(pfd, 2, 5000) <= 0 || pfd[0].revents || !PQconsumeInput(c)) ok = 0;
  }
  PGresult *r;
  while (ok && (r = PQgetResult(c))) {
    if (PQresultStatus(r) != PGRES_COMMAND_OK) ok = 0;
    PQclear(r);
  }
  if (ok) return c;
  PQfinish(c);
  return NULL;
}

static void *listen_main(void *p) {
  pq *q = p;
  PGconn *c = NULL;
  for (;;) {
    if (!c && (c = listen_connect(q)))
      q->wake(q->wake_ud); /* notifications may have been missed meanwhile */
    struct pollfd pfd[2] = {{.fd = q->stop_fd[0], .events = POLLIN},
                            {.fd = c ? PQsocket(c) : -1, .events = POLLIN}};
    int n = poll(pfd, 2, c ? -1 : 1000); /* reconnect after a second */
    if (n < 0 && errno != EINTR) break;
    if (pfd[0].revents) break;
    if (!c || !pfd[1].revents) continue;
    if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) {
      PQfinish(c);
      c = NULL;
      continue;
    }
    int wake = 0;
    PGnotify *nt;
    while ((nt = PQnotifies(c))) {
      if (strcmp(nt->extra, q->self)) wake = 1; /* ours woke locals already */
      PQfreemem(nt);
    }
    if (wake) q->wake(q->wake_ud);
  }
  PQfinish(c);
  return NULL;
}

static void pq_set_wake(void *p, void (*wake)(void *ud), void *ud) {
  pq *q = p;
  if (q->running || !wake) return;
  q->wake = wake;
  q->wake_ud = ud;
  if (pipe(q->stop_fd)) return; /* no listener: workers poll */
  if (pthread_create(&q->th, NULL, listen_main, q)) {
    close(q->stop_fd[0]);
    close(q->stop_fd[1]);
    return;
  }
  q->running = 1;
}

/* ---- open / close / groups ---- */

static void pq_close(void *p) {
  pq *q = p;
  if (q->running) {
    if (write(q->stop_fd[1], "x", 1) != 1) { /* cannot happen: fresh pipe */
    }
    pthread_join(q->th, NULL);
    close(q->stop_fd[0]);
    close(q->stop_fd[1]);
    q->running = 0;
  }
  dsysi_pg_close(q->pool); /* no group runs: every connection is idle */
  free(q->url);
}

static int open_scheme(void *p, const char *scheme, const char *location,
                       const dsys_queue_options *o, char *err, size_t errlen) {
  pq *q = p;
  /* durability is the server's synchronous_commit */
  q->server_clock = !dsys_clock_is_fake(o->clock);
  size_t n = strlen(scheme) + 3 + strlen(location) + 1;
  if (!(q->url = malloc(n))) return DSYS_ENOMEM;
  snprintf(q->url, n, "%s://%s", scheme, location);
  uint64_t r;
  dsys_random_bytes(&r, sizeof r);
  snprintf(q->self, sizeof q->self, "%llx", (unsigned long long)r);
  /* a connection per concurrent group, and one more for a connection
   * being replaced while the old one is dropped */
  dsysi_pg_options po = {.max_conns = GROUPS + 1};
  int e = dsysi_pg_open(&q->pool, q->url, &po, err, errlen);
  if (!e)
    e = dsysi_pg_migrate(q->pool, "queue", migrations,
                         (int)(sizeof migrations / sizeof *migrations), err, errlen);
  if (e) {
    dsysi_pg_close(q->pool);
    q->pool = NULL;
    free(q->url);
    q->url = NULL;
  }
  return e;
}

static int pq_open(void *p, const char *location, const dsys_queue_options *o, char *err,
                   size_t errlen) {
  return open_scheme(p, "postgresql", location, o, err, errlen);
}

static int pq_open_alias(void *p, const char *location, const dsys_queue_options *o,
                         char *err, size_t errlen) {
  return open_scheme(p, "postgres", location, o, err, errlen);
}

static void end_group(void) {
  dsysi_pg_release(G.c); /* closed instead when broken or in a transaction */
  G.c = NULL;
}

static void pq_rollback(void *p) {
  (void)p;
  if (!G.c) return;
  if (PQtransactionStatus(G.c->pg) != PQTRANS_IDLE) dsysi_pg_run(G.c, "ROLLBACK");
  end_group();
}

/* BEGIN goes with the group's first statement (exec_first): a group costs
 * one round trip per op plus its COMMIT. */
static int pq_begin(void *p, int64_t now) {
  pq *q = p;
  G.ready = G.broken = G.begun = 0;
  G.now = now;
  G.server_clock = q->server_clock;
  int e = dsysi_pg_acquire(q->pool, &G.c);
  if (e) G.c = NULL;
  return e;
}

static int pq_commit(void *p) {
  pq *q = p;
  if (!G.c) return DSYS_EUNAVAIL;
  /* a statement failed and aborted the transaction: COMMIT would only
   * roll back (and report success) */
  if (G.broken) return DSYS_ENOMEM;
  if (PQtransactionStatus(G.c->pg) != PQTRANS_INTRANS)
    return PQstatus(G.c->pg) == CONNECTION_OK ? DSYS_EDB : DSYS_EUNAVAIL;
  char sql[96];
  if (G.ready)
    snprintf(sql, sizeof sql, "SELECT pg_notify('" NOTIFY_CHANNEL "', '%s'); COMMIT", q->self);
  else
    snprintf(sql, sizeof sql, "COMMIT");
  int e = dsysi_pg_run(G.c, sql);
  if (!e) end_group();
  return e; /* on error the front end calls rollback */
}

/* ---- operations (inside the group transaction) ---- */

static int pq_submit(void *p, const char *queue, const char *const *payloads, size_t n,
                     const dsys_submit_options *o, int64_t now, int64_t *ids, int *existed) {
  pq *q = p;
  *existed = 0;
  if (!utf8_ok(queue) || !texts_ok(payloads, n) ||
      (o->idempotency_key && !utf8_ok(o->idempotency_key)))
    return DSYS_EINVAL;
  int delayed = o->delay_ms > 0;
  char st_s[8], pr[24], ma[24], bb[24], bc[24], ca[24], ra[24];
  snprintf(st_s, sizeof st_s, "%d", delayed ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING);
  I64(pr, o->priority);
  I64(ma, o->max_attempts);
  I64(bb, o->backoff_base_ms);
  I64(bc, o->backoff_cap_ms);
  (void)now; /* G.now */
  const char *cn = now_arg(ca);
  I64(ra, delayed ? o->delay_ms : 0);
  PGresult *r = NULL;
  int e;
  if (o->idempotency_key) {
    const char *pv[] = {queue, payloads[0], st_s, pr, ma, bb, bc, cn, ra, o->idempotency_key};
    e = exec(q, &st_insert_key, pv, &r);
    if (!e && PQntuples(r) == 1) {
      ids[0] = col64(r, 0, 0);
    } else if (!e) {
      PQclear(r);
      r = NULL;
      const char *pk[] = {queue, o->idempotency_key};
      e = exec(q, &st_idem, pk, &r);
      if (!e && PQntuples(r) == 1) {
        ids[0] = col64(r, 0, 0);
        *existed = 1;
      } else if (!e) {
        e = DSYS_EDB; /* conflicted, yet not there: cannot happen */
      }
    }
    PQclear(r);
    if (!e && !*existed && !delayed) G.ready = 1;
    return e;
  }
  char *arr = text_array(payloads, n);
  if (!arr) return DSYS_ENOMEM;
  const char *pv[] = {queue, arr, st_s, pr, ma, bb, bc, cn, ra};
  e = exec(q, &st_insert, pv, &r);
  free(arr);
  if (!e && (size_t)PQntuples(r) != n) e = DSYS_EDB;
  if (!e) {
    /* a sequence hands out increasing ids in insertion order (t.o) */
    for (size_t i = 0; i < n; i++) ids[i] = col64(r, (int)i, 0);
    for (size_t i = 1; i < n; i++) /* RETURNING order is not promised: sort */
      for (size_t k = i; k > 0 && ids[k - 1] > ids[k]; k--) {
        int64_t t = ids[k];
        ids[k] = ids[k - 1];
        ids[k - 1] = t;
      }
    if (!delayed) G.ready = 1;
  }
  PQclear(r);
  return e;
}

static int job_cmp(const void *a, const void *b) {
  const dsys_job *x = *(dsys_job *const *)a, *y = *(dsys_job *const *)b;
  if (x->priority != y->priority) return x->priority > y->priority ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int pq_claim(void *p, const char *const *queues, size_t nqueues, const char *worker,
                    int64_t lease_until, size_t max, int64_t now, dsys_job **jobs, size_t *n) {
  pq *q = p;
  *n = 0;
  if (!texts_ok(queues, nqueues) || !utf8_ok(worker)) return DSYS_EINVAL;
  char *arr = nqueues > 1 ? text_array(queues, nqueues) : NULL;
  if (nqueues > 1 && !arr) return DSYS_ENOMEM;
  char mx[24], lu[24], nw[24];
  const char *pv[] = {arr ? arr : queues[0], I64(mx, max), worker, I64(lu, lease_until - now),
                      now_arg(nw)};
  PGresult *r = NULL;
  int e = exec(q, arr ? &st_claim : &st_claim1, pv, &r);
  free(arr);
  int rows = e ? 0 : PQntuples(r);
  for (int i = 0; i < rows && !e; i++) {
    if (!(jobs[i] = row_job(r, i))) e = DSYS_ENOMEM;
    else (*n)++;
  }
  PQclear(r);
  if (e) {
    /* the rows stay claimed in the transaction: fail the whole group
     * (commit refuses) rather than leave jobs leased to nobody */
    for (size_t i = 0; i < *n; i++) {
      free(jobs[i]);
      jobs[i] = NULL;
    }
    if (*n) G.broken = 1;
    *n = 0;
    return e;
  }
  qsort(jobs, *n, sizeof *jobs, job_cmp);
  return *n ? 0 : DSYS_EAGAIN;
}

static int pq_complete(void *p, int64_t id, int64_t token, const char *result, int64_t now) {
  pq *q = p;
  if (result && !utf8_ok(result)) return DSYS_EBADJSON;
  char a[24], b[24], c[24];
  (void)now; /* G.now */
  const char *pv[] = {I64(a, id), I64(b, token), result ? result : "null", now_arg(c)};
  return change_one(q, &st_complete, pv, id);
}

static int pq_heartbeat(void *p, int64_t id, int64_t token, int64_t lease_until) {
  pq *q = p;
  char a[24], b[24], c[24], d[24];
  const char *pv[] = {I64(a, id), I64(b, token), I64(c, lease_until - G.now), now_arg(d)};
  return change_one(q, &st_heartbeat, pv, id);
}

/* n completions and renewals: one statement for each kind present. Jobs
 * that changed are returned by id; the others are looked at one by one
 * (a stale token is rare). */
static int finish_kind(pq *q, dsys_queue_finish *f, size_t n, int kind, int64_t now) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += f[i].kind == kind;
  if (!k) return 0;
  dsysi_buf ids = {0}, toks = {0}, third = {0};
  int first = 1;
  dsysi_buf_append(&ids, "{", 1);
  dsysi_buf_append(&toks, "{", 1);
  dsysi_buf_append(&third, "{", 1);
  for (size_t i = 0; i < n; i++) {
    if (f[i].kind != kind) continue;
    dsysi_buf_printf(&ids, "%s%lld", first ? "" : ",", (long long)f[i].id);
    dsysi_buf_printf(&toks, "%s%lld", first ? "" : ",", (long long)f[i].token);
    if (kind == DSYS_QUEUE_FINISH_COMPLETE)
      arr_elem(&third, f[i].result ? f[i].result : "null", first);
    else
      dsysi_buf_printf(&third, "%s%lld", first ? "" : ",", (long long)(f[i].lease_until - now));
    first = 0;
  }
  dsysi_buf_append(&ids, "}", 1);
  dsysi_buf_append(&toks, "}", 1);
  dsysi_buf_append(&third, "}", 1);
  int e = ids.oom || toks.oom || third.oom ? DSYS_ENOMEM : 0;
  PGresult *r = NULL;
  if (!e) {
    char nw[24];
    const char *pv[] = {ids.data, toks.data, third.data, now_arg(nw)};
    e = exec(q, kind == DSYS_QUEUE_FINISH_COMPLETE ? &st_complete_many : &st_heartbeat_many, pv,
             &r);
  }
  dsysi_buf_free(&ids);
  dsysi_buf_free(&toks);
  dsysi_buf_free(&third);
  if (e) return e;
  int rows = PQntuples(r);
  for (size_t i = 0; i < n; i++) {
    if (f[i].kind != kind) continue;
    int hit = 0;
    for (int row = 0; row < rows && !hit; row++) hit = col64(r, row, 0) == f[i].id;
    f[i].rc = hit ? 0 : not_active_reason(q, f[i].id);
  }
  PQclear(r);
  return 0;
}

static int pq_finish_many(void *p, dsys_queue_finish *f, size_t n, int64_t now) {
  pq *q = p;
  /* one UPDATE changes a row once: a job named twice (two outcomes of one
   * job in a group) goes one by one, in order */
  int dup = 0;
  for (size_t i = 0; i < n && !dup; i++) {
    if (f[i].kind == DSYS_QUEUE_FINISH_COMPLETE && f[i].result && !utf8_ok(f[i].result))
      dup = 1;
    for (size_t k = 0; k < i && !dup; k++) dup = f[k].id == f[i].id;
  }
  if (dup) {
    for (size_t i = 0; i < n; i++)
      f[i].rc = f[i].kind == DSYS_QUEUE_FINISH_COMPLETE
                    ? pq_complete(q, f[i].id, f[i].token, f[i].result, now)
                    : pq_heartbeat(q, f[i].id, f[i].token, f[i].lease_until);
    return 0;
  }
  int e = finish_kind(q, f, n, DSYS_QUEUE_FINISH_COMPLETE, now);
  if (!e) e = finish_kind(q, f, n, DSYS_QUEUE_FINISH_HEARTBEAT, now);
  return e;
}

static int pq_fail(void *p, int64_t id, int64_t token, const char *msg, int64_t now,
                   int *dead) {
  pq *q = p;
  *dead = 0;
  if (!utf8_ok(msg)) return DSYS_EINVAL;
  char a[24], b[24], c[24], d[24];
  (void)now; /* G.now */
  const char *pv[] = {I64(a, id), I64(b, token)};
  PGresult *r = NULL;
  int e = exec(q, &st_getfail, pv, &r);
  if (e) return e;
  if (PQntuples(r) != 1) {
    PQclear(r);
    return not_active_reason(q, id);
  }
  int attempts = (int)col64(r, 0, 0), maxa = (int)col64(r, 0, 1);
  int64_t base = col64(r, 0, 2), cap = col64(r, 0, 3);
  PQclear(r);
  if (attempts >= maxa) {
    const char *pd[] = {a, msg, now_arg(c)};
    e = exec(q, &st_dead, pd, NULL);
    if (!e) *dead = 1;
    return e;
  }
  int64_t delay = dsys_queue_backoff_ms(attempts, base, cap);
  char s[8];
  snprintf(s, sizeof s, "%d", delay > 0 ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING);
  const char *pr[] = {a, s, I64(c, delay), msg, now_arg(d)};
  e = exec(q, &st_retry, pr, NULL);
  if (!e && delay <= 0) G.ready = 1;
  return e;
}

static int pq_progress(void *p, int64_t id, int64_t token, int32_t percent,
                       const char *message) {
  pq *q = p;
  if (message && !utf8_ok(message)) return DSYS_EINVAL;
  char a[24], b[24], c[24];
  const char *pv[] = {I64(a, id), I64(b, token), I64(c, percent), message};
  return change_one(q, &st_progress, pv, id);
}

static int pq_release(void *p, int64_t id, int64_t token, int64_t now) {
  pq *q = p;
  char a[24], b[24], c[24];
  (void)now; /* G.now */
  const char *pv[] = {I64(a, id), I64(b, token), now_arg(c)};
  int e = change_one(q, &st_release, pv, id);
  if (!e) G.ready = 1;
  return e;
}

static int pq_cancel(void *p, int64_t id, int64_t now) {
  pq *q = p;
  char a[24], b[24];
  (void)now; /* G.now */
  const char *pv[] = {I64(a, id), now_arg(b)};
  int e = change_one(q, &st_cancel, pv, id);
  return e == DSYS_ELEASE ? DSYS_ESTATE : e;
}

static int pq_replay(void *p, int64_t id, int64_t now) {
  pq *q = p;
  char a[24], b[24];
  (void)now; /* G.now */
  const char *pv[] = {I64(a, id), now_arg(b)};
  int e = change_one(q, &st_replay, pv, id);
  if (!e) G.ready = 1;
  return e == DSYS_ELEASE ? DSYS_ESTATE : e;
}

static int pq_get(void *p, int64_t id, dsys_job **out) {
  pq *q = p;
  char a[24];
  const char *pv[] = {I64(a, id)};
  PGresult *r = NULL;
  int e = exec(q, &st_get, pv, &r);
  if (!e && PQntuples(r) != 1) e = DSYS_ENOTFOUND;
  if (!e && !(*out = row_job(r, 0))) e = DSYS_ENOMEM;
  PQclear(r);
  return e;
}

static void count_into(dsys_job_counts *c, int state, int64_t n) {
  switch (state) {
  case DSYS_JOB_WAITING: c->waiting = n; break;
  case DSYS_JOB_DELAYED: c->delayed = n; break;
  case DSYS_JOB_ACTIVE: c->active = n; break;
  case DSYS_JOB_COMPLETED: c->completed = n; break;
  case DSYS_JOB_FAILED: c->failed = n; break;
  case DSYS_JOB_CANCELED: c->canceled = n; break;
  default: break;
  }
}

static int pq_counts(void *p, const char *queue, dsys_job_counts *out) {
  pq *q = p;
  if (queue && !utf8_ok(queue)) return DSYS_EINVAL;
  const char *pv[] = {queue};
  PGresult *r = NULL;
  int e = exec(q, &st_counts, pv, &r);
  memset(out, 0, sizeof *out);
  for (int i = 0; !e && i < PQntuples(r); i++)
    count_into(out, (int)col64(r, i, 0), col64(r, i, 1));
  PQclear(r);
  return e;
}

static int pq_list_dead(void *p, const char *queue, int64_t after_id, size_t limit,
                        dsys_job ***jobs, size_t *n) {
  pq *q = p;
  *jobs = NULL;
  *n = 0;
  if (queue && !utf8_ok(queue)) return DSYS_EINVAL;
  char a[24], b[24];
  const char *pv[] = {queue, I64(a, after_id), I64(b, limit)};
  PGresult *r = NULL;
  int e = exec(q, &st_deadlist, pv, &r);
  if (e) return e;
  size_t rows = (size_t)PQntuples(r), k = 0;
  dsys_job **arr = calloc(rows ? rows : 1, sizeof *arr);
  if (!arr) e = DSYS_ENOMEM;
  for (; !e && k < rows; k++)
    if (!(arr[k] = row_job(r, (int)k))) e = DSYS_ENOMEM;
  PQclear(r);
  if (e) {
    dsys_job_list_free(arr, k);
    return e;
  }
  *jobs = arr;
  *n = rows;
  return 0;
}

static int delete_count(pq *q, const dsysi_pg_stmt *st, const char *const *pv,
                        int64_t *removed) {
  PGresult *r = NULL;
  int e = exec(q, st, pv, &r);
  if (!e) *removed = changed(r);
  PQclear(r);
  return e;
}

static int pq_purge(void *p, int64_t before, int64_t *removed) {
  char a[24], b[24];
  const char *pv[] = {I64(a, G.now - before), now_arg(b)};
  return delete_count(p, &st_purge, pv, removed);
}

static int pq_purge_dead(void *p, const char *queue, int64_t before, int64_t *removed) {
  if (queue && !utf8_ok(queue)) return DSYS_EINVAL;
  char a[24], b[24];
  const char *pv[] = {I64(a, G.now - before), queue, now_arg(b)};
  return delete_count(p, &st_purgedead, pv, removed);
}

static int pq_list_queues(void *p, dsys_queue_info **out, size_t *n) {
  pq *q = p;
  *out = NULL;
  *n = 0;
  PGresult *r = NULL;
  int e = exec(q, &st_queues, NULL, &r);
  if (e) return e;
  /* rows come ordered by name (COLLATE "C": bytewise): count the names,
   * then fill one block */
  int rows = PQntuples(r);
  size_t nv = 0, names = 0;
  for (int i = 0; i < rows; i++)
    if (!i || strcmp(PQgetvalue(r, i - 1, 0), PQgetvalue(r, i, 0))) {
      nv++;
      names += strlen(PQgetvalue(r, i, 0)) + 1;
    }
  dsys_queue_info *blk = nv ? malloc(nv * sizeof *blk + names) : NULL;
  if (nv && !blk) {
    PQclear(r);
    return DSYS_ENOMEM;
  }
  char *s = blk ? (char *)(blk + nv) : NULL;
  size_t k = 0;
  for (int i = 0; i < rows; i++) {
    const char *name = PQgetvalue(r, i, 0);
    if (!i || strcmp(PQgetvalue(r, i - 1, 0), name)) {
      dsys_queue_info *in = &blk[k++];
      memset(in, 0, sizeof *in);
      size_t l = strlen(name) + 1;
      memcpy(s, name, l);
      in->name = s;
      s += l;
    }
    dsys_queue_info *in = &blk[k - 1];
    int state = (int)col64(r, i, 1);
    if (state == 0) { /* the paused row */
      in->paused = 1;
      in->paused_at = col64(r, i, 3);
    } else {
      count_into(&in->counts, state, col64(r, i, 2));
    }
  }
  PQclear(r);
  *out = blk;
  *n = nv;
  return 0;
}

static int pq_set_paused(void *p, const char *queue, int paused, int64_t now) {
  pq *q = p;
  if (!utf8_ok(queue)) return DSYS_EINVAL;
  char a[24];
  (void)now; /* G.now */
  const char *pv[] = {queue, now_arg(a)};
  int e = exec(q, paused ? &st_pause : &st_resume, pv, NULL);
  if (!e && !paused) G.ready = 1;
  return e;
}

#define PG_OPS(NAME, OPEN)                                                   \
  {.version = DSYS_QUEUE_OPS_VERSION, .name = NAME, .state_size = sizeof(pq), \
   .open = OPEN, .close = pq_close, .begin = pq_begin, .commit = pq_commit,  \
   .rollback = pq_rollback, .submit = pq_submit, .claim = pq_claim,          \
   .heartbeat = pq_heartbeat, .progress = pq_progress,                       \
   .complete = pq_complete, .fail = pq_fail, .release = pq_release,          \
   .cancel = pq_cancel, .get = pq_get, .counts = pq_counts,                  \
   .list_dead = pq_list_dead, .replay = pq_replay, .purge = pq_purge,        \
   .list_queues = pq_list_queues, .set_paused = pq_set_paused,               \
   .purge_dead = pq_purge_dead, .finish_many = pq_finish_many,               \
   .set_wake = pq_set_wake, .concurrent_groups = GROUPS}

static const dsys_queue_ops pg_ops = PG_OPS("postgresql", pq_open);
static const dsys_queue_ops pg_alias_ops = PG_OPS("postgres", pq_open_alias);

const dsys_queue_ops *dsysi_queue_ops_pg(void) { return &pg_ops; }
DSYSI_PLUGINS(queue_pg) = {{"queue", &pg_ops}, {"queue", &pg_alias_ops}, {0}};
