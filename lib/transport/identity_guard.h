/* Internal: the identity check of a server request (identity_guard.c). */
#ifndef DSYSI_IDENTITY_GUARD_H
#define DSYSI_IDENTITY_GUARD_H

#include <distsys/identity.h>
#include <distsys/server.h>

/** Verify the request's X-Dsys-Identity header into *out. On failure the
 *  request is answered (401 identity_required, or 503 out of memory) and
 *  the error returned. On success the "peer" log field is set. */
int dsysi_identity_check(dsys_identity_verifier *v, dsys_request *req,
                         dsys_identity_claims *out);

#endif
