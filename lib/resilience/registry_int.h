/* Registry internals shared by the generic layer and the backends. */
#ifndef DSYSI_REGISTRY_INT_H
#define DSYSI_REGISTRY_INT_H

#include <distsys/registry.h>

/** Changes kept for watchers by the built-in backends. */
#define DSYSI_REGISTRY_LOG_KEEP 1024

#endif
