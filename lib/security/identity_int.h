/* Internal: service identity pieces used by the gateway, the registry
 * service and the daemons (see include/distsys/identity.h). */
#ifndef DSYSI_IDENTITY_INT_H
#define DSYSI_IDENTITY_INT_H

#include <distsys/identity.h>

/** The current token of id (reloaded when its file changed), or NULL for
 *  a NULL id. The pointer stays valid across the next rotations of the
 *  file (a ring of 8): copy it at once, do not keep it. */
const char *dsysi_identity_current(dsys_identity *id);

#endif
