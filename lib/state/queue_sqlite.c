/*
 * SQLite queue backend (dsys_queue_ops "sqlite"). One connection per
 * handle; the front end runs one group at a time on it: begin = BEGIN
 * IMMEDIATE plus housekeeping, then the ops, then COMMIT. Prepared
 * statements are kept for the life of the handle. Several processes may
 * share the file (WAL, busy timeout).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/queue.h>
#include <distsys/util.h>
#include "core/db.h"
#include "core/internal.h"
#include "core/json.h"
#include "core/plugin.h"
#include "state/store_int.h"
#include "state/queue_int.h"

enum {
  S_BEGIN, S_COMMIT, S_ROLLBACK,
  S_PROMOTE, S_EXPIRE, S_IDEM, S_INSERT, S_PICK, S_CLAIM, S_COMPLETE,
  S_GETFAIL, S_RETRY, S_DEAD, S_HEARTBEAT, S_PROGRESS, S_RELEASE, S_CANCEL,
  S_GET, S_EXISTS, S_COUNTS, S_COUNTS_ALL, S_DEADLIST, S_DEADLIST_ALL,
  S_REPLAY, S_PURGE, S_SAVEPOINT, S_RELEASE_SP, S_ROLLBACK_SP, S_QUEUES,
  S_PAUSE, S_RESUME, S_PURGEDEAD,
  /* generated (gen_sql): several rows per statement */
  S_INSERT_MANY, S_INSERT_FEW, S_CLAIM_MANY, S_COMPLETE_MANY, S_COUNT
};

/* Rows per statement of the generated statements. A statement's fixed
 * cost (cursors opened and freed, the halt, the reset and bindings: about
 * as much as changing one row of dsys_jobs, measured with callgrind) is
 * paid once for that many rows. */
enum { INSERT_MANY = 32, INSERT_FEW = 8, CLAIM_MANY = 32, COMPLETE_MANY = 16 };

#define JCOLS                                                               \
  "id, queue, payload, state, priority, attempts, max_attempts, token, "    \
  "worker, lease_until, progress, progress_msg, result, error, idem_key, "  \
  "created_at, run_at, finished_at"

#define COUNTS_SQL(q)                                                     \
  "SELECT 1, count(*) FROM dsys_jobs WHERE " q " state = 1 UNION ALL "     \
  "SELECT 2, count(*) FROM dsys_jobs WHERE " q " state = 2 UNION ALL "     \
  "SELECT 3, count(*) FROM dsys_jobs WHERE " q " state = 3 UNION ALL "     \
  "SELECT state, count(*) FROM dsys_jobs WHERE " q " state >= 4 "          \
  "GROUP BY state"

