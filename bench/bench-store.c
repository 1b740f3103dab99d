/*
 * Store benchmark: gets and puts per second from 1, 2, 4 and 16 threads,
 * on a durable SQLite file in DIR (synchronous=NORMAL, or FULL with
 * FULL=1 in the environment) or on a store URL (e.g. postgresql://...).
 *
 * Usage: bench-store [DIR|URL] [SECONDS] [ROUNDS]
 *   SECONDS per measurement (default 5), ROUNDS (default 3): every round
 *   runs each row once, in the same order, so rows alternate and a slow
 *   patch of the machine spreads over all of them; one line per row at
 *   the end gives its median, range and each round's figure (one line a
 *   row: bench/run-all picks the lines with "get" and "put").
 * "put_many" rows: each thread puts the same random keys through
 * dsys_store_put_many() in calls of MANY_BATCH (64) entries.
 * ONLY="put 4" in the environment runs that one row (for perf, strace).
 * Each line also gives the process's CPU time (user + system, all
 * threads) per operation: on a shared machine the ops/s follow the load
 * of the other processes, the CPU time per op much less.
 * Puts write 10,000 keys at random (replacing: every put after the first
 * round is an update of an existing row), values of 36 bytes.
 * On SQLite a "ceiling" row runs in every round too: raw SQLite, one
 * thread, one connection on a file of the store's own schema (made by the
 * library) with the same 10,000 keys, prepared statements, each put the
 * store's lookup by key and update by id, 256 puts per transaction (a
 * larger group than 4 or 16 synchronous callers can ever form): what the
 * file can do for random-key puts, printed beside each put row as a ratio.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sqlite3.h>
#include <distsys/distsys.h>

#define NKEYS 10000
#define MAXTH 16
#define MAXROUNDS 15
#define MANY_BATCH 64
#define VALUE "{\"v\":\"some value of moderate size\"}"
static dsys_store *s;
static double secs = 5.0;
static int do_put;
static const char *backend = "sqlite";
static char ceil_path[1100]; /* the ceiling's file; "" = no ceiling row */
static int full_sync;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *loop(void *arg) {
  long *count = arg, n = 0;
  unsigned seed = (unsigned)(uintptr_t)arg;
  char key[32];
  double end = now_s() + secs;
  while (1) {
    if (do_put == 3) { /* put_many: 256 puts in calls of MANY_BATCH */
      char keys[MANY_BATCH][32];
      dsys_store_entry ents[MANY_BATCH];
      for (int c = 0; c < 256 / MANY_BATCH; c++) {
        for (int i = 0; i < MANY_BATCH; i++) {
          snprintf(keys[i], sizeof keys[i], "bench/%05u", rand_r(&seed) % NKEYS);
          ents[i] = (dsys_store_entry){keys[i], VALUE, NULL, 0};
        }
        int e = dsys_store_put_many(s, ents, MANY_BATCH, NULL, NULL);
        if (e) {
          fprintf(stderr, "put_many: %s\n", dsys_strerror(e));
          abort();
        }
      }
      n += 256;
      if (now_s() >= end) break;
      continue;
    }
    for (int i = 0; i < 256; i++) {
      snprintf(key, sizeof key, "bench/%05u", rand_r(&seed) % NKEYS);
      if (do_put) {
        int e = dsys_store_put(s, key, VALUE, NULL, NULL);
        if (e) {
          fprintf(stderr, "put: %s\n", dsys_strerror(e));
          abort();
        }
      } else {
        dsys_item *it = NULL;
        int e = dsys_store_get(s, key, &it);
        if (e) {
          fprintf(stderr, "get: %s\n", dsys_strerror(e));
          abort();
        }
        dsys_item_free(it);
      }
      n++;
    }
    if (now_s() >= end) break;
  }
  *count = n;
  return NULL;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* ops/s; *us_per_op gets the CPU time per op in microseconds. */
static double run(int put, int threads, double *us_per_op) {
  do_put = put;
  double c0 = cpu_s();
  pthread_t th[MAXTH];
  long counts[MAXTH] = {0};
  double t0 = now_s();
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, loop, &counts[i]);
  long total = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    total += counts[i];
  }
  double wall = now_s() - t0;
  *us_per_op = (cpu_s() - c0) * 1e6 / (total ? total : 1);
  return total / wall;
}

