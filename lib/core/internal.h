/*
 * Internal helpers shared across the library (dsysi_ prefix, hidden).
 * Not installed.
 */
#ifndef DSYSI_INTERNAL_H
#define DSYSI_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <distsys/common.h>
#include <distsys/log.h>

#define DSYSI_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define DSYSI_UNUSED(x) ((void)(x))

/** printf-style logging; the public dsys_log_write takes no varargs. */
void dsysi_log(int level, const char *component, const char *fmt, ...)
    DSYSI_PRINTF(3, 4);
/** Nonzero when a record at this level would be written. */
int dsysi_log_enabled(int level);
/** Nonzero when records are written as JSON lines. */
int dsysi_log_is_json(void);
struct json_object;
/** One record with structured fields (borrowed; a JSON object): in JSON
 *  format the fields become members of the record (after time, level,
 *  component, msg); in text format they follow msg as " key=value". */
void dsysi_log_fields(int level, const char *component, const char *msg,
                      struct json_object *fields);

/** Growable byte buffer, always NUL-terminated when data != NULL. */
typedef struct dsysi_buf {
  char *data;
  size_t len;
  size_t cap;
  int oom; /* sticky: set when an append failed */
} dsysi_buf;

/** Room for n more bytes (and the NUL) without a further allocation; an
 *  empty buffer gets exactly that much. */
int dsysi_buf_reserve(dsysi_buf *b, size_t n);
int dsysi_buf_append(dsysi_buf *b, const void *data, size_t len);
int dsysi_buf_puts(dsysi_buf *b, const char *s);
int dsysi_buf_printf(dsysi_buf *b, const char *fmt, ...) DSYSI_PRINTF(2, 3);
int dsysi_buf_vprintf(dsysi_buf *b, const char *fmt, va_list ap);
/** Take ownership of the data (never NULL on success: "" for empty). */
char *dsysi_buf_steal(dsysi_buf *b, size_t *len);
void dsysi_buf_free(dsysi_buf *b);

/** Make room in a growable array for at least `need` elements of `elsize`
 *  bytes. `arrp` is the address of the array pointer (any `T **`), `cap` its
 *  capacity in elements. Capacity doubles from `first` (at least 1), so
 *  appending one at a time stays amortised O(1). On failure (DSYS_ENOMEM,
 *  also for a size that would overflow; DSYS_EINVAL for elsize 0) the array
 *  and `cap` are unchanged. */
int dsysi_grow(void *arrp, size_t *cap, size_t need, size_t elsize, size_t first);

/** strdup that accepts NULL (returns NULL). */
char *dsysi_strdup(const char *s);
/** Copy of (s, n) with a trailing NUL. */
char *dsysi_strndup(const char *s, size_t n);
/** ASCII case-insensitive equality. */
/** ASCII lower case of each byte value (table). */
extern const unsigned char dsysi_lc[256];
int dsysi_streq_nocase(const char *a, const char *b);
/** Value of a hex digit, or -1. */
int dsysi_hexval(char c);
/** Percent-decode (s, n) into d (room for n + 1); returns the length. */
size_t dsysi_url_decode_into(char *d, const char *s, size_t n, int plus_space);
/** Percent-decode (s, n) into a new string; '+' is kept unless plus_space. */
char *dsysi_url_decode(const char *s, size_t n, int plus_space);
/**
 * Fast non-cryptographic random hex (thread-local xoshiro256**, seeded from
 * arc4random once per thread): for request and trace ids, never secrets.
 * Writes 2 * nbytes hex digits and a NUL into out.
 */
void dsysi_fast_hex(char *out, size_t nbytes);
/** Write the 64 bits of v as 16 lower-case hex digits (no NUL), nibbles in
 *  a fixed but not big-endian order: for random ids. */
void dsysi_hex64(char *out, uint64_t v);
/** Next 64 fast random bits (see dsysi_fast_hex). */
uint64_t dsysi_fast_rand(void);

/**
 * Read a whole small file (secrets, keys, tokens) into a new NUL-terminated
 * buffer, trailing newlines removed. Logs under component (and warns when
 * the file is readable by group or others).
 * @return 0, DSYS_EIO (cannot open or read), DSYS_EINVAL (empty, or more
 *         than max bytes), DSYS_ENOMEM.
 */
int dsysi_file_read(const char *path, size_t max, const char *component,
                    char **out, size_t *len);
/**
 * Write a file atomically with exactly this mode: a private temporary file
 * is written and synced, then renamed over path (replace) or linked to
 * path, keeping an existing file (!replace; *created says whether it was
 * this call's). @return 0, DSYS_EIO, DSYS_ENOMEM.
 */
int dsysi_file_write(const char *path, const void *data, size_t len, unsigned mode,
                     int replace, int *created);

/** Number of online CPUs (at least 1). */
unsigned dsysi_ncpu(void);

/*
 * A small futex mutex for short critical sections that are nearly never
 * contended (a request's state): zero-initialised means unlocked, no init
 * or destroy, and the uncontended lock and unlock are one atomic
 * instruction each, inline (a pthread mutex pair costs ~65 instructions
 * through the PLT). 0 unlocked, 1 locked, 2 locked with waiters (Drepper,
 * "Futexes Are Tricky", mutex 2). Not recursive; no condition variables.
 */
typedef struct dsysi_lock {
  atomic_int v;
} dsysi_lock;

void dsysi_lock_wait(dsysi_lock *l, int c);
void dsysi_lock_wake(dsysi_lock *l);

static inline void dsysi_lock_acquire(dsysi_lock *l) {
  int c = 0;
  if (!atomic_compare_exchange_strong_explicit(&l->v, &c, 1, memory_order_acquire,
                                               memory_order_relaxed))
    dsysi_lock_wait(l, c);
}

static inline void dsysi_lock_release(dsysi_lock *l) {
  if (atomic_exchange_explicit(&l->v, 0, memory_order_release) == 2) dsysi_lock_wake(l);
}

/** A small number for the calling thread, handed out round robin on its
 *  first call (per translation unit): the index of its shard of counters
 *  that several threads would otherwise all write (cache-line bouncing
 *  between cores on every request). Take it modulo the shard count. */
static inline unsigned dsysi_thread_slot(void) {
  static _Atomic unsigned next;
  static _Thread_local unsigned mine; /* slot + 1; 0: none yet */
  if (!mine) mine = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED) + 1;
  return mine - 1;
}

#endif
