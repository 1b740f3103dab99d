/* Configuration from flags, DSYS_* environment variables and defaults. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/config.h>
#include <distsys/log.h>
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
  opt_val *v;
  char **pos;
  size_t npos, cappos;
};

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

static int check_type(const dsys_option *o, const char *val, const char *from,
                      char *errbuf, size_t errlen) {
  int64_t i;
  int b;
  if (o->type == DSYS_OPT_INT && parse_int(val, &i)) {
    if (errbuf) snprintf(errbuf, errlen, "%s: --%s expects an integer, got '%s'", from, o->name, val);
    return DSYS_EINVAL;
  }
  if (o->type == DSYS_OPT_BOOL && parse_bool(val, &b)) {
    if (errbuf) snprintf(errbuf, errlen, "%s: --%s expects true or false, got '%s'", from, o->name, val);
    return DSYS_EINVAL;
  }
  return 0;
}

void dsys_config_free(dsys_config *cfg) {
  if (!cfg) return;
  for (size_t i = 0; i < cfg->nopts; i++) clear_val(&cfg->v[i]);
  free(cfg->v);
  for (size_t i = 0; i < cfg->npos; i++) free(cfg->pos[i]);
  free(cfg->pos);
  free(cfg);
}

static long find_opt(const dsys_config *cfg, const char *name, size_t n) {
  for (size_t i = 0; i < cfg->nopts; i++)
    if (strlen(cfg->opts[i].name) == n && !strncmp(cfg->opts[i].name, name, n))
      return (long)i;
  return -1;
}

int dsys_config_parse(dsys_config **out, const dsys_option *opts, size_t nopts,
                      int argc, char *const *argv, char *errbuf, size_t errlen) {
  if (errbuf && errlen) errbuf[0] = '\0';
  if (!out || (!opts && nopts) || argc < 0 || (argc > 0 && !argv))
    return DSYS_EINVAL;
  dsys_config *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->opts = opts;
  c->nopts = nopts;
  c->v = calloc(nopts ? nopts : 1, sizeof *c->v);
  if (!c->v) goto oom;
  int rc;
  /* Defaults, then environment. */
  for (size_t i = 0; i < nopts; i++) {
    const char *env = opts[i].env ? getenv(opts[i].env) : NULL;
    if (env) {
      char from[96];
      snprintf(from, sizeof from, "environment %s", opts[i].env);
      if ((rc = check_type(&opts[i], env, from, errbuf, errlen))) goto fail;
      if (add_val(&c->v[i], env)) goto oom;
      c->v[i].source = SRC_ENV;
    } else if (opts[i].def) {
      if (add_val(&c->v[i], opts[i].def)) goto oom;
      c->v[i].source = SRC_DEFAULT;
    }
  }
  /* Flags override. */
  int only_pos = 0;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (only_pos || strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      if (!only_pos && !strcmp(arg, "--")) {
        only_pos = 1;
        continue;
      }
      if (dsysi_grow(&c->pos, &c->cappos, c->npos + 1, sizeof *c->pos, 4)) goto oom;
      if (!(c->pos[c->npos] = strdup(arg))) goto oom;
      c->npos++;
      continue;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    long idx = find_opt(c, name, nlen);
    if (idx < 0) {
      if (errbuf) snprintf(errbuf, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, name);
      rc = DSYS_EINVAL;
      goto fail;
    }
    const dsys_option *o = &opts[idx];
    const char *val;
    if (eq) {
      val = eq + 1;
    } else if (o->type == DSYS_OPT_BOOL) {
      val = "true";
    } else if (a + 1 < argc) {
      val = argv[++a];
    } else {
      if (errbuf) snprintf(errbuf, errlen, "option '--%s' needs a value", o->name);
      rc = DSYS_EINVAL;
      goto fail;
    }
    if ((rc = check_type(o, val, "flag", errbuf, errlen))) goto fail;
    opt_val *v = &c->v[idx];
    /* The first flag occurrence replaces defaults and environment. */
    if (v->source != SRC_FLAG) clear_val(v);
    else if (o->type != DSYS_OPT_LIST) clear_val(v);
    if (add_val(v, val)) goto oom;
    v->source = SRC_FLAG;
  }
  *out = c;
  return 0;
