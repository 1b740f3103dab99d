/* Facts about this process and machine. */
#include <stdio.h>
#include <unistd.h>
#include "core/proc.h"

unsigned dsysi_ncpu(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned)n : 1;
}

int64_t dsysi_rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long long size = 0, res = 0;
  int n = fscanf(f, "%lld %lld", &size, &res);
  fclose(f);
  if (n != 2) return -1;
  return (int64_t)res * (int64_t)sysconf(_SC_PAGESIZE);
}
