/*
 * A real, throwaway PostgreSQL server for a test, started and stopped
 * through scripts/pg-local (one implementation for the C tests, the shell
 * tests and users). The server runs with fsync off (the tests kill the
 * server process, never the machine: committed data survives in the page
 * cache) and listens only on a unix socket in its own temp directory.
 * A test that cannot start it fails; it never skips.
 */
#ifndef TESTS_PGSERVER_H
#define TESTS_PGSERVER_H

#include <sys/types.h>

typedef struct tpg {
  char dir[64];  /**< the server's directory (data, socket, log) */
  char url[256]; /**< postgresql:// URI of database "dsys" */
} tpg;

/** Create a temp dir, initdb and start the server; fills dir and url.
 *  @return 0, or -1 (message on stderr as a TAP comment). */
int tpg_start(tpg *t);

/** Start the server again in the same directory (after tpg_kill or
 *  tpg_stop), waiting until it accepts connections. @return 0 or -1. */
int tpg_restart(tpg *t);

/** SIGKILL the server's postmaster (a crash); its children exit on their
 *  own when they notice. Waits until the socket is gone. */
void tpg_kill(tpg *t);

/** The postmaster's PID, or -1. */
pid_t tpg_pid(const tpg *t);

/** Stop the server (SIGTERM, bounded) and remove its directory. */
void tpg_stop(tpg *t);

#endif
