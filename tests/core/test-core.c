/* Unit tests of the core: errors, utilities, clock and timers, config, JSON. */
#include <getopt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "core/config.h"
#include "core/db.h"
#include "core/internal.h"
#include "core/json.h"
#include "tap.h"

static void test_errors(void) {
  is_str(dsys_strerror(0), "success", "strerror(0)");
  is_str(dsys_strerror(DSYS_ETIMEDOUT), "timed out", "strerror(ETIMEDOUT)");
  is_str(dsys_err_name(DSYS_ECONNREFUSED), "DSYS_ECONNREFUSED", "err_name");
  is_str(dsys_err_name(-9999), "DSYS_EUNKNOWN", "unknown code has a name");
  is_str(dsys_strerror(12345), "unknown error", "unknown code has a message");
  int n = dsys_err_count();
  ok(n > 30, "error table has %d entries", n);
  int contiguous = 1;
  for (int i = 0; i < n; i++)
    if (!strcmp(dsys_err_name(-i), "DSYS_EUNKNOWN")) contiguous = 0;
  ok(contiguous, "codes 0..-(count-1) are all named");
  is_str(dsys_version(), DSYS_VERSION_STRING, "dsys_version matches header");
  is_int(dsys_version_number(), DSYS_VERSION_NUMBER, "version number");
}

