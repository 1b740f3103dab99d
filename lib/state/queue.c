/*
 * Durable job queue on SQLite with group commit.
 *
 * Every call becomes an operation (qop) appended to the handle's pending
 * list. The first caller that finds no commit in progress becomes the
 * leader: it takes the whole pending list, runs it in one BEGIN IMMEDIATE
 * transaction on the handle's single connection, commits, and wakes the others. Callers that arrive meanwhile
 * form the next group. A call returns after the COMMIT of its group.
 * Operations that fail (e.g. a stale token) change nothing, so the rest of
 * the group still commits.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/queue.h>
#include <distsys/util.h>
#include "core/db.h"
#include "core/internal.h"
#include "core/json.h"
#include "state/state.h"
#include "state/queue_int.h"

enum {
  S_BEGIN, S_COMMIT, S_ROLLBACK,
  S_PROMOTE, S_EXPIRE, S_IDEM, S_INSERT, S_PICK, S_CLAIM, S_COMPLETE,
  S_GETFAIL, S_RETRY, S_DEAD, S_HEARTBEAT, S_PROGRESS, S_RELEASE, S_CANCEL,
  S_GET, S_EXISTS, S_COUNTS, S_COUNTS_ALL, S_DEADLIST, S_DEADLIST_ALL,
  S_REPLAY, S_PURGE, S_COUNT
};

#define JCOLS                                                               \
  "id, queue, payload, state, priority, attempts, max_attempts, token, "    \
  "worker, lease_until, progress, progress_msg, result, error, idem_key, "  \
  "created_at, run_at, finished_at"

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
    [S_INSERT] = "INSERT INTO dsys_jobs(queue, payload, state, priority, "
                 "max_attempts, backoff_base, backoff_cap, idem_key, "
                 "created_at, run_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                 "?9, ?10)",
    [S_PICK] = "SELECT id, priority FROM dsys_jobs WHERE queue = ?1 AND "
               "state = 1 ORDER BY priority DESC, id LIMIT 1",
    [S_CLAIM] = "UPDATE dsys_jobs SET state = 3, token = token + 1, "
                "attempts = attempts + 1, worker = ?2, lease_until = ?3, "
                "progress = 0, progress_msg = NULL WHERE id = ?1 AND "
                "state = 1 RETURNING " JCOLS,
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
    [S_COUNTS] = "SELECT state, count(*) FROM dsys_jobs WHERE queue = ?1 "
                 "GROUP BY state",
    [S_COUNTS_ALL] = "SELECT state, count(*) FROM dsys_jobs GROUP BY state",
    [S_DEADLIST] = "SELECT " JCOLS " FROM dsys_jobs WHERE state = 5 AND "
                   "queue = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    [S_DEADLIST_ALL] = "SELECT " JCOLS " FROM dsys_jobs WHERE state = 5 AND "
                       "id > ?2 ORDER BY id LIMIT ?3",
    [S_REPLAY] = "UPDATE dsys_jobs SET state = 1, attempts = 0, error = NULL,"
                 " result = NULL, finished_at = 0, run_at = ?2 WHERE id = ?1 "
                 "AND state IN (5, 6)",
    [S_PURGE] = "DELETE FROM dsys_jobs WHERE state IN (4, 5, 6) AND "
                "finished_at > 0 AND finished_at <= ?1",
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
};

typedef struct qop qop;
typedef int (*qop_fn)(dsys_queue *q, qop *op, int64_t now);

struct qop {
  qop_fn fn;
  qop *next;
  int done;
  int rc;
  /* arguments */
  const char *queue;
  const char *text;  /* payload / result / error / message */
  const char *text2; /* worker / idempotency key */
  const char *const *queues;
  size_t nqueues;
  const dsys_submit_options *so;
  int64_t id, token, num, num2;
  /* results */
  int64_t out_id;
  int flag;
  dsys_job *job;
  dsys_job **jobs;
  size_t njobs;
  dsys_job_counts *counts;
};

struct dsys_queue {
  sqlite3 *db;
  sqlite3_stmt *st[S_COUNT];
  dsys_clock *clock;
  int max_batch;
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* group done */
  pthread_cond_t work_cv; /* new work for local workers */
  qop *pending, **pending_tail;
  int committing;
  uint64_t work_seq;
};

static const char *const state_names[] = {"unknown",   "waiting", "delayed",
                                          "active",    "completed",
                                          "failed",    "canceled"};