static void sq_check(sqlite3 *db, int rc, const char *what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    fprintf(stderr, "ceiling: %s: %s\n", what, sqlite3_errmsg(db));
    exit(1);
  }
}

/* The raw SQLite ceiling (see the top): puts/s for secs seconds; *us_per_op
 * gets its CPU time per put. */
static double run_ceiling(double *us_per_op) {
  sqlite3 *db;
  if (sqlite3_open(ceil_path, &db) != SQLITE_OK) sq_check(db, SQLITE_ERROR, "open");
  sq_check(db, sqlite3_exec(db, full_sync ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                            NULL, NULL, NULL), "pragma");
  sqlite3_stmt *look, *set, *begin, *commit;
  sq_check(db, sqlite3_prepare_v2(db, "SELECT id, version FROM dsys_store_items WHERE key = ?1",
                                  -1, &look, NULL), "prepare");
  sq_check(db, sqlite3_prepare_v2(db, "UPDATE dsys_store_items SET value = ?2, version = ?3, "
                                  "updated_at = ?4 WHERE id = ?1", -1, &set, NULL), "prepare");
  sq_check(db, sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL), "prepare");
  sq_check(db, sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL), "prepare");
  unsigned seed = 12345;
  char key[32];
  long n = 0;
  double c0 = cpu_s(), t0 = now_s(), end = t0 + secs;
  while (now_s() < end) {
    sq_check(db, sqlite3_step(begin), "begin");
    sqlite3_reset(begin);
    for (int i = 0; i < 256; i++, n++) {
      snprintf(key, sizeof key, "bench/%05u", rand_r(&seed) % NKEYS);
      sqlite3_bind_text(look, 1, key, -1, SQLITE_STATIC);
      if (sqlite3_step(look) != SQLITE_ROW) sq_check(db, SQLITE_ERROR, "look");
      sqlite3_int64 id = sqlite3_column_int64(look, 0), v = sqlite3_column_int64(look, 1);
      sqlite3_reset(look);
      sqlite3_bind_int64(set, 1, id);
      sqlite3_bind_text(set, 2, VALUE, -1, SQLITE_STATIC);
      sqlite3_bind_int64(set, 3, v + 1);
      sqlite3_bind_int64(set, 4, (sqlite3_int64)(now_s() * 1000));
      sq_check(db, sqlite3_step(set), "update");
      sqlite3_reset(set);
    }
    sq_check(db, sqlite3_step(commit), "commit");
    sqlite3_reset(commit);
  }
  double wall = now_s() - t0;
  *us_per_op = (cpu_s() - c0) * 1e6 / (n ? n : 1);
  sqlite3_finalize(look);
  sqlite3_finalize(set);
  sqlite3_finalize(begin);
  sqlite3_finalize(commit);
  sqlite3_close(db);
  return n / wall;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static const struct row {
  const char *what;
  int put, threads;
} rows[] = {{"get", 0, 1},      {"get", 0, 2},      {"put", 1, 1},
            {"put", 1, 2},      {"put", 1, 4},      {"put", 1, 16},
            {"put_many", 3, 1}, {"put_many", 3, 4}, {"ceiling", 2, 1}};