static void test_base64url(void) {
  static const struct { const char *in, *out; } v[] = {
      {"", ""}, {"f", "Zg"}, {"fo", "Zm8"}, {"foo", "Zm9v"},
      {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
      {"\xfb\xff", "-_8"}};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    char *e = NULL;
    is_int(dsys_base64url_encode(v[i].in, strlen(v[i].in), &e), 0, "encode '%s'", v[i].out);
    is_str(e, v[i].out, "encode vector %zu", i);
    void *d = NULL;
    size_t dl = 0;
    is_int(dsys_base64url_decode(v[i].out, strlen(v[i].out), &d, &dl), 0, "decode %zu", i);
    ok(dl == strlen(v[i].in) && !memcmp(d, v[i].in, dl), "round trip %zu", i);
    dsys_free(e);
    dsys_free(d);
  }
  void *d = NULL;
  size_t dl;
  is_int(dsys_base64url_decode("Zm9v", 4, &d, &dl), 0, "decode no padding");
  dsys_free(d);
  is_int(dsys_base64url_decode("Zg==", 4, &d, &dl), 0, "decode with padding");
  dsys_free(d);
  is_int(dsys_base64url_decode("Zm9v+", 5, &d, &dl), DSYS_EINVAL, "'+' rejected (not url alphabet)");
  is_int(dsys_base64url_decode("Z", 1, &d, &dl), DSYS_EINVAL, "length 1 mod 4 rejected");
  is_int(dsys_base64url_decode("Zh", 2, &d, &dl), DSYS_EINVAL, "non-canonical trailing bits rejected");
  is_int(dsys_base64url_decode("Zm 9v", 5, &d, &dl), DSYS_EINVAL, "whitespace rejected");
  is_int(dsys_base64url_encode(NULL, 3, NULL), DSYS_EINVAL, "encode NULL args");
  /* Malformed input, with explicit lengths: some hold a NUL. */
  static const struct { const char *text; size_t len; const char *why; } bad[] = {
      {"Zm9v/", 5, "'/' (not url alphabet)"}, {"Zg=", 3, "incomplete padding"},
      {"Zg===", 5, "three padding characters"}, {"Zm9v=", 5, "padding after a whole group"},
      {"=", 1, "padding alone"}, {"==", 2, "two padding alone"},
      {"Zg==Zg==", 8, "padding inside"}, {"A===", 4, "one character and three pads"},
      {"Zm9vZ", 5, "a lone character after a group"}, {"Zm9=", 4, "non-canonical bits before '='"},
      {"Zm9v\n", 5, "trailing newline"}, {"\tZm9v", 5, "leading tab"},
      {"Zg= =", 5, "space inside the padding"}, {"Zm\0v", 4, "embedded NUL"},
      {"Zm9\xff", 4, "byte above 0x7f"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    d = NULL;
    is_int(dsys_base64url_decode(bad[i].text, bad[i].len, &d, &dl), DSYS_EINVAL,
           "%s rejected", bad[i].why);
    ok(d == NULL, "nothing returned for %s", bad[i].why);
  }
  is_int(dsys_base64url_decode("Zm8=", 4, &d, &dl), 0, "one padding character");
  ok(dl == 2 && !memcmp(d, "fo", 3), "decodes to \"fo\" plus a NUL");
  dsys_free(d);
  is_int(dsys_base64url_decode("", 0, &d, &dl), 0, "empty input");
  ok(dl == 0 && d && !*(char *)d, "empty output, NUL-terminated");
  dsys_free(d);
  is_int(dsys_base64url_decode(NULL, 0, &d, &dl), 0, "NULL text of length 0");
  dsys_free(d);
}

static void test_random_and_ct(void) {
  char a[33], b[33];
  is_int(dsys_random_hex(a, sizeof a, 16), 0, "random_hex");
  dsys_random_hex(b, sizeof b, 16);
  is_int((int)strlen(a), 32, "32 hex chars");
  ok(strspn(a, "0123456789abcdef") == 32, "only hex digits");
  ok(strcmp(a, b) != 0, "two ids differ");
  is_int(dsys_random_hex(a, 10, 16), DSYS_EINVAL, "small buffer rejected");
  int inrange = 1;
  for (int i = 0; i < 1000; i++)
    if (dsys_random_uniform(7) >= 7) inrange = 0;
  ok(inrange, "random_uniform stays below its bound");
  ok(dsys_ct_equal("secret", 6, "secret", 6), "ct_equal equal");
  ok(!dsys_ct_equal("secret", 6, "secreT", 6), "ct_equal differs");
  ok(!dsys_ct_equal("secret", 6, "secrets", 7), "ct_equal length differs");
  ok(dsys_ct_equal("", 0, NULL, 0), "ct_equal empty");
  ok(!dsys_ct_equal("Secret", 6, "secret", 6), "ct_equal first byte differs");
  ok(!dsys_ct_equal(NULL, 3, "abc", 3), "ct_equal NULL is unequal");
}

static int fired[8];
static int order[8], norder;
static void on_timer(void *ud) {
  int i = (int)(intptr_t)ud;
  fired[i]++;
  order[norder++] = i;
}

static void test_fake_clock(void) {
  dsys_clock *c;
  is_int(dsys_clock_fake_new(&c, 1700000000000), 0, "fake clock");
  ok(dsys_clock_is_fake(c), "is fake");
  is_int(dsys_clock_wall_ms(c), 1700000000000, "wall starts where asked");
  int64_t t0 = dsys_clock_now_us(c);
  uint64_t id1, id2, id3;
  dsys_timer_add(c, 3000, on_timer, (void *)1, &id1);
  dsys_timer_add(c, 1000, on_timer, (void *)2, &id2);
  dsys_timer_add(c, 2000, on_timer, (void *)3, &id3);
  dsys_timer_add(c, 2000, on_timer, (void *)4, NULL);
  is_int(dsys_timer_cancel(c, id3), 0, "cancel pending timer");
  is_int(dsys_timer_cancel(c, id3), DSYS_ENOTFOUND, "cancel twice -> ENOTFOUND");
  dsys_clock_advance(c, 999);
  is_int(norder, 0, "nothing due before its deadline");
  dsys_clock_advance(c, 1);
  is_int(fired[2], 1, "timer at 1 ms fired exactly at its deadline");
  dsys_clock_advance(c, 5000);
  is_int(norder, 3, "three timers ran in all");
  ok(order[0] == 2 && order[1] == 4 && order[2] == 1, "ran in deadline order");
  is_int(fired[3], 0, "cancelled timer never ran");
  is_int(dsys_clock_now_us(c) - t0, 6000, "monotonic advanced by the total");
  is_int(dsys_clock_wall_ms(c), 1700000000006, "wall advanced too");
  is_int(dsys_clock_advance(c, -1), DSYS_EINVAL, "negative advance rejected");
  is_int(dsys_clock_advance(dsys_clock_real(), 1), DSYS_EINVAL, "real clock cannot be advanced");
  dsys_clock_free(c);
}

static pthread_mutex_t rmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rcv = PTHREAD_COND_INITIALIZER;
static int rdone;
static int64_t rat;
static void on_real(void *ud) {
  pthread_mutex_lock(&rmu);
  rdone = 1;
  rat = dsys_clock_now_us(dsys_clock_real());
  pthread_cond_signal(&rcv);
  pthread_mutex_unlock(&rmu);
}

static void test_real_clock(void) {
  dsys_clock *r = dsys_clock_real();
  int64_t a = dsys_clock_now_us(r);
  dsys_clock_sleep_us(r, 2000);
  ok(dsys_clock_now_us(r) - a >= 2000, "real sleep of 2 ms lasts at least 2 ms");
  ok(dsys_clock_wall_ms(r) > 1600000000000LL, "wall clock is plausible");
  int64_t start = dsys_clock_now_us(r);
  is_int(dsys_timer_add(r, 20000, on_real, NULL, NULL), 0, "real timer added");
  pthread_mutex_lock(&rmu);
  for (int i = 0; i < 200 && !rdone; i++) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&rcv, &rmu, &ts);
  }
  pthread_mutex_unlock(&rmu);
  ok(rdone, "real timer fired");
  ok(rat - start >= 20000, "not before its deadline (%lld us)", (long long)(rat - start));
  char iso[32];
  dsys_time_iso8601(0, iso, sizeof iso);
  is_str(iso, "1970-01-01T00:00:00.000Z", "iso8601 epoch");
  dsys_time_iso8601(1700000000123, iso, sizeof iso);
  is_str(iso, "2023-11-14T22:13:20.123Z", "iso8601 with ms");
}

