# Examples: small programs using only the public API, linked against the
# shared library like any user program.
noinst_PROGRAMS += examples/echo-service
examples_echo_service_SOURCES = examples/echo-service.c
examples_echo_service_LDADD = libdistsys.la
