/* Facts about this process and machine (proc.c). Thread-safety: any thread. */
#ifndef DSYSI_PROC_H
#define DSYSI_PROC_H

#include <stdint.h>

/** Number of online CPUs (at least 1). */
unsigned dsysi_ncpu(void);
/** Resident set size of this process in bytes (/proc/self/statm), or -1. */
int64_t dsysi_rss_bytes(void);

#endif
