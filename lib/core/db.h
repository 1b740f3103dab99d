/*
 * Internal SQLite helpers shared by every SQLite backend (store, queue,
 * registry). One database file may hold several components' tables.
 */
#ifndef DSYSI_DB_H
#define DSYSI_DB_H

#include <sqlite3.h>

/** Busy timeout for cross-process waits, in ms. */
#define DSYSI_DB_BUSY_MS 5000

/**
 * How long the busy handler of dsysi_db_open's connections sleeps before
 * try count + 1 of a lock another connection holds (count from 0): 50 us
 * doubling to 1 ms, then 1 ms, until the sleeps add up to DSYSI_DB_BUSY_MS.
 * @return microseconds, or -1: give up (the statement gets SQLITE_BUSY).
 */
long dsysi_db_busy_sleep_us(int count);

/**
 * Open (creating) a database with WAL, a busy timeout and the given
 * synchronous mode, suitable for one thread at a time.
 * @param path file path, or ":memory:".
 * @param full_sync 1 for synchronous=FULL, 0 for NORMAL.
 * @return 0 or DSYS_EDB / DSYS_EIO (message in errbuf).
 */
int dsysi_db_open(const char *path, int full_sync, sqlite3 **out,
                  char *errbuf, size_t errlen);

/**
 * Bring one component's schema up to date. Versions are kept per component
 * in a table dsys_schema(component, version) because several components
 * share one file (a single user_version could not tell them apart); the
 * file's user_version is set to the highest layout of that table (1).
 * steps[i] is the SQL that moves from version i to i + 1. Runs in one
 * BEGIN IMMEDIATE transaction, so concurrent openers do not race.
 * @return 0, DSYS_EDB.
 */
int dsysi_db_migrate(sqlite3 *db, const char *component,
                     const char *const *steps, int nsteps, char *errbuf,
                     size_t errlen);

/** Execute SQL with no results. @return 0 or DSYS_EDB (message in errbuf). */
int dsysi_db_exec(sqlite3 *db, const char *sql, char *errbuf, size_t errlen);

/** Map an SQLite result code to a DSYS_E code (BUSY -> EBUSY, FULL -> EIO, ...). */
int dsysi_db_err(int sqlite_rc);

#endif