static const char *const sqls[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_PROMOTE] = "UPDATE dsys_jobs SET state = 1 WHERE state = 2 AND "
                  "run_at <= ?1",
    [S_EXPIRE] = "UPDATE dsys_jobs SET "
                 "state = CASE WHEN attempts >= max_attempts THEN 5 ELSE 1 END,"
                 " error = 'lease expired', lease_until = 0, run_at = ?1,"
                 " finished_at = CASE WHEN attempts >= max_attempts THEN ?1 "
                 "ELSE 0 END WHERE state = 3 AND lease_until <= ?1",
    [S_IDEM] = "SELECT id FROM dsys_jobs WHERE queue = ?1 AND idem_key = ?2",
    /* ?1-?8 as in the generated multi-row inserts (bind_insert_options),
     * then the payload and the idempotency key */
    [S_INSERT] = "INSERT INTO dsys_jobs(queue, payload, state, priority, "
                 "max_attempts, backoff_base, backoff_cap, idem_key, "
                 "created_at, run_at) VALUES(?1, ?9, ?2, ?3, ?4, ?5, ?6, ?10, "
                 "?7, ?8)",
    /* a paused queue hands out nothing (the subquery does not depend on
     * the row: SQLite runs it once per statement) */
    /* the whole row: the claimed job is built from it (no read back) */
    [S_PICK] = "SELECT " JCOLS " FROM dsys_jobs WHERE queue = ?1 AND "
               "state = 1 AND NOT EXISTS (SELECT 1 FROM dsys_queue_paused "
               "WHERE queue = ?1) ORDER BY priority DESC, id LIMIT ?2",
    /* no RETURNING: SQLite builds an ephemeral table for each statement
     * with one (measured: a third of a claim's time); the row is read
     * back by id (S_GET) instead */
    [S_CLAIM] = "UPDATE dsys_jobs SET state = 3, token = token + 1, "
                "attempts = attempts + 1, worker = ?2, lease_until = ?3, "
                "progress = 0, progress_msg = NULL WHERE id = ?1 AND "
                "state = 1",
    [S_COMPLETE] = "UPDATE dsys_jobs SET state = 4, result = ?3, "
                   "finished_at = ?4, lease_until = 0, progress = 100 "
                   "WHERE id = ?1 AND state = 3 AND token = ?2",
    [S_GETFAIL] = "SELECT attempts, max_attempts, backoff_base, backoff_cap "
                  "FROM dsys_jobs WHERE id = ?1 AND state = 3 AND token = ?2",
    [S_RETRY] = "UPDATE dsys_jobs SET state = ?2, run_at = ?3, error = ?4, "
                "lease_until = 0 WHERE id = ?1",
    [S_DEAD] = "UPDATE dsys_jobs SET state = 5, error = ?2, finished_at = ?3,"
               " lease_until = 0 WHERE id = ?1",
    [S_HEARTBEAT] = "UPDATE dsys_jobs SET lease_until = ?3 WHERE id = ?1 AND "
                    "state = 3 AND token = ?2",
    [S_PROGRESS] = "UPDATE dsys_jobs SET progress = ?3, progress_msg = ?4 "
                   "WHERE id = ?1 AND state = 3 AND token = ?2",
    [S_RELEASE] = "UPDATE dsys_jobs SET state = 1, attempts = attempts - 1, "
                  "lease_until = 0, run_at = ?3 WHERE id = ?1 AND state = 3 "
                  "AND token = ?2",
    [S_CANCEL] = "UPDATE dsys_jobs SET state = 6, finished_at = ?2, "
                 "lease_until = 0 WHERE id = ?1 AND state IN (1, 2, 3)",
    [S_GET] = "SELECT " JCOLS " FROM dsys_jobs WHERE id = ?1",
    [S_EXISTS] = "SELECT state FROM dsys_jobs WHERE id = ?1",
    /* one count per state, each through the partial index of its state
     * (migration 3): waiting, delayed, active, then the finished states */
    [S_COUNTS] = COUNTS_SQL("queue = ?1 AND"),
    [S_COUNTS_ALL] = COUNTS_SQL(""),
    [S_DEADLIST] = "SELECT " JCOLS " FROM dsys_jobs WHERE state = 5 AND "
                   "queue = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    [S_DEADLIST_ALL] = "SELECT " JCOLS " FROM dsys_jobs WHERE state = 5 AND "
                       "id > ?2 ORDER BY id LIMIT ?3",
    [S_REPLAY] = "UPDATE dsys_jobs SET state = 1, attempts = 0, error = NULL,"
                 " result = NULL, finished_at = 0, run_at = ?2 WHERE id = ?1 "
                 "AND state IN (5, 6)",
    /* "state >= 4" spelled out: SQLite uses a partial index only when the
     * query's terms contain its condition */
    [S_PURGE] = "DELETE FROM dsys_jobs WHERE state >= 4 AND "
                "state IN (4, 5, 6) AND finished_at > 0 AND finished_at <= ?1",
    [S_SAVEPOINT] = "SAVEPOINT dsys_many",
    [S_RELEASE_SP] = "RELEASE dsys_many",
    [S_ROLLBACK_SP] = "ROLLBACK TO dsys_many",
    /* one row per (queue, state) with jobs, one per paused queue; grouped
     * by name in sq_list_queues */
    [S_QUEUES] = "SELECT name, state, n, paused_at FROM ("
                 "SELECT queue AS name, 1 AS state, count(*) AS n, "
                 "0 AS paused_at FROM dsys_jobs WHERE state = 1 GROUP BY queue "
                 "UNION ALL SELECT queue, 2, count(*), 0 FROM dsys_jobs "
                 "WHERE state = 2 GROUP BY queue "
                 "UNION ALL SELECT queue, 3, count(*), 0 FROM dsys_jobs "
                 "WHERE state = 3 GROUP BY queue "
                 "UNION ALL SELECT queue, state, count(*), 0 FROM dsys_jobs "
                 "WHERE state >= 4 GROUP BY queue, state UNION ALL "
                 "SELECT queue, 0, 0, paused_at FROM dsys_queue_paused) "
                 "ORDER BY name",
    [S_PAUSE] = "INSERT OR IGNORE INTO dsys_queue_paused(queue, paused_at) "
                "VALUES(?1, ?2)",
    [S_RESUME] = "DELETE FROM dsys_queue_paused WHERE queue = ?1",
    [S_PURGEDEAD] = "DELETE FROM dsys_jobs WHERE state = 5 AND "
                    "finished_at > 0 AND finished_at <= ?1 AND "
                    "(?2 IS NULL OR queue = ?2)",
};

