/* The server guard of service identities: a request must carry a valid
 * X-Dsys-Identity token (include/distsys/identity.h). It sits in the
 * transport layer because it is server middleware built on the security
 * layer's verifier. */
#include <string.h>
#include <distsys/identity.h>
#include <distsys/server.h>
#include "transport/identity_guard.h"

int dsysi_identity_check(dsys_identity_verifier *v, dsys_request *req,
                         dsys_identity_claims *out) {
  const char *tok = dsys_request_header(req, DSYS_IDENTITY_HEADER);
  int rc = tok ? dsys_identity_verify(v, tok, out) : DSYS_EAUTH;
  if (rc == DSYS_ENOMEM) {
    dsys_respond_error(req, 503, "DSYS_ENOMEM", "out of memory");
    return rc;
  }
  if (rc) {
    dsys_respond_error(req, 401, "identity_required",
                       tok ? "the X-Dsys-Identity token is not valid"
                           : "this service needs an X-Dsys-Identity token");
    return rc;
  }
  dsys_request_log_field(req, "peer", out->instance);
  return 0;
}

/* Probe and scrape paths of docs/reference/http-api.md: /health, /ready, /metrics and
 * /api/<type>/health. */
static int open_path(const char *p) {
  if (!strcmp(p, "/health") || !strcmp(p, "/ready") || !strcmp(p, "/metrics")) return 1;
  if (strncmp(p, "/api/", 5)) return 0;
  const char *slash = strchr(p + 5, '/');
  return slash && slash > p + 5 && !strcmp(slash, "/health");
}

static int guard(dsys_request *req, void *ud) {
  const char *m = dsys_request_method(req);
  if ((!strcmp(m, "GET") || !strcmp(m, "HEAD")) && open_path(dsys_request_path(req))) return 0;
  dsys_identity_claims c;
  return dsysi_identity_check(ud, req, &c) ? 1 : 0;
}

int dsys_server_require_identity(dsys_server *srv, dsys_identity_verifier *v) {
  if (!srv || !v) return DSYS_EINVAL;
  return dsys_server_use(srv, guard, v);
}
