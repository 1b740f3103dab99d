/*
 * toy-store: a small store backend written against the public API only
 * (<distsys/store.h>), as an example of adding a backend. See
 * examples/toy-store.c and docs/reference/store.md ("Adding a backend").
 *
 * Thread-safety: toy_store_register() may be called from any thread; a
 * "toy:" store may be used from any number of threads (one mutex).
 */
#ifndef TOY_STORE_H
#define TOY_STORE_H

/**
 * Register the toy backend under the name "toy", after which
 * dsys_store_open(&s, "toy:", opts) opens an empty in-process store.
 * Registrations are permanent: call it once per process.
 * @return 0; DSYS_EEXIST when a backend named "toy" is registered already
 *         (e.g. a second call); DSYS_ENOMEM when the table of backends is
 *         full (see dsys_store_register_backend()).
 */
int toy_store_register(void);

#endif
