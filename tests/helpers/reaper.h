/*
 * Servers a test started (PostgreSQL, etcd members) are killed by PID on
 * the exit paths where their scripts cannot run: a failed assertion's
 * abort, a crash, the test timeout's SIGTERM, a plain exit without the
 * stop call. One table for every helper that starts servers, and the
 * two things those helpers share: running their script, reading a PID.
 */
#ifndef TESTS_REAPER_H
#define TESTS_REAPER_H

#include <sys/types.h>

/** Kill pid (SIGKILL) if the test exits or dies while it is tracked.
 *  Installs the exit and signal hooks on first use. */
void reaper_track(pid_t pid);

/** Stop tracking pid (it was stopped the normal way). */
void reaper_untrack(pid_t pid);

/** Run `sh $top_srcdir/scripts/SCRIPT ARGS` (the scripts that start and
 *  stop the servers: pg-local, etcd-local); its first output line goes to
 *  first (may be NULL). @return 0, or -1 with a TAP comment. */
int reaper_run_script(const char *script, const char *args, char *first, size_t n);

/** The PID in a pid file the scripts write, or -1. */
pid_t reaper_pid_file(const char *path);

#endif
