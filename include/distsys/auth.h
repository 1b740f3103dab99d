/*
 * Auth helpers: salted password hashes (libxcrypt) and HMAC-signed JSON Web
 * Tokens (libjwt). These are the functions the auth service
 * (dsys_service_auth_mount) uses itself, exposed for programs and bindings.
 *
 * Passwords: dsys_password_hash() makes a hash string in crypt(3) format
 * with a fresh random salt ("$y$..." for yescrypt, the default, or "$2b$..."
 * for bcrypt); dsys_password_verify() checks a password against such a
 * string in constant time. Hashing is deliberately slow (tens of ms).
 *
 * Tokens: dsys_token_issue() signs a JSON object of claims with HS256,
 * HS384 or HS512 and adds "iat" and "exp"; dsys_token_verify() checks the
 * signature, that the token's algorithm is exactly the configured one (a
 * token with alg "none" or any other algorithm is rejected), "exp" (must
 * be present and in the future) and "nbf" (if present), and returns the
 * claims.
 *
 * Thread-safety: every function may be called from any thread at once
 * (crypt_rn with a per-call buffer; no static state).
 */
#ifndef DSYS_AUTH_H
#define DSYS_AUTH_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Longest accepted password in bytes. */
#define DSYS_PASSWORD_MAX 1024
/** Shortest and longest accepted token secret in bytes. */
#define DSYS_TOKEN_SECRET_MIN 32
#define DSYS_TOKEN_SECRET_MAX 4096

/**
 * Hash a password with a fresh random salt.
 * @param password UTF-8, 0..DSYS_PASSWORD_MAX bytes.
 * @param prefix crypt method prefix, e.g. "$y$" (yescrypt) or "$2b$"
 *        (bcrypt); NULL means "$y$".
 * @param out receives the hash string (release with dsys_free()).
 * @return 0, DSYS_EINVAL (NULL argument, password too long, prefix not
 *         supported), DSYS_ENOMEM, DSYS_EINTERNAL (crypt failed).
 */
DSYS_API int dsys_password_hash(const char *password, const char *prefix,
                                char **out);

/**
 * Check a password against a hash made by dsys_password_hash() (any crypt
 * format libxcrypt knows). The comparison takes constant time.
 * @return 0 (matches), DSYS_EAUTH (does not match, or hash malformed),
 *         DSYS_EINVAL (NULL argument, password too long), DSYS_ENOMEM.
 */
DSYS_API int dsys_password_verify(const char *password, const char *hash);

/** Token options. Zero fields take the defaults given. */
typedef struct dsys_token_options {
  size_t size;          /**< sizeof(dsys_token_options), or 0 */
  const char *alg;      /**< "HS256" (default), "HS384" or "HS512" */
  int64_t lifetime_s;   /**< issue: exp = iat + lifetime_s; default 86400 */
  dsys_clock *clock;    /**< wall time for iat/exp/nbf; default real */
} dsys_token_options;

/**
 * Issue a signed token.
 * @param secret, secret_len HMAC key, DSYS_TOKEN_SECRET_MIN..MAX bytes.
 * @param claims_json a JSON object text of claims (e.g.
 *        {"id":"u1","email":"a@example.com"}), or NULL for none; "iat" and
 *        "exp" are set by the library (given values are replaced).
 * @param opts may be NULL.
 * @param out receives the token text (release with dsys_free()).
 * @return 0, DSYS_EINVAL (NULL out or secret, bad secret length, unknown
 *         algorithm), DSYS_EBADJSON (claims not JSON), DSYS_ETYPE (claims
 *         not an object), DSYS_ENOMEM, DSYS_EINTERNAL.
 */
DSYS_API int dsys_token_issue(const void *secret, size_t secret_len,
                              const char *claims_json,
                              const dsys_token_options *opts, char **out);

/**
 * Verify a token (see the header comment for the checks).
 * @param claims receives the claims as a JSON object text (release with
 *        dsys_free()); may be NULL if not wanted.
 * @return 0, DSYS_EAUTH (bad signature, malformed, wrong algorithm,
 *         expired, not yet valid, no exp), DSYS_EINVAL (NULL token or
 *         secret, bad secret length, unknown algorithm), DSYS_ENOMEM.
 */
DSYS_API int dsys_token_verify(const void *secret, size_t secret_len,
                               const char *token,
                               const dsys_token_options *opts, char **claims);

#ifdef __cplusplus
}
#endif
#endif
