# Examples: small programs using only the public API, linked against the
# shared library like any user program (run by tests/local.mk's scripts).
noinst_PROGRAMS += examples/echo-service examples/upstream-client examples/queue-worker \
	examples/toy-store-demo examples/lock-counter examples/elect examples/cache-demo
examples_echo_service_SOURCES = examples/echo-service.c
examples_echo_service_LDADD = libdistsys.la
examples_upstream_client_SOURCES = examples/upstream-client.c
examples_upstream_client_LDADD = libdistsys.la
examples_queue_worker_SOURCES = examples/queue-worker.c
examples_queue_worker_LDADD = libdistsys.la
examples_lock_counter_SOURCES = examples/lock-counter.c
examples_lock_counter_LDADD = libdistsys.la
examples_elect_SOURCES = examples/elect.c
examples_elect_LDADD = libdistsys.la
examples_cache_demo_SOURCES = examples/cache-demo.c
examples_cache_demo_LDADD = libdistsys.la
# toy-store.c is also linked into tests/state/test-store (tests/local.mk),
# which runs the store conformance suite on it.
examples_toy_store_demo_SOURCES = examples/toy-store-demo.c examples/toy-store.c \
	examples/toy-store.h
examples_toy_store_demo_LDADD = libdistsys.la
EXTRA_DIST += examples/python
