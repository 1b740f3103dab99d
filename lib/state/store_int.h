/* Internal helpers shared by the state modules (store, queue). */
#ifndef DSYSI_STORE_INT_H
#define DSYSI_STORE_INT_H

#include <stdint.h>

/** Split "memory:" / "sqlite://<path>" into scheme and location.
 *  @return 0, DSYS_EINVAL, DSYS_EURL, DSYS_ESCHEME. */
int dsysi_state_parse_url(const char *url, const char **scheme,
                          const char **loc);
/** Parse a strict JSON integer text. @return 0, DSYS_ETYPE, DSYS_ERANGE. */
int dsysi_store_parse_int(const char *v, int64_t *out);
/** a + b with overflow check. @return 0 or DSYS_ERANGE. */
int dsysi_store_add(int64_t a, int64_t b, int64_t *out);

#endif
