/*
 * A real, throwaway etcd cluster for a test, started and stopped through
 * scripts/etcd-local (one implementation for the C tests, the shell tests
 * and users). Members listen on loopback ports chosen by the script; data
 * lives on tmpfs (/dev/shm) when there is one, so the fsync of every write
 * costs little. A test that cannot start it fails; it never skips.
 */
#ifndef TESTS_ETCDSERVER_H
#define TESTS_ETCDSERVER_H

#include <stddef.h>

typedef struct tetcd {
  char dir[64];        /**< the members' directory (data, logs, PIDs) */
  char endpoints[256]; /**< "127.0.0.1:P1,127.0.0.1:P2,..." */
  int members;
  int tls, auth;       /**< started with --tls / --auth */
} tetcd;

/** Create a temp dir and start a cluster of `members` members; fills dir
 *  and endpoints. @return 0, or -1 (message on stdout as a TAP comment). */
int tetcd_start(tetcd *t, int members);

/** As tetcd_start with etcd-local's start options (e.g. "--tls --auth
 *  --auth-token-ttl 2"): TLS material in dir/tls, root's password in
 *  dir/root-password. */
int tetcd_start_with(tetcd *t, int members, const char *options);

/** The URL of prefix on t: "etcd://EPS/prefix", or "etcds://EPS/prefix?ca=
 *  ..&cert=..&key=.." with TLS, plus "user=root&password-file=.." with
 *  auth. */
void tetcd_url(const tetcd *t, const char *prefix, char *out, size_t n);

/** SIGKILL member i (1..members) and wait until it is gone. */
int tetcd_kill_member(tetcd *t, int i);

/** Start member i again on its ports and data. @return 0 or -1. */
int tetcd_start_member(tetcd *t, int i);

/** Stop every member (by PID) and remove the directory. Safe to repeat. */
void tetcd_stop(tetcd *t);

#endif