oom:
  rc = DSYS_ENOMEM;
  if (errbuf) snprintf(errbuf, errlen, "out of memory");
fail:
  dsys_config_free(c);
  return rc;
}

static const opt_val *lookup(const dsys_config *cfg, const char *name) {
  if (!cfg || !name) return NULL;
  long i = find_opt(cfg, name, strlen(name));
  return i < 0 ? NULL : &cfg->v[i];
}

const char *dsys_config_get(const dsys_config *cfg, const char *name) {
  const opt_val *v = lookup(cfg, name);
  return v && v->n ? v->vals[v->n - 1] : NULL;
}

int dsys_config_get_int(const dsys_config *cfg, const char *name, int64_t *out) {
  const char *s = dsys_config_get(cfg, name);
  if (!s) return DSYS_ENOTFOUND;
  return parse_int(s, out) ? DSYS_ETYPE : 0;
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

int dsys_config_usage(const dsys_option *opts, size_t nopts,
                      const char *progname, const char *summary, char **out) {
  if (!out) return DSYS_EINVAL;
  dsysi_buf b = {0};
  dsysi_buf_printf(&b, "Usage: %s [options]\n", progname ? progname : "program");
  if (summary) dsysi_buf_printf(&b, "%s\n", summary);
  dsysi_buf_puts(&b, "\nOptions:\n");
  for (size_t i = 0; i < nopts; i++) {
    const dsys_option *o = &opts[i];
    const char *arg = o->type == DSYS_OPT_BOOL ? "" : o->type == DSYS_OPT_INT ? " N" : " VALUE";
    dsysi_buf_printf(&b, "  --%s%s\n      %s", o->name, arg, o->help ? o->help : "");
    if (o->type == DSYS_OPT_LIST) dsysi_buf_puts(&b, " (repeatable)");
    if (o->env) dsysi_buf_printf(&b, " [env %s]", o->env);
    if (o->def) dsysi_buf_printf(&b, " [default %s]", o->def);
    dsysi_buf_puts(&b, "\n");
  }
  char *s = dsysi_buf_steal(&b, NULL);
  if (!s) return DSYS_ENOMEM;
  *out = s;
  return 0;
}

static int has_opt(const dsys_option *opts, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(opts[i].name, name)) return 1;
  return 0;
}

int dsys_program_start(dsys_config **out, const dsys_option *opts, size_t nopts,
                       int argc, char *const *argv, const char *progname,
                       const char *summary) {
  char err[256];
  dsys_config *cfg;
  const char *prog = progname ? progname : "program";
  if (!out) return 2;
  int rc = dsys_config_parse(&cfg, opts, nopts, argc, argv, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s: %s (try --help)\n", prog, err);
    return rc == DSYS_ENOMEM ? 1 : 2;
  }
  int status = -1;
  if (has_opt(opts, nopts, "help") && dsys_config_get_bool(cfg, "help")) {
    char *u = NULL;
    if (dsys_config_usage(opts, nopts, prog, summary, &u)) status = 1;
    else fputs(u, stdout), status = 0;
    dsys_free(u);
  } else if (has_opt(opts, nopts, "version") && dsys_config_get_bool(cfg, "version")) {
    printf("%s (libdistsys %s)\n", prog, dsys_version());
    status = 0;
  } else {
    const char *v;
    dsys_log_format fmt;
    dsys_log_level lvl;
    if (has_opt(opts, nopts, "log-format") && (v = dsys_config_get(cfg, "log-format"))) {
      if (dsys_log_format_parse(v, &fmt)) {
        fprintf(stderr, "%s: --log-format must be text or json\n", prog);
        status = 2;
      } else {
        dsys_log_set_format(fmt);
      }
    }
    if (status < 0 && has_opt(opts, nopts, "log-level") && (v = dsys_config_get(cfg, "log-level"))) {
      if (dsys_log_level_parse(v, &lvl)) {
        fprintf(stderr, "%s: --log-level must be debug, info, warn, error or off\n", prog);
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