const char *dsys_job_state_name(int s) {
  return (s >= 1 && s <= 6) ? state_names[s] : "unknown";
}

void dsys_job_free(dsys_job *job) { free(job); }

void dsys_job_list_free(dsys_job **jobs, size_t n) {
  if (!jobs) return;
  for (size_t i = 0; i < n; i++) free(jobs[i]);
  free(jobs);
}

static sqlite3_stmt *stmt(dsys_queue *q, int i) {
  if (!q->st[i] &&
      sqlite3_prepare_v3(q->db, sqls[i], -1, SQLITE_PREPARE_PERSISTENT,
                         &q->st[i], NULL) != SQLITE_OK) {
    dsysi_log(DSYS_LOG_ERROR, "queue", "prepare: %s", sqlite3_errmsg(q->db));
    return NULL;
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

static dsys_job *row_job(sqlite3_stmt *st) {
  static const int scol[] = {1, 2, 8, 11, 12, 13, 14};
  size_t len[7], total = sizeof(dsys_job);
  const unsigned char *txt[7];
  for (int i = 0; i < 7; i++) {
    txt[i] = sqlite3_column_text(st, scol[i]);
    len[i] = txt[i] ? (size_t)sqlite3_column_bytes(st, scol[i]) : 0;
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

/* ---- group commit ---- */

static void run_group(dsys_queue *q, qop *group) {
  int64_t now = dsys_clock_wall_ms(q->clock);
  int e = run(stmt(q, S_BEGIN));
  if (!e) {
    /* Housekeeping once per transaction: due delayed jobs become waiting,
     * expired leases are reclaimed. */
    sqlite3_stmt *st = stmt(q, S_PROMOTE);
    if (st) sqlite3_bind_int64(st, 1, now);
    e = run(st);
    st = stmt(q, S_EXPIRE);
    if (!e && st) sqlite3_bind_int64(st, 1, now);
    if (!e) e = run(st);
  }
  if (e) {
    if (sqlite3_get_autocommit(q->db) == 0) run(stmt(q, S_ROLLBACK));
    for (qop *op = group; op; op = op->next) op->rc = e;
    return;
  }
  /* Each op runs at most one modifying statement after its checks, and a
   * failed statement leaves no trace (statement atomicity), so an op error
   * needs no savepoint: the group commits what succeeded. */
  for (qop *op = group; op; op = op->next) op->rc = op->fn(q, op, now);
  if (sqlite3_get_autocommit(q->db)) {
    /* SQLite rolled the whole transaction back (I/O error, full disk). */
    e = DSYS_EDB;
  } else {
    e = run(stmt(q, S_COMMIT));
  }
  if (e) {
    if (sqlite3_get_autocommit(q->db) == 0) run(stmt(q, S_ROLLBACK));
    for (qop *op = group; op; op = op->next) {
      if (!op->rc) op->rc = e;
      free(op->job);
      op->job = NULL;
      dsys_job_list_free(op->jobs, op->njobs);
      op->jobs = NULL;
      op->njobs = 0;
    }
  }
}

static int execute(dsys_queue *q, qop *op) {
  op->next = NULL;
  op->done = 0;
  pthread_mutex_lock(&q->mu);
  *q->pending_tail = op;
  q->pending_tail = &op->next;
  while (!op->done) {
    if (q->committing) {
      pthread_cond_wait(&q->cv, &q->mu);
      continue;
    }
    /* Become the leader for up to max_batch pending ops. */
    qop *group = q->pending, **pp = &q->pending;
    int n = 0;
    while (*pp && n < q->max_batch) {
      pp = &(*pp)->next;
      n++;
    }
    q->pending = *pp;
    *pp = NULL;
    if (!q->pending) q->pending_tail = &q->pending;
    q->committing = 1;
    pthread_mutex_unlock(&q->mu);
    run_group(q, group);
    pthread_mutex_lock(&q->mu);
    for (qop *o = group, *nx; o; o = nx) {
      nx = o->next;
      o->done = 1;
    }
    q->committing = 0;
    pthread_cond_broadcast(&q->cv);
  }
  pthread_mutex_unlock(&q->mu);
  return op->rc;
}

/* ---- operations (run inside the group transaction) ---- */

static int not_active_reason(dsys_queue *q, int64_t id) {
  sqlite3_stmt *st = stmt(q, S_EXISTS);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return DSYS_ELEASE;
  return rc == SQLITE_DONE ? DSYS_ENOTFOUND : err_of(rc);
}

static int changed_or(dsys_queue *q, int e, int64_t id) {
  if (e) return e;
  return sqlite3_changes(q->db) ? 0 : not_active_reason(q, id);
}

static int op_submit(dsys_queue *q, qop *op, int64_t now) {
  const dsys_submit_options *o = op->so;
  sqlite3_stmt *st;
  if (op->text2) {
    st = stmt(q, S_IDEM);
    if (!st) return DSYS_EDB;
    sqlite3_bind_text(st, 1, op->queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->text2, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      op->out_id = sqlite3_column_int64(st, 0);
      op->flag = 1;
      sqlite3_reset(st);
      return 0;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return err_of(rc);
  }
  st = stmt(q, S_INSERT);
  if (!st) return DSYS_EDB;
  int64_t delay = o->delay_ms;
  sqlite3_bind_text(st, 1, op->queue, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, op->text, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, delay > 0 ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING);
  sqlite3_bind_int(st, 4, o->priority);
  sqlite3_bind_int(st, 5, o->max_attempts);
  sqlite3_bind_int64(st, 6, o->backoff_base_ms);
  sqlite3_bind_int64(st, 7, o->backoff_cap_ms);
  bind_text_or_null(st, 8, op->text2);
  sqlite3_bind_int64(st, 9, now);
  sqlite3_bind_int64(st, 10, now + (delay > 0 ? delay : 0));
  int e = run(st);
  if (e) return e;
  op->out_id = sqlite3_last_insert_rowid(q->db);
  op->flag = 0;
  return 0;
}

static int op_claim(dsys_queue *q, qop *op, int64_t now) {
  int64_t best = 0;
  int best_prio = 0;
  sqlite3_stmt *st = NULL;
  for (size_t i = 0; i < op->nqueues; i++) {
    st = stmt(q, S_PICK);
    if (!st) return DSYS_EDB;
    sqlite3_bind_text(st, 1, op->queues[i], -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      int64_t id = sqlite3_column_int64(st, 0);
      int prio = sqlite3_column_int(st, 1);
      if (!best || prio > best_prio || (prio == best_prio && id < best)) {
        best = id;
        best_prio = prio;
      }
    } else if (rc != SQLITE_DONE) {
      sqlite3_reset(st);
      return err_of(rc);
    }
    sqlite3_reset(st);
  }
  if (!best) return DSYS_EAGAIN;
  st = stmt(q, S_CLAIM);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, best);
  sqlite3_bind_text(st, 2, op->text2 ? op->text2 : "", -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, now + op->num);
  int rc = sqlite3_step(st);
  int e = 0;
  if (rc == SQLITE_ROW) {
    op->job = row_job(st);
    if (!op->job) e = DSYS_ENOMEM;
    else rc = sqlite3_step(st);
  }
  if (!e && rc != SQLITE_DONE) e = err_of(rc);
  if (!e && !op->job) e = DSYS_EAGAIN;
  sqlite3_reset(st);
  if (e) {
    free(op->job);
    op->job = NULL;
  }
  return e;
}

static int op_complete(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_COMPLETE);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, op->token);
  sqlite3_bind_text(st, 3, op->text ? op->text : "null", -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, now);
  return changed_or(q, run(st), op->id);
}

int64_t dsysi_queue_backoff(int attempt, int64_t base, int64_t cap) {
  if (attempt < 1) attempt = 1;
  int64_t d = base;
  for (int i = 1; i < attempt && d < cap; i++) d *= 2;
  if (d > cap) d = cap;
  if (d <= 0) return 0;
  uint64_t r;
  dsys_random_bytes(&r, sizeof r);
  return (int64_t)(r % ((uint64_t)d + 1)); /* full jitter in [0, d] */
}

static int op_fail(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_GETFAIL);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, op->token);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? not_active_reason(q, op->id) : err_of(rc);
  }
  int attempts = sqlite3_column_int(st, 0), maxa = sqlite3_column_int(st, 1);
  int64_t base = sqlite3_column_int64(st, 2), cap = sqlite3_column_int64(st, 3);
  sqlite3_reset(st);
  const char *msg = op->text ? op->text : "failed";
  if (attempts >= maxa) {
    st = stmt(q, S_DEAD);
    if (!st) return DSYS_EDB;
    sqlite3_bind_int64(st, 1, op->id);
    sqlite3_bind_text(st, 2, msg, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    op->flag = 1;
    return run(st);
  }
  int64_t delay = dsysi_queue_backoff(attempts, base, cap);
  st = stmt(q, S_RETRY);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int(st, 2, delay > 0 ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING);
  sqlite3_bind_int64(st, 3, now + delay);
  sqlite3_bind_text(st, 4, msg, -1, SQLITE_STATIC);
  op->flag = 0;
  return run(st);
}

