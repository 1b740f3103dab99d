/* Configuration from flags (getopt_long), DSYS_* environment variables and
 * defaults, against one option table that is also the --help text. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/config.h>
#include <distsys/log.h>
#include "core/config.h"
#include "core/internal.h"

enum { SRC_UNSET = 0, SRC_DEFAULT, SRC_ENV, SRC_FLAG };

typedef struct opt_val {
  int source;
  char **vals; /* owned copies; lists keep every flag occurrence */
  size_t n, cap;
} opt_val;

struct dsys_config {
  const dsys_option *opts;
  size_t nopts;
  opt_val *v; /* one per row; alias rows stay empty */
  char **pos;
  size_t npos, cappos;
};

/* ---- value grammars ---------------------------------------------------- */

typedef struct unit {
  const char *name;
  int64_t mult;
} unit;

static const unit dur_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
static const unit size_units[] = {{"B", 1},
                                  {"KiB", 1LL << 10},
                                  {"MiB", 1LL << 20},
                                  {"GiB", 1LL << 30},
                                  {"TiB", 1LL << 40}};

/* DIGITS[.DIGITS][UNIT] in whole base units. Integer arithmetic only, so
 * "0.1s" is exactly 100 ms and an overflow is seen, never wrapped. */
static int parse_scaled(const char *s, const unit *units, size_t nunits, int64_t bare,
                        int64_t *out) {
  if (!s) return DSYS_ETYPE;
  const char *p = s;
  int64_t mant = 0, scale = 1;
  int ndig = 0, range = 0;
  for (; *p >= '0' && *p <= '9'; p++, ndig++)
    range |= __builtin_mul_overflow(mant, 10, &mant) | __builtin_add_overflow(mant, *p - '0', &mant);
  if (*p == '.') {
    int nfrac = 0;
    for (p++; *p >= '0' && *p <= '9'; p++, nfrac++)
      range |= __builtin_mul_overflow(mant, 10, &mant) |
               __builtin_add_overflow(mant, *p - '0', &mant) |
               __builtin_mul_overflow(scale, 10, &scale);
    if (!nfrac) return DSYS_ETYPE;
  }
  if (!ndig) return DSYS_ETYPE; /* empty, a sign, a leading '.', garbage */
  int64_t mult = bare;
  if (*p) {
    size_t i = 0;
    while (i < nunits && !dsysi_streq_nocase(p, units[i].name)) i++;
    if (i == nunits) return DSYS_ETYPE;
    mult = units[i].mult;
  }
  int64_t v;
  if (range || __builtin_mul_overflow(mant, mult, &v)) return DSYS_ERANGE;
  if (v % scale) return DSYS_ETYPE; /* finer than the base unit */
  *out = v / scale;
  return 0;
}

int dsysi_parse_duration_ms(const char *s, int64_t bare_ms, int64_t *out) {
  return parse_scaled(s, dur_units, sizeof dur_units / sizeof *dur_units, bare_ms, out);
}

int dsysi_parse_size(const char *s, int64_t *out) {
  return parse_scaled(s, size_units, sizeof size_units / sizeof *size_units, 1, out);
}

static int parse_bool(const char *s, int *out) {
  static const char *t[] = {"1", "true", "yes", "on"};
  static const char *f[] = {"0", "false", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (dsysi_streq_nocase(s, t[i])) return *out = 1, 0;
    if (dsysi_streq_nocase(s, f[i])) return *out = 0, 0;
  }
  return DSYS_ETYPE;
}

static int parse_int(const char *s, int64_t *out) {
  if (!s || !*s) return DSYS_ETYPE;
  errno = 0;
  char *end;
  long long x = strtoll(s, &end, 10);
  if (errno || *end) return DSYS_ETYPE;
  *out = x;
  return 0;
}

/* The value of an option of type t as a number in its base unit
 * (milliseconds, bytes, or the integer itself). */
