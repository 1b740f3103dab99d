/* Internal helpers shared by the state modules (store, queue). */
#ifndef DSYSI_STORE_INT_H
#define DSYSI_STORE_INT_H

#include <stdint.h>
#include <distsys/store.h>
#include "core/group.h"

/** Parse a strict JSON integer text. @return 0, DSYS_ETYPE, DSYS_ERANGE. */
int dsysi_store_parse_int(const char *v, int64_t *out);
/** a + b with overflow check. @return 0 or DSYS_ERANGE. */
int dsysi_store_add(int64_t a, int64_t b, int64_t *out);

/** The group commit of a store on the SQLite backend (its writes), NULL
 *  for another backend. For tests and statistics. */
dsysi_group *dsysi_store_sqlite_group(dsys_store *s);
/** The backend state of a store (what its ops receive). */
void *dsysi_store_state(dsys_store *s);
/** The ops table of a store. */
const dsys_store_ops *dsysi_store_ops(dsys_store *s);

#endif
