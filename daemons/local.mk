# Daemons: thin mains over the service modules; the shared boilerplate is
# dsys_daemon_main() in lib/services/daemon.c.
bin_PROGRAMS += daemons/dsys-authd daemons/dsys-datad daemons/dsys-computed
daemons_dsys_authd_SOURCES = daemons/dsys-authd.c
daemons_dsys_authd_LDADD = libdistsys.la
daemons_dsys_datad_SOURCES = daemons/dsys-datad.c
daemons_dsys_datad_LDADD = libdistsys.la
daemons_dsys_computed_SOURCES = daemons/dsys-computed.c
daemons_dsys_computed_LDADD = libdistsys.la

TESTS += tests/integration/services.test
EXTRA_DIST += tests/integration/services.test

bin_PROGRAMS += daemons/dsys-gatewayd
daemons_dsys_gatewayd_SOURCES = daemons/dsys-gatewayd.c
daemons_dsys_gatewayd_LDADD = libdistsys.la
# Daemons: thin mains over the service modules.

# dsys-registryd: the service registry daemon
bin_PROGRAMS += daemons/dsys-registryd
daemons_dsys_registryd_SOURCES = daemons/dsys-registryd.c
daemons_dsys_registryd_LDADD = libdistsys.la
TESTS += tests/integration/registryd.test
EXTRA_DIST += tests/integration/registryd.test

# dsys-cluster: the supervisor of the reference deployment (issue 6).
bin_PROGRAMS += daemons/dsys-cluster
daemons_dsys_cluster_SOURCES = daemons/dsys-cluster.c
daemons_dsys_cluster_LDADD = libdistsys.la

# The deployment under failure: real processes started by dsys-cluster.
check_PROGRAMS += tests/integration/test-cluster
tests_integration_test_cluster_SOURCES = tests/integration/test-cluster.c
tests_integration_test_cluster_CPPFLAGS = $(TEST_CPPFLAGS)
tests_integration_test_cluster_CFLAGS = $(TEST_CFLAGS)
tests_integration_test_cluster_LDADD = $(TEST_LIBS)
TESTS += tests/integration/test-cluster
# dsys-loadtest: the load generator (issue 9); a client program, so it uses
# libcurl directly. See docs/reference/loadtest.md.
bin_PROGRAMS += tools/dsys-loadtest
tools_dsys_loadtest_SOURCES = tools/dsys-loadtest.c tools/loadtest-hist.c tools/loadtest-hist.h
tools_dsys_loadtest_CFLAGS = $(AM_CFLAGS) $(CURL_CFLAGS)
tools_dsys_loadtest_LDADD = libdistsys.la $(CURL_LIBS) -lm
TESTS += tests/integration/loadtest.test
EXTRA_DIST += tests/integration/loadtest.test
# dsys-faultd: the fault detector daemon (issue 6)
bin_PROGRAMS += daemons/dsys-faultd
daemons_dsys_faultd_SOURCES = daemons/dsys-faultd.c
daemons_dsys_faultd_LDADD = libdistsys.la
TESTS += tests/integration/faultd.test
EXTRA_DIST += tests/integration/faultd.test

# dsys-identity: service identity keys and tokens for operators (issue 10).
bin_PROGRAMS += daemons/dsys-identity
daemons_dsys_identity_SOURCES = daemons/dsys-identity.c
daemons_dsys_identity_LDADD = libdistsys.la
TESTS += tests/integration/identity.test
EXTRA_DIST += tests/integration/identity.test
