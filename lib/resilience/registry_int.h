/* Registry internals shared by the generic layer and the backends. */
#ifndef DSYSI_REGISTRY_INT_H
#define DSYSI_REGISTRY_INT_H

#include <distsys/registry.h>

/** Changes kept for watchers by the built-in backends. */
#define DSYSI_REGISTRY_LOG_KEEP 1024

/** Columns of an instance row of the SQL backends, in this order: id,
 *  type, name, url, tags (a JSON array), metadata, weight, healthy (0/1),
 *  registered_ms, heartbeat_ms. */
#define DSYSI_REGISTRY_NCOLS 10

/** A row source for dsysi_registry_rows: fill col with the next row's
 *  texts (valid until the next call). @return 1 (a row), 0 (no more), or
 *  a DSYS_E code. */
typedef int (*dsysi_registry_row_fn)(void *src, const char **col);

/** Read every row of next into one dsys_instances_copy() block (*out,
 *  *n). @return 0, DSYS_ENOMEM or the row source's error. */
int dsysi_registry_rows(dsysi_registry_row_fn next, void *src, dsys_instance **out, size_t *n);

/** The tags of in as a JSON array text (malloc'd), NULL on out of memory. */
char *dsysi_registry_tags_json(const dsys_instance *in);

#endif