static int op_heartbeat(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_HEARTBEAT);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, op->token);
  sqlite3_bind_int64(st, 3, now + op->num);
  return changed_or(q, run(st), op->id);
}

static int op_progress(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_PROGRESS);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, op->token);
  sqlite3_bind_int64(st, 3, op->num);
  bind_text_or_null(st, 4, op->text);
  return changed_or(q, run(st), op->id);
}

static int op_release(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_RELEASE);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, op->token);
  sqlite3_bind_int64(st, 3, now);
  return changed_or(q, run(st), op->id);
}

static int op_cancel(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_CANCEL);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, now);
  int e = changed_or(q, run(st), op->id);
  return e == DSYS_ELEASE ? DSYS_ESTATE : e;
}

static int op_replay(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_REPLAY);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  sqlite3_bind_int64(st, 2, now);
  int e = changed_or(q, run(st), op->id);
  return e == DSYS_ELEASE ? DSYS_ESTATE : e;
}

static int op_get(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_GET);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, op->id);
  int rc = sqlite3_step(st);
  int e = 0;
  if (rc == SQLITE_ROW) {
    op->job = row_job(st);
    if (!op->job) e = DSYS_ENOMEM;
  } else {
    e = rc == SQLITE_DONE ? DSYS_ENOTFOUND : err_of(rc);
  }
  sqlite3_reset(st);
  return e;
}

