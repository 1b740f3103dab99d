/*
 * Service identity: instances prove who they are to the registry and to
 * each other with signed tokens issued at start.
 *
 * Trust model. One identity key pair per deployment (ECDSA P-256). The
 * private key stays with the issuer (the supervisor, dsys-cluster, or an
 * operator with `dsys-identity issue`); verifiers (the registry, the
 * services) hold only the public key, so no instance can mint a token for
 * another. An identity token is an ES256 JWT with the claims
 * "sub" (the instance name, e.g. "data-1"), "svc" (its service type, e.g.
 * "data"), "use": "dsys-identity", "iat" and "exp". It travels in the
 * X-Dsys-Identity request header (DSYS_IDENTITY_HEADER).
 *
 * Verification pins the algorithm to ES256 (tokens with "alg": "none", an
 * HMAC algorithm keyed with the public key, or any other algorithm are
 * refused), checks the signature, "exp" (required), "nbf" (if present) and
 * "use". Verified tokens are cached by their SHA-256 digest until they
 * expire, so a peer's repeated calls cost one hash, not one signature
 * check.
 *
 * Rotation. An instance reads its token from a file
 * (dsys_identity_open()) and reads it again when the file changes (checked
 * at most every reload_ms), so an issuer refreshes short-lived tokens by
 * rewriting the files (dsys_identity_issue_file() replaces atomically).
 *
 * Thread-safety: every function may be called from any thread at once on
 * the same object, except the free functions.
 */
#ifndef DSYS_IDENTITY_H
#define DSYS_IDENTITY_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/server.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The request header that carries an identity token. */
#define DSYS_IDENTITY_HEADER "X-Dsys-Identity"
/** Longest accepted identity token in bytes. */
#define DSYS_IDENTITY_TOKEN_MAX 4096

/** What a verified token says. */
typedef struct dsys_identity_claims {
  char instance[128];  /**< "sub": the instance name, e.g. "data-1" */
  char service[64];    /**< "svc": its service type, e.g. "data" */
  int64_t expires_s;   /**< "exp", Unix seconds */
} dsys_identity_claims;

/**
 * Create an identity key pair unless key_file exists: an ECDSA P-256
 * private key (PEM, PKCS#8, mode 0600) in key_file and its public key
 * (PEM, mode 0644) in pub_file. When key_file exists, pub_file is written
 * from it if missing or different. Racing callers end with one key.
 * @param created may be NULL; receives 1 when this call made the key.
 * @return 0, DSYS_EINVAL (NULL path), DSYS_EIO (cannot read or write a
 *         file; an existing key_file that is not a usable key),
 *         DSYS_ENOMEM, DSYS_EINTERNAL (key generation failed).
 */
DSYS_API int dsys_identity_keygen(const char *key_file, const char *pub_file,
                                  int *created);

/** Issue options. Zero fields take the defaults given. */
typedef struct dsys_identity_issue_options {
  size_t size;          /**< sizeof(dsys_identity_issue_options), or 0 */
  int64_t lifetime_s;   /**< exp = now + lifetime_s; default 86400 */
  dsys_clock *clock;    /**< wall time for iat/exp; default real */
} dsys_identity_issue_options;

/**
 * Issue an identity token.
 * @param key_file the private key made by dsys_identity_keygen().
 * @param instance the instance name ("sub"), 1..127 bytes of printable
 *        ASCII.
 * @param service the service type ("svc"), 1..63 bytes of printable ASCII.
 * @param opts may be NULL.
 * @param out receives the token (release with dsys_free()).
 * @return 0, DSYS_EINVAL (NULL or bad argument, negative lifetime),
 *         DSYS_EIO (key file unreadable or not a private key),
 *         DSYS_ENOMEM, DSYS_EINTERNAL.
 */
DSYS_API int dsys_identity_issue(const char *key_file, const char *instance,
                                 const char *service,
                                 const dsys_identity_issue_options *opts,
                                 char **out);

