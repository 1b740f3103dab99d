/* TAP producer for the C tests (see tap.h). */
#include <stdarg.h>
#include "tap.h"

int tap_n = 0, tap_failed = 0;

static void vreport(int pass, const char *fmt, va_list ap) {
  tap_n++;
  if (!pass) tap_failed++;
  printf("%sok %d - ", pass ? "" : "not ", tap_n);
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
}

int tap_ok(int pass, const char *file, int line, const char *expr,
           const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(pass, fmt, ap);
  va_end(ap);
  if (!pass) printf("#   failed at %s:%d: %s\n", file, line, expr);
  return pass;
}

int tap_is_int(int64_t got, int64_t want, const char *file, int line,
               const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(got == want, fmt, ap);
  va_end(ap);
  if (got != want)
    printf("#   failed at %s:%d: got %" PRId64 ", want %" PRId64 "\n", file,
           line, got, want);
  return got == want;
}

int tap_is_str(const char *got, const char *want, const char *file, int line,
               const char *fmt, ...) {
  int pass = (got && want) ? strcmp(got, want) == 0 : got == want;
  va_list ap;
  va_start(ap, fmt);
  vreport(pass, fmt, ap);
  va_end(ap);
  if (!pass)
    printf("#   failed at %s:%d: got '%s', want '%s'\n", file, line,
           got ? got : "(null)", want ? want : "(null)");
  return pass;
}

void tap_diag(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("# ");
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
}

void tap_bail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("Bail out! ");
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
  exit(1);
}

int tap_done(void) {
  printf("1..%d\n", tap_n);
  fflush(stdout);
  return tap_failed ? 1 : 0;
}