#define NROWS (sizeof rows / sizeof rows[0])

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  if (argc > 2) secs = atof(argv[2]);
  int rounds = argc > 3 ? atoi(argv[3]) : 3;
  if (secs <= 0 || rounds < 1 || rounds > MAXROUNDS) {
    fprintf(stderr, "usage: bench-store [DIR|URL] [SECONDS > 0] [ROUNDS 1..%d]\n", MAXROUNDS);
    return 2;
  }
  const char *full = getenv("FULL");
  dsys_store_options o = {.size = sizeof o, .full_sync = full && !strcmp(full, "1")};
  char url[1024];
  if (strstr(dir, "://")) snprintf(url, sizeof url, "%s", dir);
  else snprintf(url, sizeof url, "sqlite://%s/bench-store.sqlite", dir);
  full_sync = o.full_sync;
  if (!strncmp(url, "postgres", 8)) backend = "postgresql";
  else if (!strncmp(url, "sqlite", 6)) backend = o.full_sync ? "sqlite FULL" : "sqlite NORMAL";
  if (!strstr(dir, "://")) snprintf(ceil_path, sizeof ceil_path, "%s/bench-ceiling.sqlite", dir);
  char key[32];
  /* the ceiling's file first: the store's schema and keys, by the library */
  for (int f = ceil_path[0] ? 0 : 1; f < 2; f++) {
    char cu[1200];
    snprintf(cu, sizeof cu, "sqlite://%s", ceil_path);
    int e = dsys_store_open(&s, f ? url : cu, &o);
    if (e) {
      fprintf(stderr, "open %s: %s\n", f ? url : cu, dsys_strerror(e));
      return 1;
    }
    for (int i = 0; i < NKEYS; i++) {
      snprintf(key, sizeof key, "bench/%05d", i);
      dsys_store_put(s, key, VALUE, NULL, NULL);
    }
    if (!f) dsys_store_close(s);
  }
  const char *only = getenv("ONLY");
  int skip[NROWS] = {0};
  for (size_t i = 0; only && i < NROWS; i++) {
    char name[24];
    snprintf(name, sizeof name, "%s %d", rows[i].what, rows[i].threads);
    skip[i] = strcmp(name, only) != 0;
  }
  for (size_t i = 0; i < NROWS; i++)
    if (rows[i].put == 2 && !ceil_path[0]) skip[i] = 1;
  double res[NROWS][MAXROUNDS], cpu[NROWS][MAXROUNDS];
  for (int r = 0; r < rounds; r++)
    for (size_t i = 0; i < NROWS; i++) {
      if (skip[i]) continue;
      res[i][r] = rows[i].put == 2 ? run_ceiling(&cpu[i][r])
                                   : run(rows[i].put, rows[i].threads, &cpu[i][r]);
    }
  double ceil_med = 0;
  for (size_t i = 0; i < NROWS; i++) {
    if (skip[i] || rows[i].put != 2) continue;
    double v[MAXROUNDS];
    memcpy(v, res[i], sizeof v);
    qsort(v, (size_t)rounds, sizeof v[0], cmp_d);
    ceil_med = (v[(rounds - 1) / 2] + v[rounds / 2]) / 2;
  }
  for (size_t i = 0; i < NROWS; i++) {
    if (skip[i]) continue;
    char each[MAXROUNDS * 12] = "", *p = each; /* the rounds in run order */
    for (int r = 0; r < rounds; r++)
      p += snprintf(p, sizeof each - (size_t)(p - each), "%s%.0f", r ? " " : "", res[i][r]);
    qsort(res[i], (size_t)rounds, sizeof res[i][0], cmp_d);
    qsort(cpu[i], (size_t)rounds, sizeof cpu[i][0], cmp_d);
    double med = (res[i][(rounds - 1) / 2] + res[i][rounds / 2]) / 2;
    char ratio[48] = "";
    if ((rows[i].put == 1 || rows[i].put == 3) && ceil_med > 0)
      snprintf(ratio, sizeof ratio, "; %.2f of ceiling", med / ceil_med);
    if (rows[i].put == 2)
      printf("store put ceiling (raw SQLite, 1 thread, 256 per transaction): %9.0f ops/s median, "
             "range %.0f-%.0f; %.1f us CPU/op median (%d rounds of %g s: %s; %s)\n",
             med, res[i][0], res[i][rounds - 1], (cpu[i][(rounds - 1) / 2] + cpu[i][rounds / 2]) / 2,
             rounds, secs, each, backend);
    else
      printf("store %-4s %2d thread%s: %9.0f ops/s median, range %.0f-%.0f; %.1f us CPU/op median "
             "(%d rounds of %g s: %s; %s%s)\n",
             rows[i].what, rows[i].threads, rows[i].threads > 1 ? "s" : " ", med, res[i][0],
             res[i][rounds - 1], (cpu[i][(rounds - 1) / 2] + cpu[i][rounds / 2]) / 2, rounds, secs,
             each, backend, ratio);
    fflush(stdout);
  }
  dsys_store_close(s);
  if (ceil_path[0]) {
    char p[1200];
    unlink(ceil_path);
    snprintf(p, sizeof p, "%s-wal", ceil_path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", ceil_path);
    unlink(p);
  }
  return 0;
}