static const char *const migrations[] = {
    "CREATE TABLE dsys_jobs("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " queue TEXT NOT NULL,"
    " payload TEXT NOT NULL,"
    " state INTEGER NOT NULL,"
    " priority INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " max_attempts INTEGER NOT NULL,"
    " backoff_base INTEGER NOT NULL,"
    " backoff_cap INTEGER NOT NULL,"
    " token INTEGER NOT NULL DEFAULT 0,"
    " worker TEXT,"
    " lease_until INTEGER NOT NULL DEFAULT 0,"
    " progress INTEGER NOT NULL DEFAULT 0,"
    " progress_msg TEXT,"
    " result TEXT,"
    " error TEXT,"
    " idem_key TEXT,"
    " created_at INTEGER NOT NULL,"
    " run_at INTEGER NOT NULL,"
    " finished_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX dsys_jobs_claim ON dsys_jobs(queue, state, priority DESC, id);"
    "CREATE INDEX dsys_jobs_delayed ON dsys_jobs(run_at) WHERE state = 2;"
    "CREATE INDEX dsys_jobs_lease ON dsys_jobs(lease_until) WHERE state = 3;"
    "CREATE INDEX dsys_jobs_finished ON dsys_jobs(finished_at) "
    " WHERE finished_at > 0;"
    "CREATE UNIQUE INDEX dsys_jobs_idem ON dsys_jobs(queue, idem_key) "
    " WHERE idem_key IS NOT NULL;",
    /* 2: paused queues (dsys_queue_pause), a row per paused queue */
    "CREATE TABLE dsys_queue_paused("
    " queue TEXT PRIMARY KEY,"
    " paused_at INTEGER NOT NULL) WITHOUT ROWID;",
    /* 3: narrower indexes. A job changes state three times (submitted,
     * claimed, finished) and every index holding its state moved its
     * entry at each change: (queue, state, priority, id) took five b-tree
     * changes a job. The claim order is kept for waiting jobs only (an
     * entry when submitted, gone when claimed), and the finished jobs get
     * theirs once, with the queue and state for counting and purging;
     * dead letters (few) one more, in id order for listing them. */
    "DROP INDEX dsys_jobs_claim;"
    "DROP INDEX dsys_jobs_finished;"
    "CREATE INDEX dsys_jobs_wait ON dsys_jobs(queue, priority DESC, id) "
    " WHERE state = 1;"
    "CREATE INDEX dsys_jobs_done ON dsys_jobs(queue, state, finished_at) "
    " WHERE state >= 4;"
    "CREATE INDEX dsys_jobs_dead ON dsys_jobs(id) WHERE state = 5;",
};


typedef struct sq {
  sqlite3 *db;
  sqlite3_stmt *st[S_COUNT];
} sq;

/* The text of a generated statement (i >= S_INSERT_MANY) into buf. */
static const char *gen_sql(int i, char *buf, size_t cap) {
  size_t n = 0;
#define ADD(...) (n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__))
  switch (i) {
  case S_INSERT_MANY:
  case S_INSERT_FEW: {
    /* the options are the same for every row: ?1-?8
     * (bind_insert_options); payloads ?9... */
    int rows = i == S_INSERT_MANY ? INSERT_MANY : INSERT_FEW;
    ADD("INSERT INTO dsys_jobs(queue, payload, state, priority, max_attempts, "
        "backoff_base, backoff_cap, idem_key, created_at, run_at) VALUES");
    for (int r = 0; r < rows; r++)
      ADD("%s(?1, ?%d, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8)", r ? ", " : "",
          9 + r);
    break;
  }
  case S_CLAIM_MANY:
    /* ids picked under the same write lock; unused slots are NULL */
    ADD("UPDATE dsys_jobs SET state = 3, token = token + 1, "
        "attempts = attempts + 1, worker = ?1, lease_until = ?2, "
        "progress = 0, progress_msg = NULL WHERE state = 1 AND id IN (");
    for (int r = 0; r < CLAIM_MANY; r++) ADD("%s?%d", r ? ", " : "", 3 + r);
    ADD(")");
    break;
  case S_COMPLETE_MANY:
    /* (id, token, result) per row; unused rows have a NULL id */
    ADD("UPDATE dsys_jobs SET state = 4, result = v.column3, "
        "finished_at = ?1, lease_until = 0, progress = 100 FROM (VALUES ");
    for (int r = 0; r < COMPLETE_MANY; r++)
      ADD("%s(?%d, ?%d, ?%d)", r ? ", " : "", 2 + 3 * r, 3 + 3 * r,
          4 + 3 * r);
    ADD(") AS v WHERE dsys_jobs.id = v.column1 AND dsys_jobs.state = 3 "
        "AND dsys_jobs.token = v.column2");
    break;
  default:
    return NULL;
  }
#undef ADD
  return n < cap ? buf : NULL;
}

static sqlite3_stmt *stmt(sq *q, int i) {
  if (!q->st[i]) {
    char buf[4096];
    const char *sql = i < S_INSERT_MANY ? sqls[i] : gen_sql(i, buf, sizeof buf);
    if (!sql || sqlite3_prepare_v3(q->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                                   &q->st[i], NULL) != SQLITE_OK) {
      dsysi_log(DSYS_LOG_ERROR, "queue", "prepare: %s",
                sqlite3_errmsg(q->db));
      return NULL;
    }
    return q->st[i];
  }
  sqlite3_reset(q->st[i]);
  sqlite3_clear_bindings(q->st[i]);
  return q->st[i];
}

static int err_of(int rc) {
  int e = dsysi_db_err(rc);
  return e ? e : DSYS_EDB;
}

/* Run a statement to completion (no rows wanted). */
static int run(sqlite3_stmt *st) {
  if (!st) return DSYS_EDB;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : err_of(rc);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s) {
  if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, i);
}

