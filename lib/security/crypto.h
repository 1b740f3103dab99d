/*
 * Internal: the password and token primitives shared by the public helpers
 * of <distsys/auth.h> (lib/security/crypto.c) and the auth service
 * (lib/services/auth.c). One implementation serves both.
 */
#ifndef DSYSI_CRYPTO_H
#define DSYSI_CRYPTO_H

#include <crypt.h>
#include <stdint.h>
#include <jwt.h>

/** Hash pw with a fresh salt for prefix into out (CRYPT_OUTPUT_SIZE bytes).
 *  @return 0, DSYS_EINVAL (prefix), DSYS_ENOMEM, DSYS_EINTERNAL. */
int dsysi_password_hash(const char *prefix, const char *pw, char *out);

/** 1 when pw matches stored (constant-time compare), 0 when not,
 *  DSYS_ENOMEM when out of memory. */
int dsysi_password_check(const char *pw, const char *stored);

/** HMAC algorithm from its name (NULL = HS256). @return 0, DSYS_EINVAL. */
int dsysi_token_alg(const char *name, jwt_alg_t *out);

/** Set iat = now_s and exp = now_s + lifetime_s on j (replacing them), sign
 *  with alg and secret, encode. *out is malloc'ed.
 *  @return 0, DSYS_ENOMEM, DSYS_EINTERNAL. */
int dsysi_token_encode(jwt_t *j, const void *secret, size_t len,
                       jwt_alg_t alg, int64_t now_s, int64_t lifetime_s,
                       char **out);

/** Decode and check a token: signature, algorithm == alg, exp > now_s,
 *  nbf <= now_s when present. *out receives the token (jwt_free()).
 *  @return 0, DSYS_EAUTH. */
int dsysi_token_decode(const char *token, const void *secret, size_t len,
                       jwt_alg_t alg, int64_t now_s, jwt_t **out);

#endif