static int op_counts(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, op->queue ? S_COUNTS : S_COUNTS_ALL);
  if (!st) return DSYS_EDB;
  if (op->queue) sqlite3_bind_text(st, 1, op->queue, -1, SQLITE_STATIC);
  memset(op->counts, 0, sizeof *op->counts);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t n = sqlite3_column_int64(st, 1);
    switch (sqlite3_column_int(st, 0)) {
    case DSYS_JOB_WAITING: op->counts->waiting = n; break;
    case DSYS_JOB_DELAYED: op->counts->delayed = n; break;
    case DSYS_JOB_ACTIVE: op->counts->active = n; break;
    case DSYS_JOB_COMPLETED: op->counts->completed = n; break;
    case DSYS_JOB_FAILED: op->counts->failed = n; break;
    case DSYS_JOB_CANCELED: op->counts->canceled = n; break;
    default: break;
    }
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : err_of(rc);
}

static int op_list_dead(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, op->queue ? S_DEADLIST : S_DEADLIST_ALL);
  if (!st) return DSYS_EDB;
  if (op->queue) sqlite3_bind_text(st, 1, op->queue, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, op->id);
  sqlite3_bind_int64(st, 3, op->num);
  op->jobs = calloc((size_t)op->num, sizeof *op->jobs);
  if (!op->jobs) return DSYS_ENOMEM;
  int rc, e = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (!(op->jobs[op->njobs] = row_job(st))) {
      e = DSYS_ENOMEM;
      break;
    }
    op->njobs++;
  }
  if (!e && rc != SQLITE_DONE) e = err_of(rc);
  sqlite3_reset(st);
  if (e) {
    dsys_job_list_free(op->jobs, op->njobs);
    op->jobs = NULL;
    op->njobs = 0;
  }
  return e;
}

static int op_purge(dsys_queue *q, qop *op, int64_t now) {
  sqlite3_stmt *st = stmt(q, S_PURGE);
  if (!st) return DSYS_EDB;
  sqlite3_bind_int64(st, 1, now - op->num);
  int e = run(st);
  if (!e) op->out_id = sqlite3_changes(q->db);
  return e;
}

/* ---- public API ---- */

static int check_name(const char *s) {
  return (s && *s && strlen(s) <= DSYS_QUEUE_MAX_NAME) ? 0 : DSYS_EINVAL;
}

