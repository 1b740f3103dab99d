# Services: mountable modules (auth, data, compute), their shared helpers,
# and the daemon boilerplate used by daemons/ (issue 5).
libdsys_internal_la_SOURCES += \
	lib/services/common.c lib/services/auth.c lib/services/authfn.c \
	lib/services/secret.c \
	lib/services/data.c lib/services/compute.c lib/services/daemon.c
noinst_HEADERS += lib/services/common.h lib/services/authfn.h
pkginclude_HEADERS += include/distsys/services.h include/distsys/auth.h

# Tests: each service on inproc:// with a temporary SQLite file.
EXTRA_DIST += tests/services/svc-test.h
check_PROGRAMS += tests/services/test-data tests/services/test-auth \
	tests/services/test-compute
tests_services_test_data_SOURCES = tests/services/test-data.c
tests_services_test_data_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_data_CFLAGS = $(TEST_CFLAGS)
tests_services_test_data_LDADD = $(TEST_LIBS)
tests_services_test_auth_SOURCES = tests/services/test-auth.c
tests_services_test_auth_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_auth_CFLAGS = $(TEST_CFLAGS)
tests_services_test_auth_LDADD = $(TEST_LIBS)
tests_services_test_compute_SOURCES = tests/services/test-compute.c
tests_services_test_compute_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_compute_CFLAGS = $(TEST_CFLAGS)
tests_services_test_compute_LDADD = $(TEST_LIBS)
TESTS += tests/services/test-data tests/services/test-auth \
	tests/services/test-compute

# The gateway (load balancer) service (issue 6).
libdsys_internal_la_SOURCES += lib/services/gateway.c
pkginclude_HEADERS += include/distsys/gateway.h
check_PROGRAMS += tests/services/test-gateway
tests_services_test_gateway_SOURCES = tests/services/test-gateway.c
tests_services_test_gateway_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_gateway_CFLAGS = $(TEST_CFLAGS)
tests_services_test_gateway_LDADD = $(TEST_LIBS)
TESTS += tests/services/test-gateway
# services (see issues): sources are appended here.

# registry service module (the registry daemon's HTTP API)
libdsys_internal_la_SOURCES += lib/services/registry.c
pkginclude_HEADERS += include/distsys/registry_service.h

check_PROGRAMS += tests/unit/test-registry-service
TESTS += tests/unit/test-registry-service
tests_unit_test_registry_service_SOURCES = tests/unit/test-registry-service.c
tests_unit_test_registry_service_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_registry_service_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_registry_service_LDADD = $(TEST_LIBS)

# The fault detector service (issue 6).
libdsys_internal_la_SOURCES += lib/services/faultd.c
pkginclude_HEADERS += include/distsys/faultd.h
check_PROGRAMS += tests/services/test-faultd
tests_services_test_faultd_SOURCES = tests/services/test-faultd.c
tests_services_test_faultd_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_faultd_CFLAGS = $(TEST_CFLAGS)
tests_services_test_faultd_LDADD = $(TEST_LIBS)
TESTS += tests/services/test-faultd

# Event streams and tracing across compute, data and the gateway (issue 7).
check_PROGRAMS += tests/services/test-streams
tests_services_test_streams_SOURCES = tests/services/test-streams.c
tests_services_test_streams_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_streams_CFLAGS = $(TEST_CFLAGS)
tests_services_test_streams_LDADD = $(TEST_LIBS)
TESTS += tests/services/test-streams
# The fault detector's dashboard (issue 7): dashboard/index.html is embedded
# into the library as a C string by a POSIX od/sed script (no xxd, no build
# compiler). The generated source lives in the build tree (out-of-tree and
# distcheck builds work; it is not distributed).
nodist_libdsys_internal_la_SOURCES = lib/services/dashboard-html.c
EXTRA_DIST += dashboard/index.html lib/services/embed-file.sh
CLEANFILES += lib/services/dashboard-html.c
lib/services/dashboard-html.c: $(top_srcdir)/dashboard/index.html $(top_srcdir)/lib/services/embed-file.sh
	@$(MKDIR_P) lib/services
	$(AM_V_GEN)$(SHELL) $(top_srcdir)/lib/services/embed-file.sh dsysi_dashboard_html \
	  $(top_srcdir)/dashboard/index.html > $@.tmp && mv $@.tmp $@
# The gateway's edge: rate limits, idempotency cache (issue 10).
libdsys_internal_la_SOURCES += lib/services/edge.c
noinst_HEADERS += lib/services/edge.h

# Service identity: key pairs, ES256 tokens, credentials and the verifier
# (issue 10).
libdsys_internal_la_SOURCES += lib/services/identity.c
noinst_HEADERS += lib/services/identity-int.h
pkginclude_HEADERS += include/distsys/identity.h
check_PROGRAMS += tests/unit/test-identity
TESTS += tests/unit/test-identity
tests_unit_test_identity_SOURCES = tests/unit/test-identity.c
tests_unit_test_identity_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_identity_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_identity_LDADD = $(TEST_LIBS)
