/* Internal SQLite helpers: open with WAL, per-component migrations. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <distsys/common.h>
#include "core/db.h"

int dsysi_db_err(int rc) {
  switch (rc & 0xff) {
  case SQLITE_OK:
  case SQLITE_DONE:
  case SQLITE_ROW:
    return 0;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return DSYS_EBUSY;
  case SQLITE_NOMEM:
    return DSYS_ENOMEM;
  case SQLITE_FULL:
    return DSYS_ENOSPC;
  case SQLITE_IOERR:
  case SQLITE_CANTOPEN:
    return DSYS_EIO;
  case SQLITE_CONSTRAINT:
    return DSYS_EEXIST;
  case SQLITE_TOOBIG:
    return DSYS_ETOOBIG;
  case SQLITE_READONLY:
  case SQLITE_PERM:
  case SQLITE_AUTH:
    return DSYS_EPERM;
  default:
    return DSYS_EDB;
  }
}

/* SQLite keeps memory statistics by default: every allocation and free
 * takes one process-wide mutex to count it. Debian's build also omits the
 * per-connection lookaside allocator, so every cursor, record and value of
 * every statement goes through that mutex (measured on the queue: 39
 * allocations and 87 frees a job, 18% of its instructions). The library
 * reads no memory statistic; turn them off once, at load, before any
 * connection exists (sqlite3_config is refused, harmlessly, once SQLite
 * is initialised, e.g. when the program used it before loading us). */
__attribute__((constructor)) static void db_config(void) {
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

int dsysi_db_exec(sqlite3 *db, const char *sql, char *errbuf, size_t errlen) {
  char *msg = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    if (errbuf && errlen)
      snprintf(errbuf, errlen, "%s", msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    int e = dsysi_db_err(rc);
    return e ? e : DSYS_EDB;
  }
  return 0;
}

/* Some statements can get SQLITE_BUSY without the busy handler being
 * consulted (journal mode switch, WAL recovery by another process):
 * retry them for up to the busy timeout. */
static int exec_retry_busy(sqlite3 *db, const char *sql, char *errbuf,
                           size_t errlen) {
  int e = 0;
  for (int i = 0; i < DSYSI_DB_BUSY_MS / 10; i++) {
    e = dsysi_db_exec(db, sql, errbuf, errlen);
    if (e != DSYS_EBUSY) break;
    sqlite3_sleep(10);
  }
  return e;
}

long dsysi_db_busy_sleep_us(int count) {
  enum { FIRST_US = 50, MAX_US = 1000, DOUBLINGS = 5 };
  if (count < 0) return -1;
  /* slept by the tries before this one: 50 + 100 + ... + 800 us, then
   * 1 ms each */
  long long slept = count < DOUBLINGS
                        ? (long long)FIRST_US * ((1LL << count) - 1)
                        : (long long)FIRST_US * ((1LL << DOUBLINGS) - 1) +
                              (long long)(count - DOUBLINGS) * MAX_US;
  if (slept >= (long long)DSYSI_DB_BUSY_MS * 1000) return -1;
  return count < DOUBLINGS ? (long)FIRST_US << count : MAX_US;
}

/* SQLite's busy_timeout sleeps 1, 2, 5, 10 ... 100 ms between tries, so a
 * writer that met another process's transaction of well under a
 * millisecond lost milliseconds (three compute instances on one file: idle
 * CPU, 7 ms a request, 9.2k jobs/s through HTTP; 13.9k with this). */
static int busy_wait(void *ud, int count) {
  (void)ud;
  long us = dsysi_db_busy_sleep_us(count);
  if (us < 0) return 0;
  struct timespec ts = {0, us * 1000L};
  nanosleep(&ts, NULL);
  return 1;
}

int dsysi_db_open(const char *path, int full_sync, sqlite3 **out,
                  char *errbuf, size_t errlen) {
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                               SQLITE_OPEN_NOMUTEX,
                           NULL);
  if (rc != SQLITE_OK) {
    if (errbuf && errlen)
      snprintf(errbuf, errlen, "cannot open %s: %s", path,
               db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return DSYS_EIO;
  }
  sqlite3_busy_handler(db, busy_wait, NULL);
  sqlite3_extended_result_codes(db, 1);
  int e = 0;
  if (strcmp(path, ":memory:") != 0) {
    /* Switching to WAL needs an exclusive lock, and SQLite may answer BUSY
     * at once (without the busy handler) while another process opens or
     * recovers the same file: retry for up to the busy timeout. Once the
     * file is in WAL mode the switch is a no-op and never blocks. */
    e = exec_retry_busy(db, "PRAGMA journal_mode=WAL", errbuf, errlen);
  }
  if (!e)
    e = dsysi_db_exec(db,
                      full_sync ? "PRAGMA synchronous=FULL"
                                : "PRAGMA synchronous=NORMAL",
                      errbuf, errlen);
  if (!e) e = dsysi_db_exec(db, "PRAGMA foreign_keys=ON", errbuf, errlen);
  if (e) {
    sqlite3_close(db);
    return e;
  }
  *out = db;
  return 0;
}

int dsysi_db_migrate(sqlite3 *db, const char *component,
                     const char *const *steps, int nsteps, char *errbuf,
                     size_t errlen) {
  int e = exec_retry_busy(db, "BEGIN IMMEDIATE", errbuf, errlen);
  if (e) return e;
  e = dsysi_db_exec(db,
                    "CREATE TABLE IF NOT EXISTS dsys_schema("
                    "component TEXT PRIMARY KEY, version INTEGER NOT NULL);"
                    "PRAGMA user_version=1",
                    errbuf, errlen);
  int version = 0;
  if (!e) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT version FROM dsys_schema WHERE component=?",
                           -1, &st, NULL) != SQLITE_OK) {
      e = DSYS_EDB;
    } else {
      sqlite3_bind_text(st, 1, component, -1, SQLITE_STATIC);
      if (sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
      sqlite3_finalize(st);
    }
  }
  if (!e && version > nsteps) {
    if (errbuf && errlen)
      snprintf(errbuf, errlen,
               "%s schema version %d is newer than this library knows (%d)",
               component, version, nsteps);
    e = DSYS_ENOTSUP;
  }
  for (int v = version; !e && v < nsteps; v++) {
    e = dsysi_db_exec(db, steps[v], errbuf, errlen);
    if (!e) {
      char sql[256];
      snprintf(sql, sizeof sql,
               "INSERT INTO dsys_schema(component, version) VALUES('%s', %d) "
               "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
               component, v + 1);
      e = dsysi_db_exec(db, sql, errbuf, errlen);
    }
  }
  if (e) {
    dsysi_db_exec(db, "ROLLBACK", NULL, 0);
    return e;
  }
  return dsysi_db_exec(db, "COMMIT", errbuf, errlen);
}