static int check_json(const char *s) {
  size_t n = strlen(s);
  if (n > DSYS_QUEUE_MAX_PAYLOAD) return DSYS_ETOOBIG;
  json_object *j = NULL;
  int e = dsysi_json_parse(s, n, &j);
  json_object_put(j);
  return e;
}

int dsys_queue_open(dsys_queue **out, const char *url,
                    const dsys_queue_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  const char *scheme, *loc;
  int e = dsysi_state_parse_url(url, &scheme, &loc);
  if (e) return e;
  dsys_queue_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t)))
      return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  if (o.max_batch < 0) return DSYS_EINVAL;
  dsys_queue *q = calloc(1, sizeof *q);
  if (!q) return DSYS_ENOMEM;
  q->clock = o.clock ? o.clock : dsys_clock_real();
  q->max_batch = o.max_batch ? o.max_batch : 256;
  char err[256] = "";
  const char *path = !strcmp(scheme, "memory") ? ":memory:" : loc;
  e = dsysi_db_open(path, o.full_sync ? 1 : 0, &q->db, err, sizeof err);
  if (!e) e = dsysi_db_migrate(q->db, "queue", migrations, 1, err, sizeof err);
  if (e) {
    dsysi_log(DSYS_LOG_ERROR, "queue", "open %s: %s", url, err);
    sqlite3_close(q->db);
    free(q);
    return e;
  }
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&q->work_cv, &ca);
  pthread_condattr_destroy(&ca);
  q->pending_tail = &q->pending;
  *out = q;
  return 0;
}

void dsys_queue_close(dsys_queue *q) {
  if (!q) return;
  for (int i = 0; i < S_COUNT; i++) sqlite3_finalize(q->st[i]);
  sqlite3_close(q->db);
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cv);
  pthread_cond_destroy(&q->work_cv);
  free(q);
}

dsys_clock *dsysi_queue_clock(dsys_queue *q) { return q->clock; }

static void notify_work(dsys_queue *q) {
  pthread_mutex_lock(&q->mu);
  q->work_seq++;
  pthread_cond_broadcast(&q->work_cv);
  pthread_mutex_unlock(&q->mu);
}

void dsysi_queue_wait_work(dsys_queue *q, int64_t timeout_ms,
                           const int *stop_flag) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&q->mu);
  uint64_t seq = q->work_seq;
  while (seq == q->work_seq && !__atomic_load_n(stop_flag, __ATOMIC_ACQUIRE))
    if (pthread_cond_timedwait(&q->work_cv, &q->mu, &ts)) break;
  pthread_mutex_unlock(&q->mu);
}

void dsysi_queue_wake(dsys_queue *q) { notify_work(q); }

int dsys_queue_submit(dsys_queue *q, const char *queue, const char *payload,
                      const dsys_submit_options *so, int64_t *id,
                      int *existed) {
  if (!q || check_name(queue) || !payload) return DSYS_EINVAL;
  dsys_submit_options o = {0};
  if (so) {
    if (so->size > sizeof o || (so->size && so->size < sizeof(size_t)))
      return DSYS_EINVAL;
    memcpy(&o, so, so->size ? so->size : sizeof o);
  }
  if (o.delay_ms < 0 || o.max_attempts < 0 || o.backoff_base_ms < 0 ||
      o.backoff_cap_ms < 0)
    return DSYS_EINVAL;
  if (o.idempotency_key && check_name(o.idempotency_key)) return DSYS_EINVAL;
  if (!o.max_attempts) o.max_attempts = 3;
  if (!o.backoff_base_ms) o.backoff_base_ms = 1000;
  if (!o.backoff_cap_ms) o.backoff_cap_ms = 60000;
  int e = check_json(payload);
  if (e) return e;
  qop op = {.fn = op_submit, .queue = queue, .text = payload,
            .text2 = o.idempotency_key, .so = &o};
  e = execute(q, &op);
  if (e) return e;
  if (id) *id = op.out_id;
  if (existed) *existed = op.flag;
  if (!op.flag && o.delay_ms <= 0) notify_work(q);
  return 0;
}

