/* Service identity: key pairs (GnuTLS), ES256 tokens (libjwt, through the
 * pinned-algorithm primitives of crypto.c), credentials that follow their
 * token file, a verifier with a digest cache, and the server guard. See
 * include/distsys/identity.h. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <distsys/identity.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "security/crypto.h"
#include "security/identity_int.h"

#define KEY_MAX 16384
#define USE_CLAIM "dsys-identity"
#define RING 8     /* tokens kept alive after a rotation (see current()) */
#define CACHE 64   /* verified tokens remembered per verifier */

/* ---- keys ---- */

/* The public key (PEM) of a PEM private key. */
static int public_of(const char *priv, size_t len, gnutls_datum_t *pub) {
  gnutls_x509_privkey_t xk = NULL;
  gnutls_privkey_t pk = NULL;
  gnutls_pubkey_t pu = NULL;
  gnutls_datum_t in = {(unsigned char *)priv, (unsigned)len};
  int rc = DSYS_EIO;
  if (gnutls_x509_privkey_init(&xk) || gnutls_privkey_init(&pk) || gnutls_pubkey_init(&pu)) {
    rc = DSYS_ENOMEM;
    goto out;
  }
  if (gnutls_x509_privkey_import(xk, &in, GNUTLS_X509_FMT_PEM) < 0 ||
      gnutls_x509_privkey_get_pk_algorithm(xk) != GNUTLS_PK_ECDSA ||
      gnutls_privkey_import_x509(pk, xk, 0) < 0 ||
      gnutls_pubkey_import_privkey(pu, pk, 0, 0) < 0 ||
      gnutls_pubkey_export2(pu, GNUTLS_X509_FMT_PEM, pub) < 0)
    goto out;
  rc = 0;
out:
  if (pu) gnutls_pubkey_deinit(pu);
  if (pk) gnutls_privkey_deinit(pk); /* does not own xk: not imported with COPY */
  if (xk) gnutls_x509_privkey_deinit(xk);
  return rc;
}

static int generate_key(const char *key_file, int *created) {
  gnutls_x509_privkey_t k = NULL;
  gnutls_datum_t pem = {NULL, 0};
  int rc = DSYS_EINTERNAL;
  if (gnutls_x509_privkey_init(&k)) return DSYS_ENOMEM;
  if (gnutls_x509_privkey_generate(k, GNUTLS_PK_ECDSA,
                                   GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0) == 0 &&
      gnutls_x509_privkey_export2_pkcs8(k, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN,
                                        &pem) == 0)
    rc = dsysi_file_write(key_file, pem.data, pem.size, 0600, 0, created);
  if (pem.data) {
    explicit_bzero(pem.data, pem.size);
    gnutls_free(pem.data);
  }
  gnutls_x509_privkey_deinit(k);
  return rc;
}

int dsys_identity_keygen(const char *key_file, const char *pub_file, int *created) {
  if (!key_file || !pub_file || !*key_file || !*pub_file) return DSYS_EINVAL;
  int made = 0, rc = 0;
  struct stat st;
  if (stat(key_file, &st) != 0) {
    if (errno != ENOENT) return DSYS_EIO;
    if ((rc = generate_key(key_file, &made))) return rc;
  }
  /* the public file always follows the key file that won */
  char *priv = NULL;
  size_t len = 0;
  if ((rc = dsysi_file_read(key_file, KEY_MAX, "identity", &priv, &len))) return rc;
  gnutls_datum_t pub = {NULL, 0};
  rc = public_of(priv, len, &pub);
  explicit_bzero(priv, len);
  free(priv);
  if (rc) {
    dsysi_log(DSYS_LOG_ERROR, "identity", "%s is not an ECDSA private key", key_file);
    return rc;
  }
  char *old = NULL;
  size_t olen = 0;
  int same = 0;
  if (access(pub_file, F_OK) == 0 &&
      dsysi_file_read(pub_file, KEY_MAX, NULL, &old, &olen) == 0) {
    /* compare without the trailing newline dsysi_file_read removed */
    size_t plen = pub.size;
    while (plen && (pub.data[plen - 1] == '\n' || pub.data[plen - 1] == '\r')) plen--;
    same = olen == plen && !memcmp(old, pub.data, plen);
    free(old);
  }
  if (!same) rc = dsysi_file_write(pub_file, pub.data, pub.size, 0644, 1, NULL);
  gnutls_free(pub.data);
  if (!rc && created) *created = made;
  return rc;
}

/* ---- tokens ---- */

