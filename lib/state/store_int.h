/* Internal helpers shared by the state modules (store, queue). */
#ifndef DSYSI_STORE_INT_H
#define DSYSI_STORE_INT_H

#include <stdint.h>

/** Parse a strict JSON integer text. @return 0, DSYS_ETYPE, DSYS_ERANGE. */
int dsysi_store_parse_int(const char *v, int64_t *out);
/** a + b with overflow check. @return 0 or DSYS_ERANGE. */
int dsysi_store_add(int64_t a, int64_t b, int64_t *out);

#endif
