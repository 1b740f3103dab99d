/* Fuzz target: dsys_token_verify with a fixed secret. The first byte picks
 * the algorithm (HS256/HS384/HS512) and the mode: the rest of the input is
 * either a token as it is, or a list of (position, byte) edits applied to
 * a valid token issued at start. Only the unmodified valid token may
 * verify; everything else is DSYS_EAUTH. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include <distsys/auth.h>

static const char secret_[] = "fuzz-secret-0123456789abcdef-0123456789abcdef";
static const char *algs_[3] = {"HS256", "HS384", "HS512"};
static char *valid_[3];

static void init(void) {
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
  for (int i = 0; i < 3; i++) dsys_free(valid_[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!valid_[0]) {
    init();
    atexit(finish);
  }
  if (size < 1 || size > 8192) return 0;
  int alg = data[0] % 3;
  int mutate = (data[0] / 3) % 2;
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
