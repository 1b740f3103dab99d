/*
 * Cost of service identity: issuing a token, verifying one for the first
 * time (an ES256 signature check) and again (the digest cache), and the
 * server guard's per-request overhead is the cached figure.
 *
 * Usage: bench-identity [iterations]   (default 2000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2000;
  if (n < 1) n = 1;
  char dir[] = "/tmp/bench-identity-XXXXXX", key[64], pub[64];
  if (!mkdtemp(dir)) return 1;
  snprintf(key, sizeof key, "%s/k", dir);
  snprintf(pub, sizeof pub, "%s/p", dir);
  if (dsys_identity_keygen(key, pub, NULL)) return 1;
  char **toks = calloc((size_t)n, sizeof *toks);
  double t0 = now_s();
  for (int i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, "data-%d", i);
    if (dsys_identity_issue(key, name, "data", NULL, &toks[i])) return 1;
  }
  double t1 = now_s();
  dsys_identity_verifier *v = NULL;
  if (dsys_identity_verifier_new(&v, pub, NULL)) return 1;
  for (int i = 0; i < n; i++) /* distinct tokens: the cache (64) never hits */
    if (dsys_identity_verify(v, toks[i], NULL)) return 1;
  double t2 = now_s();
  long reps = 200000;
  for (long i = 0; i < reps; i++)
    if (dsys_identity_verify(v, toks[n - 1 - (i % (n < 16 ? n : 16))], NULL)) return 1;
  double t3 = now_s();
  printf("identity issue (reads the key file, signs): %.1f us/op\n", (t1 - t0) / n * 1e6);
  printf("identity verify, first time (ES256 signature): %.1f us/op\n", (t2 - t1) / n * 1e6);
  printf("identity verify, cached (SHA-256 digest lookup): %.2f us/op\n", (t3 - t2) / reps * 1e6);
  for (int i = 0; i < n; i++) dsys_free(toks[i]);
  free(toks);
  dsys_identity_verifier_free(v);
  unlink(key);
  unlink(pub);
  rmdir(dir);
  return 0;
}
