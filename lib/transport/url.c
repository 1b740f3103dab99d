/* Endpoint URL parsing and scheme lookup. */
#include <stdlib.h>
#include <string.h>
#include "core/plugin.h"
#include "transport/evloop.h"
#include "transport/transport.h"
#include "transport/url.h"

int dsysi_url_parse(const char *url, dsysi_url *u) {
  memset(u, 0, sizeof *u);
  if (!url) return DSYS_EURL;
  const char *sep = strstr(url, "://");
  if (!sep || sep == url || (size_t)(sep - url) >= sizeof u->scheme)
    return DSYS_EURL;
  memcpy(u->scheme, url, (size_t)(sep - url));
  const char *rest = sep + 3;
  if (!strcmp(u->scheme, "unix")) {
    if (rest[0] != '/' || strlen(rest) < 2) return DSYS_EURL;
    u->path = strdup(rest);
    return u->path ? 0 : DSYS_ENOMEM;
  }
  if (!strcmp(u->scheme, "inproc")) {
    size_t n = strlen(rest);
    if (n == 0 || n >= sizeof u->host || strchr(rest, '/')) return DSYS_EURL;
    memcpy(u->host, rest, n + 1);
    u->path = strdup("");
    return u->path ? 0 : DSYS_ENOMEM;
  }
  /* http-like: host[:port][/path] */
  const char *hs = rest, *he;
  if (*hs == '[') {
    he = strchr(hs, ']');
    if (!he) return DSYS_EURL;
    hs++;
  } else {
    he = hs + strcspn(hs, ":/");
  }
  size_t hl = (size_t)(he - hs);
  if (hl >= sizeof u->host) return DSYS_EURL;
  memcpy(u->host, hs, hl);
  u->host[hl] = '\0';
  const char *p = *he == ']' ? he + 1 : he;
  u->port = !strcmp(u->scheme, "https") ? 443 : 80;
  if (*p == ':') {
    char *end;
    long port = strtol(p + 1, &end, 10);
    if (end == p + 1 || port < 0 || port > 65535) return DSYS_EURL;
    u->port = (int)port;
    p = end;
  }
  if (*p && *p != '/') return DSYS_EURL;
  if (hl == 0) return DSYS_EURL;
  /* Drop a lone trailing slash so base + "/path" never doubles it. */
  size_t pl = strlen(p);
  if (pl == 1) pl = 0;
  u->path = dsysi_strndup(p, pl);
  return u->path ? 0 : DSYS_ENOMEM;
}

void dsysi_url_free(dsysi_url *u) {
  free(u->path);
  u->path = NULL;
}

int dsysi_url_check(const char *url) {
  if (!dsysi_dialer_find(url)) return url && strstr(url, "://") ? DSYS_ESCHEME : DSYS_EURL;
  dsysi_url u;
  int rc = dsysi_url_parse(url, &u);
  dsysi_url_free(&u);
  return rc;
}

/* ---- the listener and dialer families ---- */

static int listener_usable(const void *p) {
  const dsysi_listener_ops *o = p;
  return o->version >= 1 && o->version <= DSYSI_LISTENER_OPS_VERSION && o->listen &&
         o->url && o->quiesce && o->notify && o->close;
}

static int dialer_usable(const void *p) {
  const dsysi_dialer_ops *o = p;
  return o->version >= 1 && o->version <= DSYSI_DIALER_OPS_VERSION && o->engine && o->call &&
         o->client_free;
}

static dsysi_family listeners = DSYSI_FAMILY("listener", listener_usable, NULL);
static dsysi_family dialers = DSYSI_FAMILY("dialer", dialer_usable, NULL);

/* Transport URLs are "scheme://...": a bare "scheme:" names none. */
static const void *find(dsysi_family *f, const char *url) {
  const char *scheme, *loc;
  size_t n;
  if (dsysi_plugin_url(url, &scheme, &n, &loc) || strncmp(url + n, "://", 3)) return NULL;
  return dsysi_family_find(f, scheme, n);
}

const dsysi_listener_ops *dsysi_listener_find(const char *url) { return find(&listeners, url); }
const dsysi_dialer_ops *dsysi_dialer_find(const char *url) { return find(&dialers, url); }
const dsysi_dialer_ops *dsysi_dialer_at(size_t i) { return dsysi_family_at(&dialers, i); }

static int loop_dialer_usable(const void *p) {
  const dsysi_loop_dialer_ops *o = p;
  return o->version >= 1 && o->version <= DSYSI_LOOP_DIALER_OPS_VERSION && o->dial;
}

static dsysi_family loop_dialers = DSYSI_FAMILY("loop-dialer", loop_dialer_usable, NULL);

const dsysi_loop_dialer_ops *dsysi_loop_dialer_find(const char *url) {
  return dsysi_loop_current() ? find(&loop_dialers, url) : NULL;
}