static int printable(const char *s, size_t max) {
  size_t n = s ? strlen(s) : 0;
  if (!n || n > max) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] > '~') return 0;
  return 1;
}

/* A JWT's shape: three base64url parts. Keeps CR/LF and the like out of
 * the header a credential is sent in. */
static int token_shaped(const char *t, size_t n) {
  if (!n || n > DSYS_IDENTITY_TOKEN_MAX) return 0;
  int dots = 0;
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    if (c == '.') dots++;
    else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_'))
      return 0;
  }
  return dots == 2;
}

int dsys_identity_issue(const char *key_file, const char *instance, const char *service,
                        const dsys_identity_issue_options *opts, char **out) {
  dsys_identity_issue_options o = {0};
  if (opts) memcpy(&o, opts, opts->size && opts->size < sizeof o ? opts->size : sizeof o);
  if (!key_file || !out || !printable(instance, 127) || !printable(service, 63) ||
      o.lifetime_s < 0)
    return DSYS_EINVAL;
  if (!o.lifetime_s) o.lifetime_s = 86400;
  dsys_clock *clk = o.clock ? o.clock : dsys_clock_real();
  char *key = NULL;
  size_t klen = 0;
  int rc = dsysi_file_read(key_file, KEY_MAX, "identity", &key, &klen);
  if (rc) return rc == DSYS_EINVAL ? DSYS_EIO : rc;
  jwt_t *j = NULL;
  if (jwt_new(&j)) rc = DSYS_ENOMEM;
  else if (jwt_add_grant(j, "sub", instance) || jwt_add_grant(j, "svc", service) ||
           jwt_add_grant(j, "use", USE_CLAIM))
    rc = DSYS_ENOMEM;
  if (!rc) {
    rc = dsysi_token_encode(j, key, klen, JWT_ALG_ES256, dsys_clock_wall_ms(clk) / 1000,
                            o.lifetime_s, out);
    /* libjwt reports an unusable key only when signing */
    if (rc == DSYS_EINTERNAL) rc = DSYS_EIO;
  }
  if (j) jwt_free(j);
  explicit_bzero(key, klen);
  free(key);
  return rc;
}

int dsys_identity_issue_file(const char *key_file, const char *instance, const char *service,
                             const dsys_identity_issue_options *opts, const char *token_file) {
  if (!token_file || !*token_file) return DSYS_EINVAL;
  char *tok = NULL;
  int rc = dsys_identity_issue(key_file, instance, service, opts, &tok);
  if (rc) return rc;
  size_t n = strlen(tok);
  char *line = malloc(n + 2);
  if (!line) rc = DSYS_ENOMEM;
  else {
    memcpy(line, tok, n);
    line[n] = '\n';
    rc = dsysi_file_write(token_file, line, n + 1, 0600, 1, NULL);
    explicit_bzero(line, n + 1);
    free(line);
  }
  explicit_bzero(tok, n);
  dsys_free(tok);
  return rc;
}

/* ---- credentials ---- */

struct dsys_identity {
  pthread_mutex_t mu;
  char *path;                 /* NULL: a fixed token */
  dsys_clock *clk;
  int64_t reload_ms;
  _Atomic int64_t next_check_ms;
  _Atomic(const char *) current;
  char *ring[RING];           /* the last RING tokens; current is one */
  unsigned nloaded;
  struct timespec mtime;      /* of the file last loaded */
  ino_t ino;
  off_t size;
};

/* Read the token file; 0 and a new string, or an error (logged). */
static int load_token(const char *path, char **out) {
  char *t = NULL;
  size_t n = 0;
  int rc = dsysi_file_read(path, DSYS_IDENTITY_TOKEN_MAX, "identity", &t, &n);
  if (rc) return rc;
  while (n && (t[n - 1] == ' ' || t[n - 1] == '\t')) t[--n] = '\0';
  if (!token_shaped(t, n)) {
    dsysi_log(DSYS_LOG_ERROR, "identity", "%s does not hold an identity token", path);
    explicit_bzero(t, n);
    free(t);
    return DSYS_EINVAL;
  }
  *out = t;
  return 0;
}

/* Make t the current token (hold mu or own id exclusively). The string it
 * replaces stays valid for RING - 1 more rotations, so a reader that took
 * the old pointer a moment ago can finish copying it. */
static void install(dsys_identity *id, char *t) {
  unsigned slot = id->nloaded++ % RING;
  char *old = id->ring[slot];
  id->ring[slot] = t;
  atomic_store(&id->current, t);
  if (old) {
    explicit_bzero(old, strlen(old));
    free(old);
  }
}