static const dsys_option opts[] = {
    {"listen", "DSYS_TEST_LISTEN", DSYS_OPT_STRING, "http://127.0.0.1:0", "where to listen"},
    {"threads", "DSYS_TEST_THREADS", DSYS_OPT_INT, "4", "threads"},
    {"verbose", NULL, DSYS_OPT_BOOL, NULL, "more output"},
    {"upstream", NULL, DSYS_OPT_LIST, NULL, "upstreams"},
};

static void test_config(void) {
  char err[256];
  dsys_config *c;
  unsetenv("DSYS_TEST_LISTEN");
  char *argv1[] = {"prog", NULL};
  is_int(dsys_config_parse(&c, opts, 4, 1, argv1, err, sizeof err), 0, "parse defaults");
  is_str(dsys_config_get(c, "listen"), "http://127.0.0.1:0", "default used");
  is_str(dsys_config_source(c, "listen"), "default", "source default");
  ok(!dsys_config_get_bool(c, "verbose"), "bool unset is false");
  dsys_config_free(c);

  setenv("DSYS_TEST_LISTEN", "unix:///tmp/x.sock", 1);
  setenv("DSYS_TEST_THREADS", "8", 1);
  char *argv2[] = {"prog", "--threads=2", "--verbose", "--upstream", "a", "--upstream=b", "pos1", "--", "--not-a-flag"};
  is_int(dsys_config_parse(&c, opts, 4, 9, argv2, err, sizeof err), 0, "parse flags (%s)", err);
  is_str(dsys_config_get(c, "listen"), "unix:///tmp/x.sock", "env beats default");
  is_str(dsys_config_source(c, "listen"), "env", "source env");
  int64_t th = 0;
  is_int(dsys_config_get_int(c, "threads", &th), 0, "int option");
  is_int(th, 2, "flag beats env");
  ok(dsys_config_get_bool(c, "verbose"), "bare bool flag is true");
  is_int(dsys_config_count(c, "upstream"), 2, "list keeps every occurrence");
  is_str(dsys_config_get_nth(c, "upstream", 1), "b", "second list value");
  is_int(dsys_config_npositional(c), 2, "positionals, '--' ends options");
  is_str(dsys_config_positional(c, 1), "--not-a-flag", "after --");
  dsys_config_free(c);

  /* Each repeat of a non-list flag clears the value before storing the
   * new one (and the list storage is reused). */
  char *argv6[] = {"prog", "--threads=2", "--threads=3", "--threads=5"};
  is_int(dsys_config_parse(&c, opts, 4, 4, argv6, err, sizeof err), 0, "repeated flag (%s)", err);
  th = 0;
  int got = dsys_config_get_int(c, "threads", &th);
  ok(got == 0 && th == 5 && dsys_config_count(c, "threads") == 1,
     "repeating a non-list flag keeps the last value: %lld", (long long)th);
  dsys_config_free(c);

  char *argv3[] = {"prog", "--nope"};
  is_int(dsys_config_parse(&c, opts, 4, 2, argv3, err, sizeof err), DSYS_EINVAL, "unknown flag");
  ok(strstr(err, "--nope") != NULL, "message names the flag: %s", err);
  char *argv4[] = {"prog", "--threads", "many"};
  is_int(dsys_config_parse(&c, opts, 4, 3, argv4, err, sizeof err), DSYS_EINVAL, "non-integer");
  ok(strstr(err, "integer") != NULL, "message says integer: %s", err);
  char *argv5[] = {"prog", "--listen"};
  is_int(dsys_config_parse(&c, opts, 4, 2, argv5, err, sizeof err), DSYS_EINVAL, "missing value");
  setenv("DSYS_TEST_THREADS", "x1", 1);
  is_int(dsys_config_parse(&c, opts, 4, 1, argv1, err, sizeof err), DSYS_EINVAL, "bad env value");
  ok(strstr(err, "DSYS_TEST_THREADS") != NULL, "message names the variable: %s", err);
  unsetenv("DSYS_TEST_THREADS");
  unsetenv("DSYS_TEST_LISTEN");
  char *usage = NULL;
  is_int(dsys_config_usage(opts, 4, "prog", "Does things.", &usage), 0, "usage");
  ok(usage && strstr(usage, "--listen") && strstr(usage, "DSYS_TEST_LISTEN") &&
         strstr(usage, "http://127.0.0.1:0"), "usage lists flag, env and default");
  dsys_free(usage);
}

