/*
 * dsys-cluster's TLS files of a multi-host deployment (multi-host.md, "TLS
 * and identities across hosts"): the deployment CA and one host's
 * certificate and key, checked before anything starts.
 */
#ifndef DSYS_CLUSTER_TLS_H
#define DSYS_CLUSTER_TLS_H
#include <limits.h>
#include <sys/types.h>

typedef struct cluster_tls {
  char ca[PATH_MAX + 16], cert[PATH_MAX + 48], key[PATH_MAX + 48];
} cluster_tls;

/* Fills t with DIR/ca.pem, DIR/HOST.pem and DIR/HOST.key and checks them:
 * each readable, the key a regular file of mode 0600 (or stricter) owned
 * by us, the certificate signed by the CA, valid now, with the address
 * addr (IPv4) in its subjectAltName, and matching the key. 0, or -1 after
 * a message on stderr naming the file and what is wrong. */
int cluster_tls_check(const char *dir, const char *host, const char *addr, cluster_tls *t);

/* Copies t's three files into DIR (created 0700) for a process that runs
 * as uid/gid (Patroni and PostgreSQL run as postgres and must read the key
 * themselves; PostgreSQL wants it 0600 and its own): out gets the copies'
 * paths. 0, or -1 (said). */
int cluster_tls_copy(const cluster_tls *t, const char *dir, uid_t uid, gid_t gid, cluster_tls *out);

#endif