int dsys_queue_claim(dsys_queue *q, const char *const *queues, size_t nqueues,
                     const char *worker, int64_t lease_ms, dsys_job **out) {
  if (out) *out = NULL;
  if (!q || !queues || !nqueues || nqueues > 64 || !out || lease_ms <= 0)
    return DSYS_EINVAL;
  for (size_t i = 0; i < nqueues; i++)
    if (check_name(queues[i])) return DSYS_EINVAL;
  if (worker && strlen(worker) > DSYS_QUEUE_MAX_NAME) return DSYS_EINVAL;
  qop op = {.fn = op_claim, .queues = queues, .nqueues = nqueues,
            .text2 = worker, .num = lease_ms};
  int e = execute(q, &op);
  if (!e) *out = op.job;
  return e;
}

static int simple(dsys_queue *q, qop_fn fn, int64_t id, int64_t token,
                  int64_t num, const char *text, int *flag) {
  if (!q || id <= 0) return DSYS_EINVAL;
  qop op = {.fn = fn, .id = id, .token = token, .num = num, .text = text};
  int e = execute(q, &op);
  if (flag) *flag = op.flag;
  return e;
}

int dsys_queue_heartbeat(dsys_queue *q, int64_t id, int64_t token,
                         int64_t lease_ms) {
  if (lease_ms <= 0) return DSYS_EINVAL;
  return simple(q, op_heartbeat, id, token, lease_ms, NULL, NULL);
}

int dsys_queue_progress(dsys_queue *q, int64_t id, int64_t token,
                        int32_t percent, const char *message) {
  if (percent < 0 || percent > 100) return DSYS_EINVAL;
  if (message && strlen(message) > 4096) return DSYS_ETOOBIG;
  return simple(q, op_progress, id, token, percent, message, NULL);
}

int dsys_queue_complete(dsys_queue *q, int64_t id, int64_t token,
                        const char *result) {
  if (result) {
    int e = check_json(result);
    if (e) return e;
  }
  return simple(q, op_complete, id, token, 0, result, NULL);
}

int dsys_queue_fail(dsys_queue *q, int64_t id, int64_t token,
                    const char *error, int *dead) {
  if (error && strlen(error) > 65536) return DSYS_ETOOBIG;
  int e = simple(q, op_fail, id, token, 0, error, dead);
  if (!e) notify_work(q);
  return e;
}

int dsys_queue_release(dsys_queue *q, int64_t id, int64_t token) {
  int e = simple(q, op_release, id, token, 0, NULL, NULL);
  if (!e) notify_work(q);
  return e;
}

int dsys_queue_cancel(dsys_queue *q, int64_t id) {
  return simple(q, op_cancel, id, 0, 0, NULL, NULL);
}

int dsys_queue_replay(dsys_queue *q, int64_t id) {
  int e = simple(q, op_replay, id, 0, 0, NULL, NULL);
  if (!e) notify_work(q);
  return e;
}

int dsys_queue_get(dsys_queue *q, int64_t id, dsys_job **out) {
  if (out) *out = NULL;
  if (!q || !out || id <= 0) return DSYS_EINVAL;
  qop op = {.fn = op_get, .id = id};
  int e = execute(q, &op);
  if (!e) *out = op.job;
  return e;
}

int dsys_queue_counts(dsys_queue *q, const char *queue,
                      dsys_job_counts *out) {
  if (!q || !out || (queue && check_name(queue))) return DSYS_EINVAL;
  dsys_job_counts c;
  qop op = {.fn = op_counts, .queue = queue, .counts = &c};
  int e = execute(q, &op);
  if (!e) *out = c;
  return e;
}

int dsys_queue_list_dead(dsys_queue *q, const char *queue, int64_t after_id,
                         size_t limit, dsys_job ***jobs, size_t *n) {
  if (jobs) *jobs = NULL;
  if (n) *n = 0;
  if (!q || !jobs || !n || !limit || limit > 1000 ||
      (queue && check_name(queue)))
    return DSYS_EINVAL;
  qop op = {.fn = op_list_dead, .queue = queue, .id = after_id,
            .num = (int64_t)limit};
  int e = execute(q, &op);
  if (!e) {
    *jobs = op.jobs;
    *n = op.njobs;
  }
  return e;
}

int dsys_queue_purge(dsys_queue *q, int64_t older_than_ms, int64_t *removed) {
  if (removed) *removed = 0;
  if (!q || older_than_ms < 0) return DSYS_EINVAL;
  qop op = {.fn = op_purge, .num = older_than_ms};
  int e = execute(q, &op);
  if (!e && removed) *removed = op.out_id;
  return e;
}