/* The typed option kinds: their grammar, and what a user sees through a
 * table (aliases, variables, messages, help). */
static void test_config_kinds(void) {
  static const struct { const char *in; int64_t bare, want; } durs[] = {
      {"500ms", 1, 500}, {"5s", 1, 5000}, {"2m", 1, 120000}, {"1h", 1, 3600000},
      {"1d", 1, 86400000}, {"1.5s", 1, 1500}, {"0.25m", 1, 15000}, {"250", 1, 250},
      {"0.5", 1000, 500}, {"30", 1000, 30000}, {"5S", 1, 5000}, {"10MS", 1, 10}, {"0", 1, 0},
      {"9223372036854775807ms", 1, INT64_MAX}, {"106751991167d", 1, 106751991167LL * 86400000}};
  for (size_t i = 0; i < sizeof durs / sizeof *durs; i++) {
    int64_t v = -1;
    int rc = dsysi_parse_duration_ms(durs[i].in, durs[i].bare, &v);
    ok(rc == 0 && v == durs[i].want, "duration '%s' (bare x%lld) is %lld ms (%lld, rc %d)", durs[i].in,
       (long long)durs[i].bare, (long long)durs[i].want, (long long)v, rc);
  }
  static const char *bad_durs[] = {"", "s", "5x", "5 s", " 5s", "5s ", "-5s", "+5s", "-1",
                                   "1.s", ".5s", "0.5ms", "1e3", "5sec", "1m30s", "0x10"};
  for (size_t i = 0; i < sizeof bad_durs / sizeof *bad_durs; i++) {
    int64_t v = 42;
    int rc = dsysi_parse_duration_ms(bad_durs[i], 1, &v);
    ok(rc == DSYS_ETYPE && v == 42, "duration '%s' refused as garbage (rc %d)", bad_durs[i], rc);
  }
  static const char *big_durs[] = {"9223372036854775808ms", "9223372036854775807s",
                                   "106751991168d", "99999999999999999999999"};
  for (size_t i = 0; i < sizeof big_durs / sizeof *big_durs; i++) {
    int64_t v = 42;
    int rc = dsysi_parse_duration_ms(big_durs[i], 1, &v);
    ok(rc == DSYS_ERANGE && v == 42, "duration '%s' out of range (rc %d)", big_durs[i], rc);
  }
  static const struct { const char *in; int64_t want; } sizes[] = {
      {"65536", 65536}, {"64KiB", 65536}, {"1MiB", 1048576}, {"1.5KiB", 1536},
      {"2mib", 2097152}, {"1GiB", 1073741824}, {"1TiB", 1099511627776LL}, {"7B", 7},
      {"0", 0}, {"8388607TiB", 8388607LL << 40}};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    int64_t v = -1;
    int rc = dsysi_parse_size(sizes[i].in, &v);
    ok(rc == 0 && v == sizes[i].want, "size '%s' is %lld bytes (%lld, rc %d)", sizes[i].in,
       (long long)sizes[i].want, (long long)v, rc);
  }
  static const char *bad_sizes[] = {"", "KiB", "1KB", "1k", "1.5B", "0.1KiB", "-1", "-1KiB",
                                    "1 MiB", "1MiB!", "1EiB"};
  for (size_t i = 0; i < sizeof bad_sizes / sizeof *bad_sizes; i++) {
    int64_t v = 42;
    ok(dsysi_parse_size(bad_sizes[i], &v) == DSYS_ETYPE && v == 42, "size '%s' refused as garbage",
       bad_sizes[i]);
  }
  int64_t v = 42;
  ok(dsysi_parse_size("8388608TiB", &v) == DSYS_ERANGE && v == 42, "2^63 bytes is out of range");

  static const dsys_option t[] = {
      {"ttl", "DSYS_T_TTL", DSYS_OPT_DURATION, "30s", "time to live"},
      {"ttl-ms", "DSYS_T_TTL_MS", DSYS_OPT_ALIAS, "ttl", NULL},
      {"life", "DSYS_T_LIFE", DSYS_OPT_DURATION_S, "24h", "lifetime"},
      {"max", "DSYS_T_MAX", DSYS_OPT_SIZE, "1MiB", "limit"},
      {"verbose", "DSYS_T_VERBOSE", DSYS_OPT_BOOL, NULL, "more"},
      {"help", NULL, DSYS_OPT_BOOL, NULL, "help"},
  };
  const size_t nt = sizeof t / sizeof *t;
  char err[256];
  dsys_config *c = NULL;
  unsetenv("DSYS_T_TTL");
  unsetenv("DSYS_T_TTL_MS");
  char *a0[] = {"prog"};
  is_int(dsys_config_parse(&c, t, nt, 1, a0, err, sizeof err), 0, "typed table parses (%s)", err);
  int64_t ms = 0, i64 = 0;
  uint64_t bytes = 0;
  ok(!dsys_config_get_duration_ms(c, "ttl", &ms) && ms == 30000, "default 30s is 30000 ms");
  ok(!dsys_config_get_duration_ms(c, "life", &ms) && ms == 86400000, "default 24h is 86400000 ms");
  ok(!dsys_config_get_size(c, "max", &bytes) && bytes == 1048576, "default 1MiB is 1048576 bytes");
  ok(!dsys_config_get_int(c, "max", &i64) && i64 == 1048576, "get_int of a size: bytes");
  ok(!dsys_config_get_int(c, "ttl", &i64) && i64 == 30000, "get_int of a duration: ms");
  dsys_config_free(c);

  char *a1[] = {"prog", "--ttl-ms", "250", "--life=30", "--max", "64KiB"};
  is_int(dsys_config_parse(&c, t, nt, 6, a1, err, sizeof err), 0, "old spelling (%s)", err);
  ok(!dsys_config_get_duration_ms(c, "ttl", &ms) && ms == 250, "--ttl-ms 250: a bare number keeps meaning ms");
  is_str(dsys_config_source(c, "ttl"), "flag", "the alias sets the option (source flag)");
  ok(!dsys_config_get_duration_ms(c, "ttl-ms", &ms) && ms == 250, "reading by the old name works too");
  ok(!dsys_config_get_duration_ms(c, "life", &ms) && ms == 30000, "DURATION_S: bare 30 is 30 s");
  ok(!dsys_config_get_size(c, "max", &bytes) && bytes == 65536, "--max 64KiB");
  is_str(dsys_config_get(c, "max"), "64KiB", "the text is kept as given");
  dsys_config_free(c);

  char *a2[] = {"prog", "--ttl", "2s", "--ttl-ms=100", "--ttl", "1.5m"};
  is_int(dsys_config_parse(&c, t, nt, 6, a2, err, sizeof err), 0, "both spellings (%s)", err);
  ok(!dsys_config_get_duration_ms(c, "ttl", &ms) && ms == 90000, "the last spelling given wins: %lld",
     (long long)ms);
  dsys_config_free(c);

  setenv("DSYS_T_TTL_MS", "700", 1);
  is_int(dsys_config_parse(&c, t, nt, 1, a0, err, sizeof err), 0, "old variable (%s)", err);
  ok(!dsys_config_get_duration_ms(c, "ttl", &ms) && ms == 700, "DSYS_T_TTL_MS=700 is read");
  is_str(dsys_config_source(c, "ttl"), "env", "source env");
  dsys_config_free(c);
  setenv("DSYS_T_TTL", "3s", 1);
  is_int(dsys_config_parse(&c, t, nt, 1, a0, err, sizeof err), 0, "both variables (%s)", err);
  ok(!dsys_config_get_duration_ms(c, "ttl", &ms) && ms == 3000, "the option's own variable beats the old one");
  dsys_config_free(c);
  setenv("DSYS_T_TTL_MS", "soon", 1);
  unsetenv("DSYS_T_TTL");
  is_int(dsys_config_parse(&c, t, nt, 1, a0, err, sizeof err), DSYS_EINVAL, "bad old variable");
  ok(strstr(err, "DSYS_T_TTL_MS") && strstr(err, "milliseconds"), "message names it and the unit: %s", err);
  unsetenv("DSYS_T_TTL_MS");

  static const struct { const char *flag, *val, *says; } refused[] = {
      {"--ttl", "5x", "expects a duration"}, {"--ttl", "-1s", "expects a duration"},
      {"--ttl", "", "expects a duration"}, {"--max", "1KB", "expects a size"},
      {"--max", "-1", "expects a size"}, {"--max", "99999999TiB", "out of range"},
      {"--ttl", "999999999999d", "out of range"}, {"--life", "1.0001s", "expects a duration"},
      {"--verbose=maybe", NULL, "true or false"}};
  for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
    char *ar[] = {"prog", (char *)refused[i].flag, (char *)refused[i].val};
    int n = refused[i].val ? 3 : 2;
    int rc = dsys_config_parse(&c, t, nt, n, ar, err, sizeof err);
    char name[32];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(refused[i].flag, "="), refused[i].flag);
    ok(rc == DSYS_EINVAL && strstr(err, refused[i].says) && strstr(err, name),
       "%s %s refused: %s", refused[i].flag, refused[i].val ? refused[i].val : "", err);
  }

  /* getopt_long's habits that would surprise: abbreviations, short
   * options, its global state */
  static const struct { const char *arg, *says; } unknown[] = {
      {"--verb", "unknown option '--verb'"}, {"--tt=1s", "unknown option '--tt'"},
      {"-x", "unknown option '-x'"}, {"-ttl", "long options start with --"},
      {"--ttl", "needs a value"}};
  for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
    char *ar[] = {"prog", (char *)unknown[i].arg};
    int rc = dsys_config_parse(&c, t, nt, 2, ar, err, sizeof err);
    ok(rc == DSYS_EINVAL && strstr(err, unknown[i].says), "%s refused: %s", unknown[i].arg, err);
  }
  optind = 5;
  char *a3[] = {"prog", "-h", "-", "pos", "--verbose", "--", "--ttl"};
  is_int(dsys_config_parse(&c, t, nt, 7, a3, err, sizeof err), 0, "short -h, '-' and '--' (%s)", err);
  ok(dsys_config_get_bool(c, "help") && dsys_config_get_bool(c, "verbose"), "-h is --help");
  ok(dsys_config_npositional(c) == 3 && !strcmp(dsys_config_positional(c, 0), "-") &&
         !strcmp(dsys_config_positional(c, 2), "--ttl"),
     "'-' and everything after '--' are positional, in order");
  is_int(optind, 5, "the caller's optind is put back");
  dsys_config_free(c);
  char *a4[] = {"prog", "-V"};
  is_int(dsys_config_parse(&c, t, nt, 2, a4, err, sizeof err), DSYS_EINVAL,
         "-V is unknown when the table has no version option");

  static const dsys_option badt1[] = {{"t", NULL, DSYS_OPT_DURATION, "5x", "bad default"}};
  is_int(dsys_config_parse(&c, badt1, 1, 1, a0, err, sizeof err), DSYS_EINVAL, "a default that does not parse");
  ok(strstr(err, "option table") != NULL, "said as a table mistake: %s", err);
  static const dsys_option badt2[] = {{"old", NULL, DSYS_OPT_ALIAS, "nothing", NULL}};
  is_int(dsys_config_parse(&c, badt2, 1, 1, a0, err, sizeof err), DSYS_EINVAL, "an alias of no option");

  char *u = NULL;
  is_int(dsys_config_usage(t, nt, "prog", NULL, &u), 0, "usage of the typed table");
  ok(u && strstr(u, "--ttl DURATION") && strstr(u, "[also --ttl-ms]") &&
         strstr(u, "[env DSYS_T_TTL or DSYS_T_TTL_MS]") && strstr(u, "a bare number is milliseconds") &&
         strstr(u, "a bare number is seconds") && strstr(u, "--max SIZE") &&
         strstr(u, "[default 1MiB]") && strstr(u, "-h, --help") && !strstr(u, "  --ttl-ms"),
     "help: kinds, the alias and both variables on the option's entry, real defaults");
  dsys_free(u);
}