static int parse_number(int t, const char *s, int64_t *out) {
  switch (t) {
  case DSYS_OPT_DURATION: return dsysi_parse_duration_ms(s, 1, out);
  case DSYS_OPT_DURATION_S: return dsysi_parse_duration_ms(s, 1000, out);
  case DSYS_OPT_SIZE: return dsysi_parse_size(s, out);
  default: return parse_int(s, out);
  }
}

static const char *bare_unit(int t) {
  return t == DSYS_OPT_DURATION ? "milliseconds" : t == DSYS_OPT_DURATION_S ? "seconds"
         : t == DSYS_OPT_SIZE   ? "bytes"
                                : NULL;
}

/* Check val for option o, given as spelled (e.g. "--ttl-ms", or "environment
 * DSYS_X: --ttl"). */
static int check_type(const dsys_option *o, const char *val, const char *spelled,
                      char *errbuf, size_t errlen) {
  int64_t i;
  int b, rc = 0;
  const char *want = NULL;
  switch (o->type) {
  case DSYS_OPT_INT: want = "an integer"; break;
  case DSYS_OPT_BOOL: want = "true or false"; break;
  case DSYS_OPT_DURATION:
  case DSYS_OPT_DURATION_S: want = "a duration such as 500ms, 5s or 2m"; break;
  case DSYS_OPT_SIZE: want = "a size such as 65536, 64KiB or 1MiB"; break;
  default: return 0;
  }
  rc = o->type == DSYS_OPT_BOOL ? parse_bool(val, &b) : parse_number(o->type, val, &i);
  if (!rc) return 0;
  if (!errbuf) return DSYS_EINVAL;
  if (rc == DSYS_ERANGE)
    snprintf(errbuf, errlen, "%s: '%s' is out of range", spelled, val);
  else if (bare_unit(o->type))
    snprintf(errbuf, errlen, "%s expects %s (a bare number is %s), got '%s'", spelled, want,
             bare_unit(o->type), val);
  else
    snprintf(errbuf, errlen, "%s expects %s, got '%s'", spelled, want, val);
  return DSYS_EINVAL;
}

/* ---- the table ---------------------------------------------------------- */

static long find_row(const dsys_option *opts, size_t nopts, const char *name, size_t n) {
  for (size_t i = 0; i < nopts; i++)
    if (opts[i].name && strlen(opts[i].name) == n && !strncmp(opts[i].name, name, n))
      return (long)i;
  return -1;
}

/* The row an option name stands for (an alias's option), or -1. */
static long find_opt(const dsys_option *opts, size_t nopts, const char *name, size_t n) {
  long i = find_row(opts, nopts, name, n);
  if (i >= 0 && opts[i].type == DSYS_OPT_ALIAS)
    i = opts[i].def ? find_row(opts, nopts, opts[i].def, strlen(opts[i].def)) : -1;
  return i >= 0 && opts[i].type == DSYS_OPT_ALIAS ? -1 : i;
}

/* Mistakes in the table itself: said at once rather than at the first use. */
static int check_table(const dsys_option *opts, size_t nopts, char *errbuf, size_t errlen) {
  for (size_t i = 0; i < nopts; i++) {
    const dsys_option *o = &opts[i];
    int64_t x;
    const char *why = NULL;
    if (!o->name || !*o->name) why = "an option without a name";
    else if (o->type == DSYS_OPT_ALIAS && find_opt(opts, nopts, o->name, strlen(o->name)) < 0)
      why = "an alias of no option";
    else if (o->def && (o->type == DSYS_OPT_DURATION || o->type == DSYS_OPT_DURATION_S ||
                        o->type == DSYS_OPT_SIZE) && parse_number(o->type, o->def, &x))
      why = "a default that does not parse";
    if (why) {
      if (errbuf) snprintf(errbuf, errlen, "option table: --%s: %s", o->name ? o->name : "", why);
      return DSYS_EINVAL;
    }
  }
  return 0;
}

static int add_val(opt_val *v, const char *s) {
  if (dsysi_grow(&v->vals, &v->cap, v->n + 1, sizeof *v->vals, 4)) return DSYS_ENOMEM;
  if (!(v->vals[v->n] = strdup(s))) return DSYS_ENOMEM;
  v->n++;
  return 0;
}