/* A job from a row of JCOLS; claimed_by non-NULL: as the claim by that
 * worker will leave it (worker set, progress message cleared; the numbers
 * are set by the caller once the claim is done). */
static dsys_job *row_job_as(sqlite3_stmt *st, const char *claimed_by) {
  static const int scol[] = {1, 2, 8, 11, 12, 13, 14};
  size_t len[7], total = sizeof(dsys_job);
  const unsigned char *txt[7];
  for (int i = 0; i < 7; i++) {
    txt[i] = sqlite3_column_text(st, scol[i]);
    if (claimed_by && i == 2) txt[i] = (const unsigned char *)claimed_by;
    if (claimed_by && i == 3) txt[i] = NULL;
    len[i] = !txt[i] ? 0
             : claimed_by && i == 2 ? strlen(claimed_by)
                                    : (size_t)sqlite3_column_bytes(st, scol[i]);
    if (txt[i]) total += len[i] + 1;
  }
  dsys_job *j = malloc(total);
  if (!j) return NULL;
  char *p = (char *)(j + 1);
  const char *strs[7];
  for (int i = 0; i < 7; i++) {
    if (!txt[i]) {
      strs[i] = NULL;
      continue;
    }
    memcpy(p, txt[i], len[i] + 1);
    strs[i] = p;
    p += len[i] + 1;
  }
  j->id = sqlite3_column_int64(st, 0);
  j->queue = strs[0] ? strs[0] : "";
  j->payload = strs[1] ? strs[1] : "null";
  j->state = sqlite3_column_int(st, 3);
  j->priority = sqlite3_column_int(st, 4);
  j->attempts = sqlite3_column_int(st, 5);
  j->max_attempts = sqlite3_column_int(st, 6);
  j->token = sqlite3_column_int64(st, 7);
  j->worker = strs[2];
  j->lease_until = sqlite3_column_int64(st, 9);
  j->progress = sqlite3_column_int(st, 10);
  j->progress_msg = strs[3];
  j->result = strs[4];
  j->error = strs[5];
  j->idempotency_key = strs[6];
  j->created_at = sqlite3_column_int64(st, 15);
  j->run_at = sqlite3_column_int64(st, 16);
  j->finished_at = sqlite3_column_int64(st, 17);
  return j;
}

static dsys_job *row_job(sqlite3_stmt *st) { return row_job_as(st, NULL); }

/* ---- open / close / groups ---- */

static int sq_open(void *p, const char *location, const dsys_queue_options *o,
                   char *err, size_t errlen) {
  sq *q = p;
  int e = 0;
  if (!*location) return DSYS_EURL; /* "sqlite://" names no file */
  /* Two processes creating the same file at once can get SQLITE_BUSY
   * from the journal-mode switch without the busy handler: retry a while. */
  for (int attempt = 0; attempt < 50; attempt++) {
    if (attempt) usleep(20000);
    e = dsysi_db_open(location, o->full_sync ? 1 : 0, &q->db, err, errlen);
    if (!e) e = dsysi_db_migrate(q->db, "queue", migrations,
                                    (int)(sizeof migrations / sizeof *migrations),
                                    err, errlen);
    if (e) {
      sqlite3_close(q->db);
      q->db = NULL;
    }
    if (e != DSYS_EBUSY) break;
  }
  return e;
}

static void sq_close(void *p) {
  sq *q = p;
  for (int i = 0; i < S_COUNT; i++) sqlite3_finalize(q->st[i]);
  sqlite3_close(q->db);
}

static void sq_rollback(void *p) {
  sq *q = p;
  if (sqlite3_get_autocommit(q->db) == 0) run(stmt(q, S_ROLLBACK));
}

static int sq_begin(void *p, int64_t now) {
  sq *q = p;
  int e = run(stmt(q, S_BEGIN));
  if (!e) {
    /* Housekeeping once per transaction: due delayed jobs become waiting,
     * expired leases are reclaimed (both through partial indexes). */
    sqlite3_stmt *st = stmt(q, S_PROMOTE);
    if (st) sqlite3_bind_int64(st, 1, now);
    e = run(st);
    st = stmt(q, S_EXPIRE);
    if (!e && st) sqlite3_bind_int64(st, 1, now);
    if (!e) e = run(st);
  }
  if (e) sq_rollback(q);
  return e;
}

static int sq_commit(void *p) {
  sq *q = p;
  /* SQLite may have rolled the whole transaction back (I/O error, full
   * disk): then there is nothing to commit. */
  if (sqlite3_get_autocommit(q->db)) return DSYS_EDB;
  return run(stmt(q, S_COMMIT));
}

/* ---- operations (run inside the group transaction) ---- */

static int not_active_reason(sq *q, int64_t id) {
  sqlite3_stmt *st = stmt(q, S_EXISTS);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return DSYS_ELEASE;
  return rc == SQLITE_DONE ? DSYS_ENOTFOUND : err_of(rc);
}