static void test_json(void) {
  json_object *o = NULL;
  is_int(dsysi_json_parse("{\"a\":1}", 7, &o), 0, "parse object");
  int64_t v = 0;
  is_int(dsysi_json_int64(o, "a", &v), 0, "int member");
  is_int(v, 1, "value");
  is_int(dsysi_json_int64(o, "b", &v), DSYS_ENOTFOUND, "missing member");
  json_object_put(o);
  is_int(dsysi_json_parse("{\"a\":1} x", 9, &o), DSYS_EBADJSON, "trailing garbage rejected");
  is_int(dsysi_json_parse("{\"a\":1}  \n", 10, &o), 0, "trailing whitespace ok");
  json_object_put(o);
  is_int(dsysi_json_parse("42", 2, &o), 0, "bare number");
  json_object_put(o);
  is_int(dsysi_json_parse("{\"a\":", 5, &o), DSYS_EBADJSON, "truncated");
  is_int(dsysi_json_parse("", 0, &o), DSYS_EBADJSON, "empty");
  is_int(dsysi_json_parse("{'a':1}", 7, &o), DSYS_EBADJSON, "single quotes rejected");
  char deep[300];
  memset(deep, '[', 200);
  is_int(dsysi_json_parse(deep, 200, &o), DSYS_EBADJSON, "200-deep nesting rejected");
  is_int(dsysi_json_parse("{\"a\":\"\\u00e9\"}", 14, &o), 0, "unicode escape");
  is_str(dsysi_json_str(o, "a"), "\xc3\xa9", "decoded to UTF-8");
  json_object_put(o);
  is_int(dsysi_json_parse_object("[1]", 3, &o), DSYS_ETYPE, "array is not an object");
  /* The thread's tokener is reused: what a failed parse left (an open
   * string, a deep stack, a bare number waiting for its end) must not
   * reach the next text. */
  static const char *const bad_then[] = {"{\"a\":\"unterminated", "[[[[[[[[", "{\"a\":1,",
                                         "tru", "-"};
  for (size_t i = 0; i < sizeof bad_then / sizeof bad_then[0]; i++) {
    is_int(dsysi_json_parse(bad_then[i], strlen(bad_then[i]), &o), DSYS_EBADJSON, "bad text");
    is_int(dsysi_json_parse("{\"b\":[2,\"x\"]}", 13, &o), 0, "next text parses");
    json_object *b = NULL;
    ok(json_object_object_get_ex(o, "b", &b) && json_object_array_length(b) == 2 &&
           !json_object_object_get_ex(o, "a", NULL),
       "next text alone");
    json_object_put(o);
  }
  is_int(dsysi_json_parse("12", 2, &o), 0, "number after a failed number");
  ok(json_object_get_int(o) == 12, "its value");
  json_object_put(o);
  /* Over the kept size (its own tokener), then small again. */
  size_t big = 200 * 1024;
  char *t = malloc(big + 8);
  if (t) {
    t[0] = '"';
    memset(t + 1, 'x', big);
    t[big + 1] = '"';
    is_int(dsysi_json_parse(t, big + 2, &o), 0, "200 KiB string");
    ok(json_object_get_string_len(o) == (int)big, "its length");
    json_object_put(o);
    t[big + 1] = 'x';
    is_int(dsysi_json_parse(t, big + 2, &o), DSYS_EBADJSON, "200 KiB unterminated");
    free(t);
  }
  is_int(dsysi_json_parse("[1]", 3, &o), 0, "small after big");
  json_object_put(o);
}

