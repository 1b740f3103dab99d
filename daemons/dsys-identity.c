/*
 * dsys-identity: service identity keys and tokens for operators who run
 * the daemons without dsys-cluster (which does this itself in its secure
 * profile). See docs/reference/identity.md.
 *
 *   dsys-identity keygen --key FILE --public-key FILE
 *   dsys-identity issue  --key FILE --instance NAME --service TYPE
 *                        [--lifetime DURATION] [--out FILE]
 *   dsys-identity verify --public-key FILE [TOKEN]   (else read stdin)
 *
 * Exit status: 0 success; 1 failure (an invalid token for verify); 2 bad
 * usage.
 */
#include <stdio.h>
#include <string.h>
#include <distsys/distsys.h>

static const dsys_option opts[] = {
    {"key", "DSYS_IDENTITY_KEY", DSYS_OPT_STRING, NULL,
     "the private key (keygen: created 0600 unless it exists; issue: signs)"},
    {"public-key", "DSYS_IDENTITY_PUBLIC_KEY", DSYS_OPT_STRING, NULL,
     "the public key (keygen: written from the key; verify: checks with it)"},
    {"instance", "DSYS_IDENTITY_INSTANCE", DSYS_OPT_STRING, NULL,
     "issue: the instance name (--name of the daemon)"},
    {"service", "DSYS_IDENTITY_SERVICE", DSYS_OPT_STRING, NULL,
     "issue: the service type (auth, data, compute, gateway)"},
    {"lifetime", "DSYS_IDENTITY_LIFETIME", DSYS_OPT_DURATION_S, "24h",
     "issue: how long until the token expires (whole seconds, rounded up)"},
    {"lifetime-s", "DSYS_IDENTITY_LIFETIME_S", DSYS_OPT_ALIAS, "lifetime", NULL},
    {"out", "DSYS_IDENTITY_OUT", DSYS_OPT_STRING, NULL,
     "issue: write the token to this file (0600, replaced atomically) instead of stdout"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])
#define PROG "dsys-identity"

static int usage(const char *why) {
  fprintf(stderr, PROG ": %s (try --help)\n", why);
  return 2;
}

static int need(const dsys_config *cfg, const char *name) {
  const char *v = dsys_config_get(cfg, name);
  return v && *v;
}

static int keygen(const dsys_config *cfg) {
  if (!need(cfg, "key") || !need(cfg, "public-key")) return usage("keygen needs --key and --public-key");
  int created = 0;
  int rc = dsys_identity_keygen(dsys_config_get(cfg, "key"), dsys_config_get(cfg, "public-key"), &created);
  if (rc) {
    fprintf(stderr, PROG ": keygen: %s\n", dsys_strerror(rc));
    return 1;
  }
  printf("%s %s; public key %s\n", created ? "created" : "kept the existing key",
         dsys_config_get(cfg, "key"), dsys_config_get(cfg, "public-key"));
  return 0;
}

static int issue(const dsys_config *cfg) {
  if (!need(cfg, "key") || !need(cfg, "instance") || !need(cfg, "service"))
    return usage("issue needs --key, --instance and --service");
  int64_t life_ms = 0;
  dsys_config_get_duration_ms(cfg, "lifetime", &life_ms);
  if (life_ms <= 0) return usage("--lifetime must be positive");
  dsys_identity_issue_options o = {.size = sizeof o, .lifetime_s = (life_ms + 999) / 1000};
  const char *key = dsys_config_get(cfg, "key"), *inst = dsys_config_get(cfg, "instance"),
             *svc = dsys_config_get(cfg, "service"), *out = dsys_config_get(cfg, "out");
  int rc;
  if (out && *out) {
    rc = dsys_identity_issue_file(key, inst, svc, &o, out);
  } else {
    char *tok = NULL;
    rc = dsys_identity_issue(key, inst, svc, &o, &tok);
    if (!rc) printf("%s\n", tok);
    dsys_free(tok);
  }
  if (rc) {
    fprintf(stderr, PROG ": issue: %s\n", dsys_strerror(rc));
    return rc == DSYS_EINVAL ? 2 : 1;
  }
  return 0;
}

static int verify(const dsys_config *cfg) {
  if (!need(cfg, "public-key")) return usage("verify needs --public-key");
  char buf[DSYS_IDENTITY_TOKEN_MAX + 2] = "";
  const char *tok = dsys_config_npositional(cfg) > 1 ? dsys_config_positional(cfg, 1) : NULL;
  if (!tok) {
    if (!fgets(buf, sizeof buf, stdin)) return usage("verify needs a token (argument or stdin)");
    buf[strcspn(buf, "\r\n")] = '\0';
    tok = buf;
  }
  dsys_identity_verifier *v = NULL;
  int rc = dsys_identity_verifier_new(&v, dsys_config_get(cfg, "public-key"), NULL);
  if (rc) {
    fprintf(stderr, PROG ": verify: cannot use the public key: %s\n", dsys_strerror(rc));
    return 1;
  }
  dsys_identity_claims c;
  rc = dsys_identity_verify(v, tok, &c);
  dsys_identity_verifier_free(v);
  if (rc) {
    printf("invalid: %s\n", dsys_strerror(rc));
    return 1;
  }
  printf("valid: instance %s, service %s, expires %lld\n", c.instance, c.service, (long long)c.expires_s);
  return 0;
}

int main(int argc, char **argv) {
  dsys_config *cfg = NULL;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, PROG " keygen|issue|verify",
                              "Service identity keys and tokens (what dsys-cluster --profile secure "
                              "does by itself): keygen makes the deployment's key pair, issue signs "
                              "an instance's token, verify checks one.");
  if (st >= 0) return st;
  const char *cmd = dsys_config_npositional(cfg) ? dsys_config_positional(cfg, 0) : "";
  /* verify takes the token as an argument; the others nothing more */
  st = dsys_program_positionals(cfg, PROG, strcmp(cmd, "verify") ? 1 : 2);
  if (st) {
  } else if (!strcmp(cmd, "keygen")) {
    st = keygen(cfg);
  } else if (!strcmp(cmd, "issue")) {
    st = issue(cfg);
  } else if (!strcmp(cmd, "verify")) {
    st = verify(cfg);
  } else {
    st = usage(*cmd ? "unknown command (keygen, issue or verify)" : "give a command: keygen, issue or verify");
  }
  dsys_config_free(cfg);
  return st;
}