static void maybe_reload(dsys_identity *id) {
  if (!id->path) return;
  int64_t now = dsys_clock_now_ms(id->clk);
  if (now < atomic_load_explicit(&id->next_check_ms, memory_order_relaxed)) return;
  if (pthread_mutex_trylock(&id->mu)) return; /* another thread is checking */
  atomic_store(&id->next_check_ms, now + id->reload_ms);
  struct stat st;
  if (stat(id->path, &st) == 0 &&
      (st.st_ino != id->ino || st.st_size != id->size ||
       st.st_mtim.tv_sec != id->mtime.tv_sec || st.st_mtim.tv_nsec != id->mtime.tv_nsec)) {
    char *t = NULL;
    if (load_token(id->path, &t) == 0) {
      id->ino = st.st_ino;
      id->size = st.st_size;
      id->mtime = st.st_mtim;
      if (strcmp(t, atomic_load(&id->current))) {
        install(id, t);
        dsysi_log(DSYS_LOG_INFO, "identity", "loaded a new token from %s", id->path);
      } else {
        free(t);
      }
    } else {
      dsysi_log(DSYS_LOG_WARN, "identity", "keeping the previous token (%s unusable)",
                id->path);
    }
  }
  pthread_mutex_unlock(&id->mu);
}

const char *dsysi_identity_current(dsys_identity *id) {
  if (!id) return NULL;
  maybe_reload(id);
  return atomic_load(&id->current);
}

static int identity_alloc(dsys_identity **out, const char *path, char *tok,
                          const dsys_identity_options *opts) {
  dsys_identity_options o = {0};
  if (opts) memcpy(&o, opts, opts->size && opts->size < sizeof o ? opts->size : sizeof o);
  if (o.reload_ms < 0) return DSYS_EINVAL;
  dsys_identity *id = calloc(1, sizeof *id);
  if (!id) return DSYS_ENOMEM;
  if (path && !(id->path = strdup(path))) {
    free(id);
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&id->mu, NULL);
  id->clk = o.clock ? o.clock : dsys_clock_real();
  id->reload_ms = o.reload_ms ? o.reload_ms : 1000;
  atomic_init(&id->next_check_ms, dsys_clock_now_ms(id->clk) + id->reload_ms);
  install(id, tok);
  *out = id;
  return 0;
}

int dsys_identity_open(dsys_identity **out, const char *token_file,
                       const dsys_identity_options *opts) {
  if (!out || !token_file || !*token_file) return DSYS_EINVAL;
  struct stat st;
  if (stat(token_file, &st) != 0) {
    dsysi_log(DSYS_LOG_ERROR, "identity", "cannot open %s: %s", token_file, strerror(errno));
    return DSYS_EIO;
  }
  char *t = NULL;
  int rc = load_token(token_file, &t);
  if (rc) return rc;
  if ((rc = identity_alloc(out, token_file, t, opts))) {
    free(t);
    return rc;
  }
  (*out)->ino = st.st_ino;
  (*out)->size = st.st_size;
  (*out)->mtime = st.st_mtim;
  return 0;
}

int dsys_identity_new(dsys_identity **out, const char *token) {
  if (!out || !token || !token_shaped(token, strlen(token))) return DSYS_EINVAL;
  char *t = strdup(token);
  if (!t) return DSYS_ENOMEM;
  int rc = identity_alloc(out, NULL, t, NULL);
  if (rc) free(t);
  return rc;
}

int dsys_identity_token(dsys_identity *id, char **out) {
  if (!id || !out) return DSYS_EINVAL;
  maybe_reload(id);
  /* under mu: the copy cannot race a rotation */
  pthread_mutex_lock(&id->mu);
  char *c = strdup(atomic_load(&id->current));
  pthread_mutex_unlock(&id->mu);
  if (!c) return DSYS_ENOMEM;
  *out = c;
  return 0;
}

void dsys_identity_free(dsys_identity *id) {
  if (!id) return;
  for (unsigned i = 0; i < RING; i++)
    if (id->ring[i]) {
      explicit_bzero(id->ring[i], strlen(id->ring[i]));
      free(id->ring[i]);
    }
  pthread_mutex_destroy(&id->mu);
  free(id->path);
  free(id);
}

/* ---- verifier ---- */

typedef struct cached {
  unsigned char digest[32];
  dsys_identity_claims c;
  uint64_t used;   /* LRU stamp; 0: empty */
} cached;