static void test_log(void) {
  dsys_log_level lv;
  is_int(dsys_log_level_parse("WARN", &lv), 0, "level parse");
  is_int(lv, DSYS_LOG_WARN, "warn");
  is_int(dsys_log_level_parse("loud", &lv), DSYS_EINVAL, "unknown level");
  dsys_log_format f;
  is_int(dsys_log_format_parse("json", &f), 0, "format json");
  is_int(f, DSYS_LOG_JSON, "json value");
  is_int(dsys_log_format_parse("xml", &f), DSYS_EINVAL, "unknown format");
  /* A JSON record on stderr must be one parseable line. */
  int fds[2];
  if (pipe(fds) == 0) {
    int saved = dup(2);
    dup2(fds[1], 2);
    dsys_log_set_format(DSYS_LOG_JSON);
    dsys_log_write(DSYS_LOG_ERROR, "test", "hello \"world\"");
    dsys_log_set_format(DSYS_LOG_TEXT);
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    char buf[512] = {0};
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    ok(n > 0 && buf[n - 1] == '\n', "one line written");
    json_object *o = NULL;
    is_int(n > 0 ? dsysi_json_parse(buf, (size_t)n, &o) : -1, 0, "record is JSON");
    is_str(dsysi_json_str(o, "msg"), "hello \"world\"", "message preserved");
    is_str(dsysi_json_str(o, "level"), "error", "level field");
    json_object_put(o);
  }
}