static void clear_val(opt_val *v) {
  for (size_t i = 0; i < v->n; i++) free(v->vals[i]);
  free(v->vals);
  v->vals = NULL;
  v->n = v->cap = 0;
}

void dsys_config_free(dsys_config *cfg) {
  if (!cfg) return;
  for (size_t i = 0; i < cfg->nopts; i++) clear_val(&cfg->v[i]);
  free(cfg->v);
  for (size_t i = 0; i < cfg->npos; i++) free(cfg->pos[i]);
  free(cfg->pos);
  free(cfg);
}

/* Defaults, then the environment: the option's own variable, else the
 * first of its aliases' that is set. */
static int load_env(dsys_config *c, char *errbuf, size_t errlen) {
  const dsys_option *opts = c->opts;
  for (size_t i = 0; i < c->nopts; i++) {
    if (opts[i].type == DSYS_OPT_ALIAS) continue;
    const char *var = opts[i].env, *env = var ? getenv(var) : NULL;
    for (size_t a = 0; !env && a < c->nopts; a++)
      if (opts[a].type == DSYS_OPT_ALIAS && opts[a].env &&
          find_opt(opts, c->nopts, opts[a].name, strlen(opts[a].name)) == (long)i)
        env = getenv(var = opts[a].env);
    if (env) {
      char from[160];
      snprintf(from, sizeof from, "environment %s: --%s", var, opts[i].name);
      int rc = check_type(&opts[i], env, from, errbuf, errlen);
      if (rc) return rc;
      if (add_val(&c->v[i], env)) return DSYS_ENOMEM;
      c->v[i].source = SRC_ENV;
    } else if (opts[i].def) {
      if (add_val(&c->v[i], opts[i].def)) return DSYS_ENOMEM;
      c->v[i].source = SRC_DEFAULT;
    }
  }
  return 0;
}

/* A flag occurrence: the first replaces the default or environment value;
 * later ones replace it again, or are appended for a list. */
static int set_flag(dsys_config *c, long idx, const char *spelled, const char *val,
                    char *errbuf, size_t errlen) {
  const dsys_option *o = &c->opts[idx];
  char name[160];
  snprintf(name, sizeof name, "--%s", spelled);
  int rc = check_type(o, val, name, errbuf, errlen);
  if (rc) return rc;
  opt_val *v = &c->v[idx];
  if (v->source != SRC_FLAG || o->type != DSYS_OPT_LIST) clear_val(v);
  if (add_val(v, val)) return DSYS_ENOMEM;
  v->source = SRC_FLAG;
  return 0;
}

static int add_positional(dsys_config *c, const char *arg) {
  if (dsysi_grow(&c->pos, &c->cappos, c->npos + 1, sizeof *c->pos, 4)) return DSYS_ENOMEM;
  if (!(c->pos[c->npos] = strdup(arg))) return DSYS_ENOMEM;
  c->npos++;
  return 0;
}

/* getopt_long keeps its state in globals (optind, optarg and a hidden
 * cursor): one parse at a time, and the caller's own getopt state is put
 * back afterwards. */
static pthread_mutex_t getopt_lock = PTHREAD_MUTEX_INITIALIZER;