/**
 * Issue a token as dsys_identity_issue() and write it to token_file
 * (mode 0600), replacing an existing file atomically: an instance reading
 * the file sees the old token or the new one, never a mix.
 * @return as dsys_identity_issue(); DSYS_EIO when the file cannot be
 *         written.
 */
DSYS_API int dsys_identity_issue_file(const char *key_file, const char *instance,
                                      const char *service,
                                      const dsys_identity_issue_options *opts,
                                      const char *token_file);

/* ---- an instance's own credential ---- */

typedef struct dsys_identity dsys_identity;

/** Credential options. Zero fields take the defaults given. */
typedef struct dsys_identity_options {
  size_t size;          /**< sizeof(dsys_identity_options), or 0 */
  dsys_clock *clock;    /**< paces the reload checks; default real */
  int64_t reload_ms;    /**< look for a changed token file at most this
                             often; default 1000 */
} dsys_identity_options;

/**
 * Load an instance's credential from a token file (as written by
 * dsys_identity_issue_file()). The token is not verified here (the
 * instance need not hold the public key); it must look like a JWT.
 * @param opts may be NULL.
 * @return 0, DSYS_EINVAL (NULL argument; the file is empty, larger than
 *         DSYS_IDENTITY_TOKEN_MAX or not a token), DSYS_EIO (unreadable),
 *         DSYS_ENOMEM. A failed reload later keeps the last good token
 *         (and logs a warning).
 */
DSYS_API int dsys_identity_open(dsys_identity **out, const char *token_file,
                                const dsys_identity_options *opts);

/**
 * A credential holding a fixed token (never reloaded).
 * @return 0, DSYS_EINVAL (NULL, or not a token), DSYS_ENOMEM.
 */
DSYS_API int dsys_identity_new(dsys_identity **out, const char *token);

/**
 * The current token (reloading the file first when it changed).
 * @param out receives a copy (release with dsys_free()).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_identity_token(dsys_identity *id, char **out);

/** Free a credential. NULL-safe. */
DSYS_API void dsys_identity_free(dsys_identity *id);

/* ---- verifying peers ---- */

typedef struct dsys_identity_verifier dsys_identity_verifier;

/**
 * Create a verifier from the deployment's public key (PEM).
 * @param clock wall time for exp/nbf; NULL: real.
 * @return 0, DSYS_EINVAL (NULL argument, not a public key), DSYS_EIO
 *         (unreadable), DSYS_ENOMEM.
 */
DSYS_API int dsys_identity_verifier_new(dsys_identity_verifier **out,
                                        const char *pub_file, dsys_clock *clock);

/**
 * Verify a token (see the header comment for the checks).
 * @param out may be NULL; receives the claims.
 * @return 0, DSYS_EAUTH (not a valid identity token), DSYS_EINVAL (NULL
 *         verifier), DSYS_ENOMEM.
 */
DSYS_API int dsys_identity_verify(dsys_identity_verifier *v, const char *token,
                                  dsys_identity_claims *out);

/** Free a verifier. NULL-safe. */
DSYS_API void dsys_identity_verifier_free(dsys_identity_verifier *v);

/**
 * Require a valid identity on every request of srv except GET and HEAD
 * of /health, /ready, /metrics and /api/<type>/health (liveness probes
 * and scrapers stay open). A
 * request without a valid X-Dsys-Identity header is answered 401
 * {"error": ..., "code": "identity_required"}; a verified one is logged
 * with the field "peer". Call before dsys_server_listen; the verifier
 * must outlive the server.
 * @return 0, DSYS_EINVAL, DSYS_ESTATE (already listening), DSYS_ENOMEM.
 */
DSYS_API int dsys_server_require_identity(dsys_server *srv,
                                          dsys_identity_verifier *v);

#ifdef __cplusplus
}
#endif
#endif