/* The growable-array helper behind every append-one-at-a-time list. */
static void test_grow(void) {
  uint32_t *a = NULL;
  size_t cap = 0, n = 0;
  int fails = 0, moves = 0;
  uint32_t *last = NULL;
  for (uint32_t i = 0; i < 1000; i++) {
    if (dsysi_grow(&a, &cap, n + 1, sizeof *a, 4)) fails++;
    else a[n++] = i * 7;
    if (a != last) moves++;
    last = a;
  }
  int intact = n == 1000;
  for (size_t i = 0; intact && i < n; i++) intact = a[i] == i * 7;
  ok(!fails && intact, "1000 appends keep every element (%d failures)", fails);
  ok(cap == 1024 && moves <= 9, "capacity doubles from the first size: %zu, %d moves", cap,
     moves);
  ok(dsysi_grow(&a, &cap, 10, sizeof *a, 4) == 0 && cap == 1024,
     "a need within the capacity changes nothing");
  uint32_t *before = a;
  ok(dsysi_grow(&a, &cap, SIZE_MAX / 2, sizeof *a, 4) == DSYS_ENOMEM && a == before &&
         cap == 1024 && a[999] == 999 * 7,
     "a size that overflows is DSYS_ENOMEM and leaves the array as it was");
  free(a);
  char **s = NULL;
  size_t scap = 0;
  int rc = dsysi_grow(&s, &scap, 3, sizeof *s, 0);
  ok(rc == 0 && scap == 4 && s, "first size 0 starts at 1 and doubles to the need: %zu", scap);
  ok(dsysi_grow(&s, &scap, SIZE_MAX / 4 + 1, sizeof *s, 0) == DSYS_ENOMEM && scap == 4,
     "a count whose byte size overflows is DSYS_ENOMEM");
  free(s);
}