static int changed_or(sq *q, int e, int64_t id) {
  if (e) return e;
  return sqlite3_changes(q->db) ? 0 : not_active_reason(q, id);
}

/* The parameters every insert statement shares: ?1 queue, ?2 state,
 * ?3 priority, ?4 max_attempts, ?5-?6 backoff, ?7 created_at, ?8 run_at. */
static void bind_insert_options(sqlite3_stmt *st, const char *queue,
                                const dsys_submit_options *o, int64_t now) {
  int64_t delay = o->delay_ms;
  sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, delay > 0 ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING);
  sqlite3_bind_int(st, 3, o->priority);
  sqlite3_bind_int(st, 4, o->max_attempts);
  sqlite3_bind_int64(st, 5, o->backoff_base_ms);
  sqlite3_bind_int64(st, 6, o->backoff_cap_ms);
  sqlite3_bind_int64(st, 7, now);
  sqlite3_bind_int64(st, 8, now + (delay > 0 ? delay : 0));
}

static int insert_one(sq *q, const char *queue, const char *payload,
                      const dsys_submit_options *o, int64_t now,
                      int64_t *id) {
  sqlite3_stmt *st = stmt(q, S_INSERT);
  if (!st) return DSYS_EDB;
  bind_insert_options(st, queue, o, now);
  sqlite3_bind_text(st, 9, payload, -1, SQLITE_STATIC);
  bind_text_or_null(st, 10, o->idempotency_key);
  int e = run(st);
  if (!e) *id = sqlite3_last_insert_rowid(q->db);
  return e;
}

/* k rows (INSERT_MANY or INSERT_FEW) in one statement. The rows of one
 * INSERT get consecutive ids: each new id is one above the largest the
 * table ever had (AUTOINCREMENT), and the write lock is held. */
static int insert_rows(sq *q, const char *queue, const char *const *payloads,
                       size_t k, const dsys_submit_options *o, int64_t now,
                       int64_t *ids) {
  sqlite3_stmt *st = stmt(q, k == INSERT_MANY ? S_INSERT_MANY : S_INSERT_FEW);
  if (!st) return DSYS_EDB;
  bind_insert_options(st, queue, o, now);
  for (size_t r = 0; r < k; r++)
    sqlite3_bind_text(st, 9 + (int)r, payloads[r], -1, SQLITE_STATIC);
  int e = run(st);
  if (e) return e;
  if ((size_t)sqlite3_changes(q->db) != k) return DSYS_EDB;
  int64_t last = sqlite3_last_insert_rowid(q->db);
  for (size_t r = 0; r < k; r++) ids[r] = last - (int64_t)(k - 1 - r);
  return 0;
}

static int sq_submit(void *p, const char *queue, const char *const *payloads,
                     size_t n, const dsys_submit_options *o, int64_t now,
                     int64_t *ids, int *existed) {
  sq *q = p;
  *existed = 0;
  if (o->idempotency_key) {
    sqlite3_stmt *st = stmt(q, S_IDEM);
    if (!st) return DSYS_EDB;
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, o->idempotency_key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      ids[0] = sqlite3_column_int64(st, 0);
      *existed = 1;
      sqlite3_reset(st);
      return 0;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return err_of(rc);
  }
  if (n == 1) return insert_one(q, queue, payloads[0], o, now, &ids[0]);
  /* Several rows: a savepoint makes them all-or-nothing. */
  int e = run(stmt(q, S_SAVEPOINT));
  if (e) return e;
  for (size_t i = 0; i < n && !e;) {
    size_t k = n - i >= INSERT_MANY ? INSERT_MANY
               : n - i >= INSERT_FEW ? INSERT_FEW : 1;
    e = k == 1 ? insert_one(q, queue, payloads[i], o, now, &ids[i])
               : insert_rows(q, queue, payloads + i, k, o, now, ids + i);
    i += k;
  }
  if (e) {
    run(stmt(q, S_ROLLBACK_SP));
    run(stmt(q, S_RELEASE_SP));
    return e;
  }
  return run(stmt(q, S_RELEASE_SP));
}

static int sq_get(void *p, int64_t id, dsys_job **out);
static int sq_heartbeat(void *p, int64_t id, int64_t token,
                        int64_t lease_until);

typedef struct cand {
  int64_t id;
  int prio;
  dsys_job *job; /* as claimed, once the claim is done */
} cand;

