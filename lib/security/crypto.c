/*
 * Password hashing and JWT primitives (internal, see crypto.h) and the
 * public helpers of <distsys/auth.h> built on them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/auth.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "security/crypto.h"

/* ---- internal primitives ---- */

int dsysi_password_hash(const char *prefix, const char *pw, char *out) {
  char *setting = crypt_gensalt_ra(prefix, 0, NULL, 0);
  if (!setting) return errno == ENOMEM ? DSYS_ENOMEM : DSYS_EINVAL;
  struct crypt_data *cd = calloc(1, sizeof *cd);
  if (!cd) {
    free(setting);
    return DSYS_ENOMEM;
  }
  char *h = crypt_rn(pw, setting, cd, (int)sizeof *cd);
  free(setting);
  int rc = 0;
  if (!h || h[0] == '*' || strlen(h) >= CRYPT_OUTPUT_SIZE) rc = DSYS_EINTERNAL;
  else strcpy(out, h);
  explicit_bzero(cd, sizeof *cd);
  free(cd);
  return rc;
}

int dsysi_password_check(const char *pw, const char *stored) {
  struct crypt_data *cd = calloc(1, sizeof *cd);
  if (!cd) return DSYS_ENOMEM;
  char *h = crypt_rn(pw, stored, cd, (int)sizeof *cd);
  int ok = h && h[0] != '*' &&
           dsys_ct_equal(h, strlen(h), stored, strlen(stored));
  explicit_bzero(cd, sizeof *cd);
  free(cd);
  return ok;
}

int dsysi_token_alg(const char *name, jwt_alg_t *out) {
  jwt_alg_t alg = JWT_ALG_HS256;
  if (name) {
    alg = jwt_str_alg(name);
    if (alg != JWT_ALG_HS256 && alg != JWT_ALG_HS384 && alg != JWT_ALG_HS512)
      return DSYS_EINVAL;
  }
  *out = alg;
  return 0;
}

int dsysi_token_encode(jwt_t *j, const void *secret, size_t len,
                       jwt_alg_t alg, int64_t now_s, int64_t lifetime_s,
                       char **out) {
  jwt_del_grants(j, "iat");
  jwt_del_grants(j, "exp");
  if (jwt_add_grant_int(j, "iat", (long)now_s) ||
      jwt_add_grant_int(j, "exp", (long)(now_s + lifetime_s)) ||
      jwt_set_alg(j, alg, secret, (int)len))
    return DSYS_EINTERNAL;
  errno = 0;
  char *tok = jwt_encode_str(j);
  if (!tok) return errno == ENOMEM ? DSYS_ENOMEM : DSYS_EINTERNAL;
  *out = tok;
  return 0;
}

int dsysi_token_decode(const char *token, const void *secret, size_t len,
                       jwt_alg_t alg, int64_t now_s, jwt_t **out) {
  jwt_t *j = NULL;
  if (!token || jwt_decode(&j, token, secret, (int)len) || !j) {
    if (j) jwt_free(j);
    return DSYS_EAUTH;
  }
  if (jwt_get_alg(j) != alg) goto bad;
  errno = 0;
  long exp = jwt_get_grant_int(j, "exp");
  if (errno || exp <= now_s) goto bad;
  errno = 0;
  long nbf = jwt_get_grant_int(j, "nbf");
  if (!errno && nbf > now_s) goto bad;
  *out = j;
  return 0;
bad:
  jwt_free(j);
  return DSYS_EAUTH;
}

/* ---- public helpers ---- */

int dsys_password_hash(const char *password, const char *prefix, char **out) {
  if (!password || !out || strlen(password) > DSYS_PASSWORD_MAX)
    return DSYS_EINVAL;
  char h[CRYPT_OUTPUT_SIZE];
  int rc = dsysi_password_hash(prefix ? prefix : "$y$", password, h);
  if (rc) return rc;
  char *s = strdup(h);
  explicit_bzero(h, sizeof h);
  if (!s) return DSYS_ENOMEM;
  *out = s;
  return 0;
}

int dsys_password_verify(const char *password, const char *hash) {
  if (!password || !hash || strlen(password) > DSYS_PASSWORD_MAX)
    return DSYS_EINVAL;
  int ok = dsysi_password_check(password, hash);
  if (ok < 0) return ok;
  return ok ? 0 : DSYS_EAUTH;
}

/* Defaults filled in; 0 or DSYS_EINVAL. */
static int token_setup(const void *secret, size_t secret_len,
                       const dsys_token_options *opts, dsys_token_options *o,
                       jwt_alg_t *alg) {
  memset(o, 0, sizeof *o);
  if (opts) {
    size_t n = opts->size && opts->size < sizeof *o ? opts->size : sizeof *o;
    memcpy(o, opts, n);
  }
  if (!secret || secret_len < DSYS_TOKEN_SECRET_MIN ||
      secret_len > DSYS_TOKEN_SECRET_MAX || o->lifetime_s < 0)
    return DSYS_EINVAL;
  if (!o->lifetime_s) o->lifetime_s = 86400;
  if (!o->clock) o->clock = dsys_clock_real();
  return dsysi_token_alg(o->alg, alg);
}

int dsys_token_issue(const void *secret, size_t secret_len,
                     const char *claims_json, const dsys_token_options *opts,
                     char **out) {
  dsys_token_options o;
  jwt_alg_t alg;
  if (!out) return DSYS_EINVAL;
  int rc = token_setup(secret, secret_len, opts, &o, &alg);
  if (rc) return rc;
  if (claims_json) { /* strict validation before libjwt sees it */
    json_object *c = NULL;
    rc = dsysi_json_parse_object(claims_json, strlen(claims_json), &c);
    json_object_put(c);
    if (rc) return rc;
  }
  jwt_t *j = NULL;
  if (jwt_new(&j)) return DSYS_ENOMEM;
  if (claims_json && jwt_add_grants_json(j, claims_json)) {
    jwt_free(j);
    return DSYS_EBADJSON;
  }
  rc = dsysi_token_encode(j, secret, secret_len, alg,
                          dsys_clock_wall_ms(o.clock) / 1000, o.lifetime_s,
                          out);
  jwt_free(j);
  return rc;
}

int dsys_token_verify(const void *secret, size_t secret_len,
                      const char *token, const dsys_token_options *opts,
                      char **claims) {
  dsys_token_options o;
  jwt_alg_t alg;
  if (!token) return DSYS_EINVAL;
  int rc = token_setup(secret, secret_len, opts, &o, &alg);
  if (rc) return rc;
  jwt_t *j = NULL;
  rc = dsysi_token_decode(token, secret, secret_len, alg,
                          dsys_clock_wall_ms(o.clock) / 1000, &j);
  if (rc) return rc;
  if (claims) {
    char *c = jwt_get_grants_json(j, NULL);
    if (!c) rc = DSYS_ENOMEM;
    else *claims = c; /* malloc'ed by libjwt: dsys_free() releases it */
  }
  jwt_free(j);
  return rc;
}
