/*
 * The raw SQLite group-commit ceiling for a job queue (SQLITE-NOTES.md):
 * one thread, one connection, prepared statements, WAL; every transaction
 * inserts a batch of small job rows, claims a batch (UPDATE with a new
 * token and lease), and completes the batch claimed by the previous
 * transaction (UPDATE checked against the token). So each job costs three
 * durable state changes, as in the queue, and nothing but SQLite runs: what
 * the file can do, for bench-queue to print its rows' ratio to.
 * Repeats runs of JOBS jobs on a fresh file (the same table size as the
 * queue's runs) until at least SECONDS have passed.
 * Usage: bench-sqlite-ceiling DIR JOBS normal|full [BATCH=100] [SECONDS=5]
 * Prints: "sqlite ceiling <SYNC> batch <B>: <jobs/s> jobs/s (...)".
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void check(sqlite3 *db, int rc, const char *what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
    exit(1);
  }
}

static void exec(sqlite3 *db, const char *sql) {
  check(db, sqlite3_exec(db, sql, NULL, NULL, NULL), sql);
}

static sqlite3_stmt *prep(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  check(db, sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL), sql);
  return st;
}

static void step_done(sqlite3 *db, sqlite3_stmt *st) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
  }
  check(db, rc, sqlite3_sql(st));
  sqlite3_reset(st);
}

/* One run of njobs jobs on a fresh file; returns seconds. */
static double run(const char *path, long njobs, int full, int batch) {
  unlink(path);
  char wal[4200];
  snprintf(wal, sizeof wal, "%s-wal", path);
  unlink(wal);
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK) {
    fprintf(stderr, "open %s\n", path);
    exit(1);
  }
  exec(db, "PRAGMA journal_mode=WAL");
  exec(db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
  exec(db, "CREATE TABLE jobs(id INTEGER PRIMARY KEY, queue TEXT NOT NULL,"
           " payload TEXT NOT NULL, state INTEGER NOT NULL,"
           " token INTEGER NOT NULL DEFAULT 0, lease_until INTEGER NOT NULL"
           " DEFAULT 0, result TEXT);"
           "CREATE INDEX jobs_claim ON jobs(queue, state, id)");
  sqlite3_stmt *ins = prep(db, "INSERT INTO jobs(queue, payload, state) VALUES('bench', ?1, 1)");
  sqlite3_stmt *pick = prep(db, "SELECT id, token FROM jobs WHERE queue = 'bench' AND state = 1 ORDER BY id LIMIT ?1");
  sqlite3_stmt *claim = prep(db, "UPDATE jobs SET state = 3, token = token + 1, lease_until = ?2 WHERE id = ?1 AND state = 1");
  sqlite3_stmt *done = prep(db, "UPDATE jobs SET state = 4, result = 'null', lease_until = 0 WHERE id = ?1 AND state = 3 AND token = ?2");
  sqlite3_stmt *begin = prep(db, "BEGIN IMMEDIATE"), *commit = prep(db, "COMMIT");
  int64_t *ids = malloc(2 * batch * sizeof *ids), *toks = ids + batch;
  int64_t *prev = malloc(2 * batch * sizeof *prev), *ptoks = prev + batch;
  int nprev = 0;
  long submitted = 0, completed = 0;
  double t0 = now_s();
  while (completed < njobs) {
    step_done(db, begin);
    for (int i = 0; i < batch && submitted < njobs; i++, submitted++) {
      sqlite3_bind_text(ins, 1, "{\"task\":\"x\"}", -1, SQLITE_STATIC);
      step_done(db, ins);
    }
    int n = 0;
    sqlite3_bind_int(pick, 1, batch);
    while (sqlite3_step(pick) == SQLITE_ROW) {
      ids[n] = sqlite3_column_int64(pick, 0);
      toks[n++] = sqlite3_column_int64(pick, 1) + 1;
    }
    sqlite3_reset(pick);
    for (int i = 0; i < n; i++) {
      sqlite3_bind_int64(claim, 1, ids[i]);
      sqlite3_bind_int64(claim, 2, 30000);
      step_done(db, claim);
      if (sqlite3_changes(db) != 1) check(db, SQLITE_ERROR, "claim");
    }
    for (int i = 0; i < nprev; i++) {
      sqlite3_bind_int64(done, 1, prev[i]);
      sqlite3_bind_int64(done, 2, ptoks[i]);
      step_done(db, done);
      if (sqlite3_changes(db) != 1) check(db, SQLITE_ERROR, "complete");
    }
    completed += nprev;
    step_done(db, commit);
    memcpy(prev, ids, n * sizeof *ids);
    memcpy(ptoks, toks, n * sizeof *toks);
    nprev = n;
  }
  double t = now_s() - t0;
  sqlite3_finalize(ins);
  sqlite3_finalize(pick);
  sqlite3_finalize(claim);
  sqlite3_finalize(done);
  sqlite3_finalize(begin);
  sqlite3_finalize(commit);
  sqlite3_close(db);
  free(ids);
  free(prev);
  unlink(path);
  unlink(wal);
  return t;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench-sqlite-ceiling DIR JOBS normal|full [BATCH] [SECONDS]\n");
    return 2;
  }
  long njobs = atol(argv[2]);
  int full = !strcmp(argv[3], "full");
  int batch = argc > 4 ? atoi(argv[4]) : 100;
  double min_s = argc > 5 ? atof(argv[5]) : 5;
  if (njobs <= 0 || batch <= 0 || batch > 100000) return 2;
  char path[4096];
  snprintf(path, sizeof path, "%s/ceiling-%d.sqlite", argv[1], (int)getpid());
  double t = 0;
  long total = 0;
  int runs = 0;
  while (t < min_s || !runs) {
    t += run(path, njobs, full, batch);
    total += njobs;
    runs++;
  }
  printf("sqlite ceiling %-6s batch %d: %8.0f jobs/s (%d run%s of %ld jobs, %.2f s)\n",
         full ? "FULL" : "NORMAL", batch, total / t, runs, runs > 1 ? "s" : "",
         njobs, t);
  return 0;
}
