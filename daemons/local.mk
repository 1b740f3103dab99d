# Daemons: thin mains over the service modules.

# dsys-registryd: the service registry daemon
bin_PROGRAMS += daemons/dsys-registryd
daemons_dsys_registryd_SOURCES = daemons/dsys-registryd.c
daemons_dsys_registryd_LDADD = libdistsys.la
TESTS += tests/integration/registryd.test
EXTRA_DIST += tests/integration/registryd.test