static int cand_cmp(const void *a, const void *b) {
  const cand *x = a, *y = b;
  if (x->prio != y->prio) return x->prio > y->prio ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int sq_claim(void *p, const char *const *queues, size_t nqueues,
                    const char *worker, int64_t lease_until, size_t max,
                    int64_t now, dsys_job **jobs, size_t *n) {
  sq *q = p;
  (void)now;
  *n = 0;
  cand one[1], *c = one;
  size_t cap = nqueues * max, nc = 0;
  if (cap > 1 && !(c = malloc(cap * sizeof *c))) return DSYS_ENOMEM;
  int e = 0;
  for (size_t i = 0; i < nqueues && !e; i++) {
    sqlite3_stmt *st = stmt(q, S_PICK);
    if (!st) {
      e = DSYS_EDB;
      break;
    }
    sqlite3_bind_text(st, 1, queues[i], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (!(c[nc].job = row_job_as(st, worker))) {
        e = DSYS_ENOMEM;
        break;
      }
      c[nc].id = c[nc].job->id;
      c[nc].prio = c[nc].job->priority;
      nc++;
    }
    if (e) {
      sqlite3_reset(st);
      break;
    }
    if (rc != SQLITE_DONE) e = err_of(rc);
    sqlite3_reset(st);
  }
  size_t picked = nc;
  if (!e && nqueues > 1) {
    qsort(c, nc, sizeof *c, cand_cmp);
    /* a queue named twice picks its jobs twice: keep each once (equal
     * candidates are adjacent, and the IN list below must not repeat) */
    size_t k = 0;
    for (size_t i = 0; i < nc; i++) {
      if (k && c[k - 1].id == c[i].id) {
        free(c[i].job);
        continue;
      }
      c[k++] = c[i];
    }
    nc = picked = k;
  }
  if (nc > max) nc = max;
  /* Several claims: a savepoint makes the op all-or-nothing. */
  int sp = !e && nc > 1;
  if (sp) e = run(stmt(q, S_SAVEPOINT));
  for (size_t i = 0; i < nc && !e;) {
    /* up to CLAIM_MANY jobs per UPDATE; the write lock is held since the
     * pick, so every picked row is still waiting: each is changed */
    size_t k = nc - i < CLAIM_MANY ? nc - i : CLAIM_MANY;
    sqlite3_stmt *st = stmt(q, k == 1 ? S_CLAIM : S_CLAIM_MANY);
    if (!st) {
      e = DSYS_EDB;
      break;
    }
    if (k == 1) {
      sqlite3_bind_int64(st, 1, c[i].id);
      sqlite3_bind_text(st, 2, worker, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 3, lease_until);
    } else {
      sqlite3_bind_text(st, 1, worker, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 2, lease_until);
      for (size_t r = 0; r < k; r++)
        sqlite3_bind_int64(st, 3 + (int)r, c[i + r].id);
    }
    if ((e = run(st))) break;
    if ((size_t)sqlite3_changes(q->db) != k) {
      e = DSYS_EDB; /* not the rows picked: give nothing out */
      break;
    }
    /* the rows are the ones picked, changed as the UPDATE did */
    for (size_t r = 0; r < k; r++, i++) {
      dsys_job *j = c[i].job;
      c[i].job = NULL;
      j->state = DSYS_JOB_ACTIVE;
      j->token++;
      j->attempts++;
      j->lease_until = lease_until;
      j->progress = 0;
      jobs[(*n)++] = j;
    }
  }
  for (size_t i = 0; i < picked; i++) free(c[i].job); /* not claimed */
  if (sp) {
    if (e) run(stmt(q, S_ROLLBACK_SP));
    int e2 = run(stmt(q, S_RELEASE_SP));
    if (!e) e = e2;
  }
  if (c != one) free(c);
  if (e) {
    for (size_t i = 0; i < *n; i++) {
      free(jobs[i]);
      jobs[i] = NULL;
    }
    *n = 0;
    return e;
  }
  return *n ? 0 : DSYS_EAGAIN;
}

static int sq_complete(void *p, int64_t id, int64_t token, const char *result,
                       int64_t now) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_COMPLETE);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, token);
  sqlite3_bind_text(st, 3, result ? result : "null", -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, now);
  return changed_or(q, run(st), id);
}

/* k (2..COMPLETE_MANY) completions of distinct jobs in one statement.
 * Returns 0 when every one was applied; otherwise nothing is applied
 * (the savepoint is rolled back) and the caller goes one by one, which
 * tells each its own reason. */
static int complete_rows(sq *q, dsys_queue_finish *f, size_t k, int64_t now) {
  int e = run(stmt(q, S_SAVEPOINT));
  if (e) return e;
  sqlite3_stmt *st = stmt(q, S_COMPLETE_MANY);
  if (!st) e = DSYS_EDB;
  if (!e) {
    sqlite3_bind_int64(st, 1, now);
    for (size_t r = 0; r < k; r++) {
      sqlite3_bind_int64(st, 2 + 3 * (int)r, f[r].id);
      sqlite3_bind_int64(st, 3 + 3 * (int)r, f[r].token);
      sqlite3_bind_text(st, 4 + 3 * (int)r, f[r].result ? f[r].result : "null",
                        -1, SQLITE_STATIC);
    }
    e = run(st);
    /* ids are distinct: each row matched at most once */
    if (!e && (size_t)sqlite3_changes(q->db) != k) e = DSYS_ELEASE;
  }
  if (e) run(stmt(q, S_ROLLBACK_SP));
  int e2 = run(stmt(q, S_RELEASE_SP));
  return e ? e : e2;
}

