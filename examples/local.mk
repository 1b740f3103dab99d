# Examples: small programs using only the public API, linked against the
# shared library like any user program.
noinst_PROGRAMS += examples/echo-service
examples_echo_service_SOURCES = examples/echo-service.c
examples_echo_service_LDADD = libdistsys.la
# Calling a service by name (dsys_upstream): run by tests/integration/upstream-client.test
noinst_PROGRAMS += examples/upstream-client
examples_upstream_client_SOURCES = examples/upstream-client.c
examples_upstream_client_LDADD = libdistsys.la
TESTS += tests/integration/upstream-client.test
EXTRA_DIST += tests/integration/upstream-client.test
