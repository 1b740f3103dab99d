/*
 * Runs a fuzz target without libFuzzer, for make check: every file of the
 * seed corpus, then N deterministic random mutations of them (byte flips,
 * insertions, deletions, splices). A crash or sanitizer report fails the
 * test. `make fuzz` (configure --enable-fuzzing, clang) runs the same
 * target under libFuzzer for real.
 *
 *   driver CORPUS_DIR [ITERATIONS]
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rs = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return rs;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR [ITERATIONS]\n", argv[0]);
    return 2;
  }
  long iters = argc > 2 ? atol(argv[2]) : 20000;
  DIR *d = opendir(argv[1]);
  if (!d) {
    printf("Bail out! cannot open corpus %s\n", argv[1]);
    return 1;
  }
  uint8_t *seeds[256];
  size_t lens[256];
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < 256) {
    if (e->d_name[0] == '.') continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
    FILE *f = fopen(path, "rb");
    if (!f) continue;
    uint8_t *buf = malloc(65536);
    size_t len = fread(buf, 1, 65536, f);
    fclose(f);
    seeds[n] = buf;
    lens[n] = len;
    LLVMFuzzerTestOneInput(buf, len);
    n++;
  }
  closedir(d);
  printf("ok 1 - %d seed inputs ran cleanly\n", n);
  uint8_t *m = malloc(131072);
  for (long i = 0; i < iters && n > 0; i++) {
    int s = (int)(rnd() % (uint64_t)n);
    size_t len = lens[s];
    memcpy(m, seeds[s], len);
    int edits = 1 + (int)(rnd() % 8);
    for (int k = 0; k < edits; k++) {
      size_t pos = len ? rnd() % len : 0;
      switch (rnd() % 4) {
      case 0: if (len) m[pos] ^= (uint8_t)(1u << (rnd() % 8)); break;
      case 1: if (len) m[pos] = (uint8_t)rnd(); break;
      case 2: if (len < 131000) { memmove(m + pos + 1, m + pos, len - pos); m[pos] = (uint8_t)rnd(); len++; } break;
      case 3: if (len) { memmove(m + pos, m + pos + 1, len - pos - 1); len--; } break;
      }
    }
    LLVMFuzzerTestOneInput(m, len);
  }
  printf("ok 2 - %ld mutated inputs ran cleanly\n1..2\n", iters);
  free(m);
  for (int i = 0; i < n; i++) free(seeds[i]);
  return n > 0 ? 0 : 1;
}