/* The SQLite busy handler: short sleeps first (another process's write
 * transactions last well under a millisecond), the bound unchanged; a
 * writer waits for a lock held by another connection and gets it. */
typedef struct holder {
  sqlite3 *db;
} holder;

static void *release_later(void *p) {
  holder *h = p;
  usleep(30000);
  sqlite3_exec(h->db, "COMMIT", NULL, NULL, NULL);
  return NULL;
}

static void test_db_busy(void) {
  is_int(dsysi_db_busy_sleep_us(0), 50, "busy: the first retry after 50 us");
  is_int(dsysi_db_busy_sleep_us(4), 800, "busy: doubling: 800 us before the fifth");
  is_int(dsysi_db_busy_sleep_us(5), 1000, "busy: then every ms");
  long long total = 0;
  int n = 0;
  for (long us; n < 100000 && (us = dsysi_db_busy_sleep_us(n)) >= 0; n++) total += us;
  ok(total >= DSYSI_DB_BUSY_MS * 1000LL && total < DSYSI_DB_BUSY_MS * 1000LL + 1000,
     "busy: the sleeps add up to the bound: %lld us in %d tries", total, n);
  is_int(dsysi_db_busy_sleep_us(-1), -1, "busy: a negative count gives up");

  char dir[] = "/tmp/dsys-dbbusy.XXXXXX", path[64], err[200] = "";
  ok(mkdtemp(dir) != NULL, "busy: a directory");
  snprintf(path, sizeof path, "%s/x.db", dir);
  holder h = {0};
  sqlite3 *b = NULL;
  ok(dsysi_db_open(path, 0, &h.db, err, sizeof err) == 0 &&
         dsysi_db_open(path, 0, &b, err, sizeof err) == 0,
     "busy: two connections on one file %s", err);
  if (h.db && b) {
    is_int(dsysi_db_exec(h.db, "BEGIN IMMEDIATE", err, sizeof err), 0, "busy: one takes the write lock");
    pthread_t th;
    pthread_create(&th, NULL, release_later, &h);
    is_int(dsysi_db_exec(b, "BEGIN IMMEDIATE", err, sizeof err), 0,
           "busy: the other waits and gets it once released (%s)", err);
    pthread_join(th, NULL);
    dsysi_db_exec(b, "COMMIT", err, sizeof err);
  }
  sqlite3_close(h.db);
  sqlite3_close(b);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ok(system(cmd) == 0, "busy: cleaned up");
}

int main(void) {
  test_errors();
  test_base64url();
  test_random_and_ct();
  test_fake_clock();
  test_real_clock();
  test_config();
  test_config_kinds();
  test_json();
  test_log();
  test_grow();
  test_db_busy();
  return tap_done();
}