struct dsys_identity_verifier {
  char *pub;
  size_t publen;
  dsys_clock *clk;
  pthread_mutex_t mu;
  uint64_t stamp;
  cached cache[CACHE];
};

int dsys_identity_verifier_new(dsys_identity_verifier **out, const char *pub_file,
                               dsys_clock *clock) {
  if (!out || !pub_file || !*pub_file) return DSYS_EINVAL;
  char *pub = NULL;
  size_t len = 0;
  int rc = dsysi_file_read(pub_file, KEY_MAX, NULL, &pub, &len);
  if (rc) {
    dsysi_log(DSYS_LOG_ERROR, "identity", "cannot read the public key %s", pub_file);
    return rc;
  }
  /* refuse anything but an ECDSA public key now, not at the first request */
  gnutls_pubkey_t pk = NULL;
  gnutls_datum_t d = {(unsigned char *)pub, (unsigned)len};
  int ok = gnutls_pubkey_init(&pk) == 0 &&
           gnutls_pubkey_import(pk, &d, GNUTLS_X509_FMT_PEM) == 0 &&
           gnutls_pubkey_get_pk_algorithm(pk, NULL) == GNUTLS_PK_ECDSA;
  if (pk) gnutls_pubkey_deinit(pk);
  if (!ok) {
    dsysi_log(DSYS_LOG_ERROR, "identity", "%s is not an ECDSA public key (PEM)", pub_file);
    free(pub);
    return DSYS_EINVAL;
  }
  dsys_identity_verifier *v = calloc(1, sizeof *v);
  if (!v) {
    free(pub);
    return DSYS_ENOMEM;
  }
  v->pub = pub;
  v->publen = len;
  v->clk = clock ? clock : dsys_clock_real();
  pthread_mutex_init(&v->mu, NULL);
  *out = v;
  return 0;
}

/* Copy a string claim; 0 when present, printable and short enough. */
static int claim(jwt_t *j, const char *name, char *dst, size_t cap) {
  const char *s = jwt_get_grant(j, name);
  if (!printable(s, cap - 1)) return -1;
  strcpy(dst, s);
  return 0;
}

int dsys_identity_verify(dsys_identity_verifier *v, const char *token,
                         dsys_identity_claims *out) {
  if (!v) return DSYS_EINVAL;
  size_t n = token ? strlen(token) : 0;
  if (!token_shaped(token, n)) return DSYS_EAUTH;
  int64_t now_s = dsys_clock_wall_ms(v->clk) / 1000;
  unsigned char dg[32];
  if (gnutls_hash_fast(GNUTLS_DIG_SHA256, token, n, dg)) return DSYS_ENOMEM;
  pthread_mutex_lock(&v->mu);
  for (size_t i = 0; i < CACHE; i++) {
    cached *e = &v->cache[i];
    if (!e->used || memcmp(e->digest, dg, sizeof dg)) continue;
    if (e->c.expires_s <= now_s) {
      e->used = 0; /* expired: verify again (and fail) */
      break;
    }
    e->used = ++v->stamp;
    if (out) *out = e->c;
    pthread_mutex_unlock(&v->mu);
    return 0;
  }
  pthread_mutex_unlock(&v->mu);

  jwt_t *j = NULL;
  int rc = dsysi_token_decode(token, v->pub, v->publen, JWT_ALG_ES256, now_s, &j);
  if (rc) return rc;
  dsys_identity_claims c;
  memset(&c, 0, sizeof c);
  const char *use = jwt_get_grant(j, "use");
  errno = 0;
  long exp = jwt_get_grant_int(j, "exp");
  if (!use || strcmp(use, USE_CLAIM) || claim(j, "sub", c.instance, sizeof c.instance) ||
      claim(j, "svc", c.service, sizeof c.service) || errno)
    rc = DSYS_EAUTH;
  jwt_free(j);
  if (rc) return rc;
  c.expires_s = exp;
  pthread_mutex_lock(&v->mu);
  cached *slot = &v->cache[0];
  for (size_t i = 1; i < CACHE && slot->used; i++)
    if (v->cache[i].used < slot->used) slot = &v->cache[i];
  memcpy(slot->digest, dg, sizeof dg);
  slot->c = c;
  slot->used = ++v->stamp;
  pthread_mutex_unlock(&v->mu);
  if (out) *out = c;
  return 0;
}

void dsys_identity_verifier_free(dsys_identity_verifier *v) {
  if (!v) return;
  pthread_mutex_destroy(&v->mu);
  free(v->pub);
  free(v);
}