/* The flags of argv. argv is copied because GNU getopt may reorder it. */
static int load_flags(dsys_config *c, int argc, char *const *argv, char *errbuf,
                      size_t errlen) {
  const dsys_option *opts = c->opts;
  size_t nopts = c->nopts;
  struct option *lo = calloc(nopts + 1, sizeof *lo);
  char **av = calloc((size_t)argc + 1, sizeof *av);
  if (!lo || !av) {
    free(lo);
    free(av);
    return DSYS_ENOMEM;
  }
  for (size_t i = 0; i < nopts; i++) {
    long t = find_opt(opts, nopts, opts[i].name, strlen(opts[i].name));
    lo[i] = (struct option){opts[i].name,
                            opts[t].type == DSYS_OPT_BOOL ? optional_argument : required_argument,
                            NULL, 256 + (int)i};
  }
  memcpy(av, argv, (size_t)argc * sizeof *av);
  /* '-': non-options come back in order (code 1), whatever POSIXLY_CORRECT
   * says; ':': a missing value is ':' rather than '?'. */
  char shorts[8] = "-:";
  long hidx = find_row(opts, nopts, "help", 4), vidx = find_row(opts, nopts, "version", 7);
  if (hidx >= 0 && opts[hidx].type == DSYS_OPT_BOOL) strcat(shorts, "h");
  if (vidx >= 0 && opts[vidx].type == DSYS_OPT_BOOL) strcat(shorts, "V");

  pthread_mutex_lock(&getopt_lock);
  int s_optind = optind, s_opterr = opterr, s_optopt = optopt;
  char *s_optarg = optarg;
  optind = 0; /* glibc: start over, also its hidden cursor */
  opterr = 0; /* our messages, not getopt's */
  int rc = 0;
  while (!rc) {
    int at = optind ? optind : 1; /* the element getopt looks at */
    int li = -1;
    int ch = getopt_long(argc, av, shorts, lo, &li);
    if (ch == -1) break;
    const char *elem = at < argc ? av[at] : "";
    size_t elen = strcspn(elem, "=");
    if (ch == 1) {
      rc = add_positional(c, optarg);
    } else if (ch == 'h' || ch == 'V') {
      rc = set_flag(c, ch == 'h' ? hidx : vidx, ch == 'h' ? "help" : "version", "true",
                    errbuf, errlen);
    } else if (ch >= 256 || (ch == ':' && optopt >= 256)) {
      size_t i = (size_t)((ch >= 256 ? ch : optopt) - 256);
      /* getopt_long takes any unambiguous prefix; abbreviations would
       * break scripts when a flag is added, so only exact names count */
      if (strncmp(elem, "--", 2) || elen - 2 != strlen(opts[i].name) ||
          strncmp(elem + 2, opts[i].name, elen - 2)) {
        if (errbuf) snprintf(errbuf, errlen, "unknown option '%.*s'", (int)elen, elem);
        rc = DSYS_EINVAL;
      } else if (ch == ':') {
        if (errbuf) snprintf(errbuf, errlen, "option '--%s' needs a value", opts[i].name);
        rc = DSYS_EINVAL;
      } else {
        long t = find_opt(opts, nopts, opts[i].name, strlen(opts[i].name));
        rc = set_flag(c, t, opts[i].name, optarg ? optarg : "true", errbuf, errlen);
      }
    } else if (ch == '?' && optopt > 0 && optopt < 256) {
      if (errbuf) {
        int n = snprintf(errbuf, errlen, "unknown option '-%c'", optopt);
        if (elem[0] == '-' && elem[1] != '-' && strlen(elem) > 2 && n > 0 && (size_t)n < errlen)
          snprintf(errbuf + n, errlen - (size_t)n, " in '%s' (long options start with --)", elem);
      }
      rc = DSYS_EINVAL;
    } else {
      if (errbuf) snprintf(errbuf, errlen, "unknown option '%.*s'", (int)elen, elem);
      rc = DSYS_EINVAL;
    }
  }
  for (int a = optind; !rc && a < argc; a++) rc = add_positional(c, av[a]); /* after "--" */
  optind = s_optind;
  opterr = s_opterr;
  optopt = s_optopt;
  optarg = s_optarg;
  pthread_mutex_unlock(&getopt_lock);
  free(lo);
  free(av);
  return rc;
}

