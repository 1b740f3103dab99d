/* dsys-cluster's TLS files of a deployment: see cluster-tls.h. */
#include "cluster-tls.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

static int load(const char *path, const char *what, gnutls_datum_t *d) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "dsys-cluster: cannot read the %s %s: %s (deploy/tls-certs makes it; "
            "multi-host.md)\n", what, path, strerror(errno));
    return -1;
  }
  close(fd);
  int rc = gnutls_load_file(path, d);
  if (rc < 0) fprintf(stderr, "dsys-cluster: cannot read the %s %s: %s\n", what, path, gnutls_strerror(rc));
  return rc < 0 ? -1 : 0;
}

int cluster_tls_check(const char *dir, const char *host, const char *addr, cluster_tls *t) {
  snprintf(t->ca, sizeof t->ca, "%s/ca.pem", dir);
  snprintf(t->cert, sizeof t->cert, "%s/%s.pem", dir, host);
  snprintf(t->key, sizeof t->key, "%s/%s.key", dir, host);
  gnutls_datum_t ca = {0}, cd = {0}, kd = {0};
  gnutls_x509_crt_t *cas = NULL, crt = NULL;
  gnutls_x509_privkey_t key = NULL;
  unsigned nca = 0;
  int ok = -1, rc;
  struct stat st;
  if (load(t->ca, "deployment CA", &ca) || load(t->cert, "host's certificate", &cd) ||
      load(t->key, "host's key", &kd))
    goto out;
  /* a key others can read is a key others may have: refused, as ssh does */
  if (stat(t->key, &st) || !S_ISREG(st.st_mode) || (st.st_mode & 077) || st.st_uid != geteuid()) {
    fprintf(stderr, "dsys-cluster: the key %s must be a file of ours with mode 0600 (it is %04o, "
            "owner %d): chmod 600 it\n", t->key, (unsigned)(st.st_mode & 07777), (int)st.st_uid);
    goto out;
  }
  if ((rc = gnutls_x509_crt_list_import2(&cas, &nca, &ca, GNUTLS_X509_FMT_PEM, 0)) < 0 || !nca) {
    fprintf(stderr, "dsys-cluster: %s holds no PEM certificate: %s\n", t->ca,
            rc < 0 ? gnutls_strerror(rc) : "empty");
    goto out;
  }
  if (gnutls_x509_crt_init(&crt) < 0 ||
      (rc = gnutls_x509_crt_import(crt, &cd, GNUTLS_X509_FMT_PEM)) < 0) {
    fprintf(stderr, "dsys-cluster: %s is not a PEM certificate: %s\n", t->cert, gnutls_strerror(rc));
    goto out;
  }
  if (gnutls_x509_privkey_init(&key) < 0 ||
      (rc = gnutls_x509_privkey_import2(key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
    fprintf(stderr, "dsys-cluster: %s is not an unencrypted PEM private key: %s\n", t->key,
            gnutls_strerror(rc));
    goto out;
  }
  unsigned char id1[64], id2[64];
  size_t l1 = sizeof id1, l2 = sizeof id2;
  if (gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, id1, &l1) < 0 ||
      gnutls_x509_privkey_get_key_id(key, GNUTLS_KEYID_USE_SHA256, id2, &l2) < 0 || l1 != l2 ||
      memcmp(id1, id2, l1)) {
    fprintf(stderr, "dsys-cluster: the key %s does not belong to the certificate %s\n", t->key, t->cert);
    goto out;
  }
  unsigned status = 0;
  if (gnutls_x509_crt_verify(crt, cas, nca, 0, &status) < 0 || status) {
    gnutls_datum_t why = {0};
    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0);
    fprintf(stderr, "dsys-cluster: the certificate %s does not verify with the CA %s: %s\n", t->cert,
            t->ca, why.data ? (char *)why.data : "error");
    gnutls_free(why.data);
    goto out;
  }
  unsigned char ip[4];
  if (inet_pton(AF_INET, addr, ip) != 1 || !gnutls_x509_crt_check_ip(crt, ip, 4, 0)) {
    fprintf(stderr, "dsys-cluster: the certificate %s is not for %s (host %s's address is not in "
            "its subjectAltName: another host's certificate?)\n", t->cert, addr, host);
    goto out;
  }
  ok = 0;
out:
  if (key) gnutls_x509_privkey_deinit(key);
  if (crt) gnutls_x509_crt_deinit(crt);
  for (unsigned i = 0; i < nca; i++) gnutls_x509_crt_deinit(cas[i]);
  gnutls_free(cas);
  gnutls_free(ca.data);
  gnutls_free(cd.data);
  if (kd.data) {
    memset(kd.data, 0, kd.size);
    gnutls_free(kd.data);
  }
  return ok;
}

static int copy(const char *from, const char *to, uid_t uid, gid_t gid) {
  char tmp[PATH_MAX + 64], buf[8192];
  snprintf(tmp, sizeof tmp, "%s.tmp", to);
  int in = open(from, O_RDONLY | O_CLOEXEC), rc = -1;
  int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ssize_t n = 0;
  while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) n = -1;
  if (in >= 0 && out >= 0 && n == 0 && (!uid || fchown(out, uid, gid) == 0) && fchmod(out, 0600) == 0)
    rc = 0;
  if (in >= 0) close(in);
  if (out >= 0 && close(out)) rc = -1;
  if (!rc && rename(tmp, to)) rc = -1;
  if (rc) {
    fprintf(stderr, "dsys-cluster: cannot copy %s to %s: %s\n", from, to, strerror(errno));
    unlink(tmp);
  }
  memset(buf, 0, sizeof buf);
  return rc;
}

int cluster_tls_copy(const cluster_tls *t, const char *dir, uid_t uid, gid_t gid, cluster_tls *out) {
  if ((mkdir(dir, 0700) && errno != EEXIST) || (uid && chown(dir, uid, gid))) {
    fprintf(stderr, "dsys-cluster: cannot prepare %s: %s\n", dir, strerror(errno));
    return -1;
  }
  snprintf(out->ca, sizeof out->ca, "%s/ca.pem", dir);
  snprintf(out->cert, sizeof out->cert, "%s/host.pem", dir);
  snprintf(out->key, sizeof out->key, "%s/host.key", dir);
  return copy(t->ca, out->ca, uid, gid) || copy(t->cert, out->cert, uid, gid) ||
                 copy(t->key, out->key, uid, gid)
             ? -1
             : 0;
}