/* Runs of completions of distinct jobs go COMPLETE_MANY to a statement;
 * renewals, and a completion of a job already in the run, one by one (in
 * order, so each gets what complete / heartbeat would return). */
static int sq_finish_many(void *p, dsys_queue_finish *f, size_t n,
                          int64_t now) {
  sq *q = p;
  for (size_t i = 0; i < n;) {
    size_t k = 0;
    while (i + k < n && k < COMPLETE_MANY &&
           f[i + k].kind == DSYS_QUEUE_FINISH_COMPLETE) {
      int dup = 0;
      for (size_t r = 0; r < k && !dup; r++) dup = f[i + r].id == f[i + k].id;
      if (dup) break;
      k++;
    }
    if (k >= 2 && complete_rows(q, f + i, k, now) == 0) {
      for (size_t r = 0; r < k; r++) f[i + r].rc = 0;
      i += k;
      continue;
    }
    if (k < 2) k = 1;
    for (size_t r = 0; r < k; r++, i++)
      f[i].rc = f[i].kind == DSYS_QUEUE_FINISH_COMPLETE
                    ? sq_complete(q, f[i].id, f[i].token, f[i].result, now)
                    : sq_heartbeat(q, f[i].id, f[i].token, f[i].lease_until);
  }
  return 0;
}

static int sq_fail(void *p, int64_t id, int64_t token, const char *msg,
                   int64_t now, int *dead) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_GETFAIL);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, token);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? not_active_reason(q, id) : err_of(rc);
  }
  int attempts = sqlite3_column_int(st, 0), maxa = sqlite3_column_int(st, 1);
  int64_t base = sqlite3_column_int64(st, 2), cap = sqlite3_column_int64(st, 3);
  sqlite3_reset(st);
  if (attempts >= maxa) {
    st = stmt(q, S_DEAD);
    if (!st) return DSYS_EDB;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, msg, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    int e = run(st);
    if (!e) *dead = 1;
    return e;
  }
  int64_t delay = dsys_queue_backoff_ms(attempts, base, cap);
  st = stmt(q, S_RETRY);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int(st, 2, delay > 0 ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING);
  sqlite3_bind_int64(st, 3, now + delay);
  sqlite3_bind_text(st, 4, msg, -1, SQLITE_STATIC);
  *dead = 0;
  return run(st);
}

static int sq_heartbeat(void *p, int64_t id, int64_t token,
                        int64_t lease_until) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_HEARTBEAT);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, token);
  sqlite3_bind_int64(st, 3, lease_until);
  return changed_or(q, run(st), id);
}

static int sq_progress(void *p, int64_t id, int64_t token, int32_t percent,
                       const char *message) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_PROGRESS);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, token);
  sqlite3_bind_int64(st, 3, percent);
  bind_text_or_null(st, 4, message);
  return changed_or(q, run(st), id);
}

static int sq_release(void *p, int64_t id, int64_t token, int64_t now) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_RELEASE);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, token);
  sqlite3_bind_int64(st, 3, now);
  return changed_or(q, run(st), id);
}

static int sq_cancel(void *p, int64_t id, int64_t now) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_CANCEL);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, now);
  int e = changed_or(q, run(st), id);
  return e == DSYS_ELEASE ? DSYS_ESTATE : e;
}

static int sq_replay(void *p, int64_t id, int64_t now) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_REPLAY);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, now);
  int e = changed_or(q, run(st), id);
  return e == DSYS_ELEASE ? DSYS_ESTATE : e;
}

static int sq_get(void *p, int64_t id, dsys_job **out) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_GET);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  int e = 0;
  if (rc == SQLITE_ROW) {
    *out = row_job(st);
    if (!*out) e = DSYS_ENOMEM;
  } else {
    e = rc == SQLITE_DONE ? DSYS_ENOTFOUND : err_of(rc);
  }
  sqlite3_reset(st);
  return e;
}

static int sq_counts(void *p, const char *queue, dsys_job_counts *out) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, queue ? S_COUNTS : S_COUNTS_ALL);
  if (!st) return DSYS_EDB;
  if (queue) sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
  memset(out, 0, sizeof *out);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t n = sqlite3_column_int64(st, 1);
    switch (sqlite3_column_int(st, 0)) {
    case DSYS_JOB_WAITING: out->waiting = n; break;
    case DSYS_JOB_DELAYED: out->delayed = n; break;
    case DSYS_JOB_ACTIVE: out->active = n; break;
    case DSYS_JOB_COMPLETED: out->completed = n; break;
    case DSYS_JOB_FAILED: out->failed = n; break;
    case DSYS_JOB_CANCELED: out->canceled = n; break;
    default: break;
    }
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : err_of(rc);
}