int dsys_config_parse(dsys_config **out, const dsys_option *opts, size_t nopts,
                      int argc, char *const *argv, char *errbuf, size_t errlen) {
  if (errbuf && errlen) errbuf[0] = '\0';
  if (!out || (!opts && nopts) || argc < 0 || (argc > 0 && !argv))
    return DSYS_EINVAL;
  int rc = check_table(opts, nopts, errbuf, errlen);
  if (rc) return rc;
  dsys_config *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->opts = opts;
  c->nopts = nopts;
  c->v = calloc(nopts ? nopts : 1, sizeof *c->v);
  rc = !c->v ? DSYS_ENOMEM : load_env(c, errbuf, errlen);
  if (!rc && argc > 1) rc = load_flags(c, argc, argv, errbuf, errlen);
  if (rc) {
    if (rc == DSYS_ENOMEM && errbuf) snprintf(errbuf, errlen, "out of memory");
    dsys_config_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

/* ---- reading ------------------------------------------------------------ */

static long lookup_idx(const dsys_config *cfg, const char *name) {
  if (!cfg || !name) return -1;
  return find_opt(cfg->opts, cfg->nopts, name, strlen(name));
}

static const opt_val *lookup(const dsys_config *cfg, const char *name) {
  long i = lookup_idx(cfg, name);
  return i < 0 ? NULL : &cfg->v[i];
}

const char *dsys_config_get(const dsys_config *cfg, const char *name) {
  const opt_val *v = lookup(cfg, name);
  return v && v->n ? v->vals[v->n - 1] : NULL;
}

int dsys_config_get_int(const dsys_config *cfg, const char *name, int64_t *out) {
  const char *s = dsys_config_get(cfg, name);
  if (!s) return DSYS_ENOTFOUND;
  int rc = parse_number(cfg->opts[lookup_idx(cfg, name)].type, s, out);
  return rc ? DSYS_ETYPE : 0;
}

int dsys_config_get_duration_ms(const dsys_config *cfg, const char *name, int64_t *out) {
  const char *s = dsys_config_get(cfg, name);
  if (!s || !out) return DSYS_ENOTFOUND;
  int t = cfg->opts[lookup_idx(cfg, name)].type;
  return dsysi_parse_duration_ms(s, t == DSYS_OPT_DURATION_S ? 1000 : 1, out);
}

int dsys_config_get_size(const dsys_config *cfg, const char *name, uint64_t *out) {
  const char *s = dsys_config_get(cfg, name);
  int64_t v;
  if (!s || !out) return DSYS_ENOTFOUND;
  int rc = dsysi_parse_size(s, &v);
  if (!rc) *out = (uint64_t)v;
  return rc;
}

int dsys_config_get_bool(const dsys_config *cfg, const char *name) {
  const char *s = dsys_config_get(cfg, name);
  int b = 0;
  if (s && parse_bool(s, &b)) b = 0;
  return b;
}

size_t dsys_config_count(const dsys_config *cfg, const char *name) {
  const opt_val *v = lookup(cfg, name);
  return v ? v->n : 0;
}

const char *dsys_config_get_nth(const dsys_config *cfg, const char *name,
                                size_t i) {
  const opt_val *v = lookup(cfg, name);
  return v && i < v->n ? v->vals[i] : NULL;
}

const char *dsys_config_source(const dsys_config *cfg, const char *name) {
  static const char *names[] = {"unset", "default", "env", "flag"};
  const opt_val *v = lookup(cfg, name);
  return names[v ? v->source : SRC_UNSET];
}

size_t dsys_config_npositional(const dsys_config *cfg) {
  return cfg ? cfg->npos : 0;
}

const char *dsys_config_positional(const dsys_config *cfg, size_t i) {
  return cfg && i < cfg->npos ? cfg->pos[i] : NULL;
}

/* ---- help and the start of a main -------------------------------------- */

static const char *metavar(const dsys_option *o) {
  switch (o->type) {
  case DSYS_OPT_BOOL: /* -h and -V are actions, other booleans can be turned off */
    return !strcmp(o->name, "help") || !strcmp(o->name, "version") ? "" : "[=BOOL]";
  case DSYS_OPT_INT: return " N";
  case DSYS_OPT_DURATION:
  case DSYS_OPT_DURATION_S: return " DURATION";
  case DSYS_OPT_SIZE: return " SIZE";
  default: return " VALUE";
  }
}

int dsys_config_usage(const dsys_option *opts, size_t nopts,
                      const char *progname, const char *summary, char **out) {
  if (!out) return DSYS_EINVAL;
  dsysi_buf b = {0};
  int durations = 0, sizes = 0;
  dsysi_buf_printf(&b, "Usage: %s [options]\n", progname ? progname : "program");
  if (summary) dsysi_buf_printf(&b, "%s\n", summary);
  dsysi_buf_puts(&b, "\nOptions:\n");
  for (size_t i = 0; i < nopts; i++) {
    const dsys_option *o = &opts[i];
    if (o->type == DSYS_OPT_ALIAS || !o->name) continue;
    const char *sh = o->type != DSYS_OPT_BOOL ? ""
                     : !strcmp(o->name, "help") ? "-h, "
                     : !strcmp(o->name, "version") ? "-V, " : "";
    dsysi_buf_printf(&b, "  %s--%s%s\n      %s", sh, o->name, metavar(o), o->help ? o->help : "");
    if (o->type == DSYS_OPT_LIST) dsysi_buf_puts(&b, " (repeatable)");
    if (bare_unit(o->type)) dsysi_buf_printf(&b, " (a bare number is %s)", bare_unit(o->type));
    durations |= o->type == DSYS_OPT_DURATION || o->type == DSYS_OPT_DURATION_S;
    sizes |= o->type == DSYS_OPT_SIZE;
    /* the other spellings that set this option, and their variables */
    int n = 0;
    for (size_t a = 0; a < nopts; a++)
      if (opts[a].type == DSYS_OPT_ALIAS && opts[a].def && !strcmp(opts[a].def, o->name))
        dsysi_buf_printf(&b, "%s--%s", n++ ? ", " : " [also ", opts[a].name);
    if (n) dsysi_buf_puts(&b, "]");
    n = 0;
    if (o->env) dsysi_buf_printf(&b, " [env %s", o->env), n++;
    for (size_t a = 0; a < nopts; a++)
      if (opts[a].type == DSYS_OPT_ALIAS && opts[a].env && opts[a].def &&
          !strcmp(opts[a].def, o->name))
        dsysi_buf_printf(&b, "%s%s", n++ ? " or " : " [env ", opts[a].env);
    if (n) dsysi_buf_puts(&b, "]");
    if (o->def) dsysi_buf_printf(&b, " [default %s]", o->def);
    dsysi_buf_puts(&b, "\n");
  }
  if (durations)
    dsysi_buf_puts(&b, "\nDURATION: a number and a unit ms, s, m, h or d (500ms, 1.5s, 2m).\n");
  if (sizes)
    dsysi_buf_puts(&b, "\nSIZE: a number and a unit B, KiB, MiB, GiB or TiB (65536, 64KiB, 1MiB).\n");
  char *s = dsysi_buf_steal(&b, NULL);
  if (!s) return DSYS_ENOMEM;
  *out = s;
  return 0;
}

static int has_opt(const dsys_option *opts, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (opts[i].name && !strcmp(opts[i].name, name)) return 1;
  return 0;
}

/* The program's name for messages: progname up to its synopsis. */
static int prog_len(const char *progname) { return (int)strcspn(progname, " "); }

int dsys_program_positionals(const dsys_config *cfg, const char *progname, size_t max) {
  const char *prog = progname ? progname : "program";
  if (dsys_config_npositional(cfg) <= max) return 0;
  fprintf(stderr, "%.*s: unexpected argument '%s' (try --help)\n", prog_len(prog), prog,
          dsys_config_positional(cfg, max));
  return 2;
}

int dsys_program_start(dsys_config **out, const dsys_option *opts, size_t nopts,
                       int argc, char *const *argv, const char *progname,
                       const char *summary) {
  char err[256];
  dsys_config *cfg;
  const char *prog = progname ? progname : "program";
  int plen = prog_len(prog);
  if (!out) return 2;
  int rc = dsys_config_parse(&cfg, opts, nopts, argc, argv, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%.*s: %s (try --help)\n", plen, prog, err);
    return rc == DSYS_ENOMEM ? 1 : 2;
  }
  int status = -1;
  if (has_opt(opts, nopts, "help") && dsys_config_get_bool(cfg, "help")) {
    char *u = NULL;
    if (dsys_config_usage(opts, nopts, prog, summary, &u)) status = 1;
    else fputs(u, stdout), status = 0;
    dsys_free(u);
  } else if (has_opt(opts, nopts, "version") && dsys_config_get_bool(cfg, "version")) {
    printf("%.*s (libdistsys %s)\n", plen, prog, dsys_version());
    status = 0;
  } else {
    const char *v;
    dsys_log_format fmt;
    dsys_log_level lvl;
    if (has_opt(opts, nopts, "log-format") && (v = dsys_config_get(cfg, "log-format"))) {
      if (dsys_log_format_parse(v, &fmt)) {
        fprintf(stderr, "%.*s: --log-format must be text, json or journal, got '%s'\n", plen, prog, v);
        status = 2;
      } else {
        dsys_log_set_format(fmt);
      }
    }
    if (status < 0 && has_opt(opts, nopts, "log-level") && (v = dsys_config_get(cfg, "log-level"))) {
      if (dsys_log_level_parse(v, &lvl)) {
        fprintf(stderr, "%.*s: --log-level must be debug, info, warn, error or off, got '%s'\n",
                plen, prog, v);
        status = 2;
      } else {
        dsys_log_set_level(lvl);
      }
    }
  }
  if (status >= 0) {
    dsys_config_free(cfg);
    return status;
  }
  *out = cfg;
  return -1;
}

/* ---- configuration files ---- */

static void free_args(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

int dsysi_config_file_args(const dsys_option *opts, size_t nopts, const char *path,
                           const char *skip, char ***out, size_t *n, char *errbuf,
                           size_t errlen) {
  if (errbuf && errlen) errbuf[0] = '\0';
  FILE *f = fopen(path, "re");
  if (!f) {
    if (errbuf) snprintf(errbuf, errlen, "cannot read %s: %s", path, strerror(errno));
    return DSYS_EIO;
  }
  char **v = NULL, *line = NULL;
  size_t nv = 0, cap = 0, lcap = 0;
  int rc = 0, lineno = 0;
  ssize_t len;
  while (!rc && (len = getline(&line, &lcap, f)) >= 0) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' ||
                       line[len - 1] == '\t'))
      line[--len] = '\0';
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p || *p == '#' || *p == ';') continue;
    char *eq = strchr(p, '=');
    long idx = -1;
    if (eq)
      for (size_t i = 0; i < nopts && idx < 0; i++)
        if (opts[i].env && strlen(opts[i].env) == (size_t)(eq - p) &&
            !strncmp(opts[i].env, p, (size_t)(eq - p)))
          idx = (long)i;
    if (idx < 0) {
      if (errbuf)
        snprintf(errbuf, errlen, "%s:%d: want VAR=value, VAR a variable of --help", path, lineno);
      rc = DSYS_EINVAL;
      break;
    }
    /* the option naming the file: a unit's environment file may name itself */
    if (skip && !strcmp(opts[idx].name, skip)) continue;
    char *val = eq + 1;
    size_t vl = strlen(val);
    if (vl >= 2 && (val[0] == '"' || val[0] == '\'') && val[vl - 1] == val[0]) {
      val[vl - 1] = '\0';
      val++;
    }
    if (dsysi_grow(&v, &cap, nv + 2, sizeof *v, 8)) {
      rc = DSYS_ENOMEM;
      break;
    }
    size_t sz = strlen(opts[idx].name) + strlen(val) + 4;
    if (!(v[nv] = malloc(sz))) {
      rc = DSYS_ENOMEM;
      break;
    }
    snprintf(v[nv++], sz, "--%s=%s", opts[idx].name, val);
    v[nv] = NULL;
  }
  if (!rc && ferror(f)) {
    if (errbuf) snprintf(errbuf, errlen, "cannot read %s", path);
    rc = DSYS_EIO;
  }
  free(line);
  fclose(f);
  if (rc) {
    if (rc == DSYS_ENOMEM && errbuf) snprintf(errbuf, errlen, "out of memory");
    free_args(v, nv);
    return rc;
  }
  if (!v && !(v = calloc(1, sizeof *v))) return DSYS_ENOMEM;
  *out = v;
  *n = nv;
  return 0;
}
