/*
 * Minimal TAP producer for the C tests. Each check prints "ok N - name" or
 * "not ok N - name" with a diagnostic; tap_done() prints the plan and
 * returns the exit status.
 */
#ifndef DSYS_TEST_TAP_H
#define DSYS_TEST_TAP_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int tap_n, tap_failed;

#define ok(cond, ...)                                                   \
  tap_ok(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
#define is_int(got, want, ...)                                          \
  tap_is_int((int64_t)(got), (int64_t)(want), __FILE__, __LINE__, __VA_ARGS__)
#define is_str(got, want, ...)                                          \
  tap_is_str((got), (want), __FILE__, __LINE__, __VA_ARGS__)

int tap_ok(int pass, const char *file, int line, const char *expr,
           const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int tap_is_int(int64_t got, int64_t want, const char *file, int line,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int tap_is_str(const char *got, const char *want, const char *file, int line,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/** Print a diagnostic line ("# ..."). */
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/** Abort the whole test program: "Bail out!". */
void tap_bail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/** Print the plan; return the exit status for main. */
int tap_done(void);

#endif