static int sq_list_dead(void *p, const char *queue, int64_t after_id,
                        size_t limit, dsys_job ***jobs, size_t *n) {
  sq *q = p;
  *jobs = NULL;
  *n = 0;
  sqlite3_stmt *st = stmt(q, queue ? S_DEADLIST : S_DEADLIST_ALL);
  if (!st) return DSYS_EDB;
  if (queue) sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, after_id);
  sqlite3_bind_int64(st, 3, (int64_t)limit);
  dsys_job **arr = calloc(limit, sizeof *arr);
  if (!arr) return DSYS_ENOMEM;
  size_t k = 0;
  int rc, e = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (!(arr[k] = row_job(st))) {
      e = DSYS_ENOMEM;
      break;
    }
    k++;
  }
  if (!e && rc != SQLITE_DONE) e = err_of(rc);
  sqlite3_reset(st);
  if (e) {
    dsys_job_list_free(arr, k);
    return e;
  }
  *jobs = arr;
  *n = k;
  return 0;
}

static int sq_purge(void *p, int64_t before, int64_t *removed) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_PURGE);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, before);
  int e = run(st);
  if (!e) *removed = sqlite3_changes(q->db);
  return e;
}

static int sq_list_queues(void *p, dsys_queue_info **out, size_t *n) {
  sq *q = p;
  *out = NULL;
  *n = 0;
  sqlite3_stmt *st = stmt(q, S_QUEUES);
  if (!st) return DSYS_EDB;
  /* rows come ordered by name: build the entries, then one block */
  typedef struct ent {
    char *name;
    dsys_queue_info info;
  } ent;
  ent *v = NULL;
  size_t nv = 0, cap = 0, names = 0;
  int rc, e = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *name = (const char *)sqlite3_column_text(st, 0);
    if (!name) continue;
    if (!nv || strcmp(v[nv - 1].name, name)) {
      if (dsysi_grow(&v, &cap, nv + 1, sizeof *v, 16) ||
          !(v[nv].name = strdup(name))) {
        e = DSYS_ENOMEM;
        break;
      }
      memset(&v[nv].info, 0, sizeof v[nv].info);
      names += strlen(name) + 1;
      nv++;
    }
    dsys_queue_info *in = &v[nv - 1].info;
    int64_t c = sqlite3_column_int64(st, 2);
    switch (sqlite3_column_int(st, 1)) {
    case 0: /* the paused row */
      in->paused = 1;
      in->paused_at = sqlite3_column_int64(st, 3);
      break;
    case DSYS_JOB_WAITING: in->counts.waiting = c; break;
    case DSYS_JOB_DELAYED: in->counts.delayed = c; break;
    case DSYS_JOB_ACTIVE: in->counts.active = c; break;
    case DSYS_JOB_COMPLETED: in->counts.completed = c; break;
    case DSYS_JOB_FAILED: in->counts.failed = c; break;
    case DSYS_JOB_CANCELED: in->counts.canceled = c; break;
    default: break;
    }
  }
  if (!e && rc != SQLITE_DONE) e = err_of(rc);
  sqlite3_reset(st);
  dsys_queue_info *blk = NULL;
  if (!e && nv) {
    blk = malloc(nv * sizeof *blk + names);
    if (!blk) e = DSYS_ENOMEM;
  }
  if (blk) {
    char *p2 = (char *)(blk + nv);
    for (size_t i = 0; i < nv; i++) {
      size_t l = strlen(v[i].name) + 1;
      blk[i] = v[i].info;
      memcpy(p2, v[i].name, l);
      blk[i].name = p2;
      p2 += l;
    }
  }
  for (size_t i = 0; i < nv; i++) free(v[i].name);
  free(v);
  if (e) return e;
  *out = blk;
  *n = blk ? nv : 0;
  return 0;
}

static int sq_set_paused(void *p, const char *queue, int paused, int64_t now) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, paused ? S_PAUSE : S_RESUME);
  if (!st) return DSYS_EDB;
  sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
  if (paused) sqlite3_bind_int64(st, 2, now);
  return run(st);
}

static int sq_purge_dead(void *p, const char *queue, int64_t before,
                         int64_t *removed) {
  sq *q = p;
  sqlite3_stmt *st = stmt(q, S_PURGEDEAD);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, before);
  bind_text_or_null(st, 2, queue);
  int e = run(st);
  if (!e) *removed = sqlite3_changes(q->db);
  return e;
}

static const dsys_queue_ops sqlite_ops = {
    .version = DSYS_QUEUE_OPS_VERSION,
    .name = "sqlite",
    .state_size = sizeof(sq),
    .open = sq_open,
    .close = sq_close,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .submit = sq_submit,
    .claim = sq_claim,
    .heartbeat = sq_heartbeat,
    .progress = sq_progress,
    .complete = sq_complete,
    .fail = sq_fail,
    .release = sq_release,
    .cancel = sq_cancel,
    .get = sq_get,
    .counts = sq_counts,
    .list_dead = sq_list_dead,
    .replay = sq_replay,
    .purge = sq_purge,
    .list_queues = sq_list_queues,
    .set_paused = sq_set_paused,
    .purge_dead = sq_purge_dead,
    .finish_many = sq_finish_many,
};

const dsys_queue_ops *dsys_queue_ops_sqlite(void) { return &sqlite_ops; }
DSYSI_PLUGINS(queue_sqlite) = {{"queue", &sqlite_ops}, {0}};
