/* Registry internals shared by the generic layer and the backends. */
#ifndef DSYSI_REGISTRY_INT_H
#define DSYSI_REGISTRY_INT_H

#include <distsys/registry.h>

/** Built-in backends. */
extern const dsys_registry_ops dsysi_registry_memory_ops;
extern const dsys_registry_ops dsysi_registry_sqlite_ops;
extern const dsys_registry_ops dsysi_registry_http_ops;

/** Changes kept for watchers by the built-in backends. */
#define DSYSI_REGISTRY_LOG_KEEP 1024

#endif
