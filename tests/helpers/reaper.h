/*
 * Servers a test started (PostgreSQL, etcd members) are killed by PID on
 * the exit paths where their scripts cannot run: a failed assertion's
 * abort, a crash, the test timeout's SIGTERM, a plain exit without the
 * stop call. One table for every helper that starts servers.
 */
#ifndef TESTS_REAPER_H
#define TESTS_REAPER_H

#include <sys/types.h>

/** Kill pid (SIGKILL) if the test exits or dies while it is tracked.
 *  Installs the exit and signal hooks on first use. */
void reaper_track(pid_t pid);

/** Stop tracking pid (it was stopped the normal way). */
void reaper_untrack(pid_t pid);

#endif
