/* Fuzz target: dsys_token_verify with a fixed secret, and
 * dsys_identity_verify with a key pair made at start. The first byte picks
 * the kind (HS256/HS384/HS512 user tokens, or an ES256 identity token) and
 * the mode: the rest of the input is either a token as it is, or a list of
 * (position, byte) edits applied to a valid token issued at start. User
 * tokens: only the unmodified valid token may verify; everything else is
 * DSYS_EAUTH. Identity tokens: anything that verifies carries exactly the
 * issued claims (base64url has spare bits in a signature's last character,
 * so a different text may decode to the same signature: harmless; other
 * claims would be a forgery). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/auth.h>

static const char secret_[] = "fuzz-secret-0123456789abcdef-0123456789abcdef";
static const char *algs_[3] = {"HS256", "HS384", "HS512"};
static char *valid_[4]; /* [3]: the identity token */
static dsys_identity_verifier *ver_;
static char dir_[] = "/tmp/fuzz-identity-XXXXXX", key_[64], pub_[64];

static void init_identity(void) {
  if (!mkdtemp(dir_)) abort();
  snprintf(key_, sizeof key_, "%s/k", dir_);
  snprintf(pub_, sizeof pub_, "%s/p", dir_);
  dsys_identity_issue_options o = {.size = sizeof o, .lifetime_s = 86400 * 365};
  if (dsys_identity_keygen(key_, pub_, NULL) ||
      dsys_identity_issue(key_, "data-1", "data", &o, &valid_[3]) ||
      dsys_identity_verifier_new(&ver_, pub_, NULL) || dsys_identity_verify(ver_, valid_[3], NULL))
    abort();
}

static void init(void) {
  init_identity();
  for (int i = 0; i < 3; i++) {
    dsys_token_options o = {.size = sizeof o, .alg = algs_[i], .lifetime_s = 86400 * 365};
    if (dsys_token_issue(secret_, sizeof secret_ - 1,
                         "{\"id\":\"u1\",\"email\":\"a@example.com\"}", &o, &valid_[i]))
      abort();
    char *claims = NULL;
    if (dsys_token_verify(secret_, sizeof secret_ - 1, valid_[i], &o, &claims) || !claims)
      abort();
    dsys_free(claims);
  }
}

static void finish(void) {
  for (int i = 0; i < 4; i++) dsys_free(valid_[i]);
  dsys_identity_verifier_free(ver_);
  unlink(key_);
  unlink(pub_);
  rmdir(dir_);
}

static void check_identity(const char *tok) {
  dsys_identity_claims c;
  int rc = dsys_identity_verify(ver_, tok, &c);
  if (rc == 0) {
    if (strcmp(c.instance, "data-1") || strcmp(c.service, "data")) __builtin_trap(); /* forged */
  } else {
    if (!strcmp(tok, valid_[3])) __builtin_trap(); /* the valid token failed */
    if (rc != DSYS_EAUTH) __builtin_trap();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!valid_[0]) {
    init();
    atexit(finish);
  }
  if (size < 1 || size > 8192) return 0;
  int alg = data[0] % 4;
  int mutate = (data[0] / 4) % 2;
  const char *valid = valid_[alg];
  size_t vlen = strlen(valid);
  char *tok;
  if (mutate) {
    tok = malloc(vlen + 1);
    memcpy(tok, valid, vlen + 1);
    for (size_t i = 1; i + 1 < size; i += 2) {
      size_t pos = data[i] % vlen;
      tok[pos] = data[i + 1] ? (char)data[i + 1] : '.';
    }
  } else {
    tok = malloc(size);
    memcpy(tok, data + 1, size - 1);
    tok[size - 1] = '\0';
  }
  if (alg == 3) {
    check_identity(tok);
    free(tok);
    return 0;
  }
  dsys_token_options o = {.size = sizeof o, .alg = algs_[alg]};
  char *claims = NULL;
  int rc = dsys_token_verify(secret_, sizeof secret_ - 1, tok, &o, &claims);
  int same = !strcmp(tok, valid);
  if (rc == 0) {
    if (!same || !claims) __builtin_trap(); /* a modified token verified */
    dsys_free(claims);
  } else {
    if (same) __builtin_trap();          /* the valid token failed */
    if (rc != DSYS_EAUTH) __builtin_trap();
    if (claims) __builtin_trap();
  }
  free(tok);
  return 0;
}
