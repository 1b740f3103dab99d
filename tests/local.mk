# Tests. C programs speak TAP (tests/helpers/tap.h). Each area appends its
# programs to check_PROGRAMS and TESTS.
check_LTLIBRARIES += libdsys_testutil.la
libdsys_testutil_la_SOURCES = tests/helpers/tap.c tests/helpers/tap.h \
	tests/helpers/net.c tests/helpers/net.h
libdsys_testutil_la_CPPFLAGS = $(TEST_CPPFLAGS)
libdsys_testutil_la_CFLAGS = $(TEST_CFLAGS)
EXTRA_DIST += tests/helpers/run-test tests/helpers/conn.sh tests/headers.test

check_PROGRAMS += tests/unit/test-core
tests_unit_test_core_SOURCES = tests/unit/test-core.c
tests_unit_test_core_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_core_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_core_LDADD = $(TEST_LIBS)

TESTS += tests/unit/test-core tests/headers.test

check_PROGRAMS += tests/conformance/test-transport
tests_conformance_test_transport_SOURCES = tests/conformance/test-transport.c
tests_conformance_test_transport_CPPFLAGS = $(TEST_CPPFLAGS)
tests_conformance_test_transport_CFLAGS = $(TEST_CFLAGS)
tests_conformance_test_transport_LDADD = $(TEST_LIBS)
TESTS += tests/conformance/test-transport

TESTS += tests/integration/echo-service.test
EXTRA_DIST += tests/integration/echo-service.test

check_PROGRAMS += tests/unit/test-h1
tests_unit_test_h1_SOURCES = tests/unit/test-h1.c
tests_unit_test_h1_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_h1_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_h1_LDADD = $(TEST_LIBS)
TESTS += tests/unit/test-h1

# Fuzz targets: make check replays the seed corpus plus deterministic
# mutations through a plain driver; `make fuzz` runs libFuzzer (clang).
check_PROGRAMS += tests/fuzz/fuzz-h1-check
tests_fuzz_fuzz_h1_check_SOURCES = tests/fuzz/fuzz-h1.c tests/fuzz/driver.c
tests_fuzz_fuzz_h1_check_CPPFLAGS = $(TEST_CPPFLAGS)
tests_fuzz_fuzz_h1_check_CFLAGS = $(TEST_CFLAGS)
tests_fuzz_fuzz_h1_check_LDADD = $(TEST_LIBS)
TESTS += tests/fuzz/h1.test
EXTRA_DIST += tests/fuzz/h1.test tests/fuzz/corpus

FUZZ_SECONDS ?= 60
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang"; exit 1; }
	mkdir -p fuzz-out/h1
	clang -g -O1 -fsanitize=fuzzer,address,undefined -I$(top_srcdir)/include -I$(top_builddir)/include \
	  -I$(top_srcdir)/lib -I$(top_srcdir)/lib/core -D_GNU_SOURCE $(DEP_CFLAGS) \
	  $(top_srcdir)/tests/fuzz/fuzz-h1.c $(top_srcdir)/lib/transport/h1.c $(top_srcdir)/lib/transport/hdrs.c \
	  $(top_srcdir)/lib/core/util.c $(top_srcdir)/lib/core/json.c $(top_srcdir)/lib/core/clock.c \
	  -o fuzz-h1 $(JSONC_LIBS) $(BSD_LIBS) -pthread
	./fuzz-h1 -max_total_time=$(FUZZ_SECONDS) fuzz-out/h1 $(top_srcdir)/tests/fuzz/corpus/h1
.PHONY: fuzz

# Documentation check: every public function and error code is documented.
TESTS += tests/docs.test
EXTRA_DIST += tests/docs.test

check_PROGRAMS += tests/unit/test-h1client
tests_unit_test_h1client_SOURCES = tests/unit/test-h1client.c
tests_unit_test_h1client_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_h1client_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_h1client_LDADD = $(TEST_LIBS)
TESTS += tests/unit/test-h1client

check_PROGRAMS += tests/unit/test-http-stop
tests_unit_test_http_stop_SOURCES = tests/unit/test-http-stop.c
tests_unit_test_http_stop_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_http_stop_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_http_stop_LDADD = $(TEST_LIBS)
TESTS += tests/unit/test-http-stop

# Event loops: one listening socket, connections spread by load.
check_PROGRAMS += tests/unit/test-http-loops
tests_unit_test_http_loops_SOURCES = tests/unit/test-http-loops.c
tests_unit_test_http_loops_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_http_loops_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_http_loops_LDADD = $(TEST_LIBS)
TESTS += tests/unit/test-http-loops
check_PROGRAMS += tests/unit/test-http-wait
tests_unit_test_http_wait_SOURCES = tests/unit/test-http-wait.c
tests_unit_test_http_wait_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_http_wait_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_http_wait_LDADD = $(TEST_LIBS)
TESTS += tests/unit/test-http-wait

TESTS += tests/python.test
EXTRA_DIST += tests/python.test bindings/python examples/python

check_PROGRAMS += tests/unit/test-loadtest-hist
tests_unit_test_loadtest_hist_SOURCES = tests/unit/test-loadtest-hist.c tools/loadtest-hist.c
tests_unit_test_loadtest_hist_CPPFLAGS = $(TEST_CPPFLAGS) -I$(top_srcdir)/tools
tests_unit_test_loadtest_hist_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_loadtest_hist_LDADD = $(TEST_LIBS)
TESTS += tests/unit/test-loadtest-hist

# The fault detector's dashboard in headless Chromium (issue 7); keeps two
# screenshots in tests/artifacts/ (removed by make clean).
TESTS += tests/integration/dashboard.test
EXTRA_DIST += tests/integration/dashboard.test tests/integration/dashboard.py
CLEANFILES += tests/artifacts/dashboard-healthy.png tests/artifacts/dashboard-unhealthy.png
# Metrics: /metrics of every daemon, promtool, a real Prometheus (issue 7).
TESTS += tests/integration/metrics.test
EXTRA_DIST += tests/integration/metrics.test deploy
# The gateway's edge (issue 10): rate limits, JWT, CORS, limits, path
# tricks, idempotency, slow clients.
check_PROGRAMS += tests/services/test-gateway-edge
tests_services_test_gateway_edge_SOURCES = tests/services/test-gateway-edge.c
tests_services_test_gateway_edge_CPPFLAGS = $(TEST_CPPFLAGS)
tests_services_test_gateway_edge_CFLAGS = $(TEST_CFLAGS)
tests_services_test_gateway_edge_LDADD = $(TEST_LIBS)
TESTS += tests/services/test-gateway-edge
# TLS (issue 10): dsys-gatewayd serving https (and mutual TLS) and
# proxying to an https upstream, with a throwaway CA.
TESTS += tests/integration/gateway-tls.test
EXTRA_DIST += tests/integration/gateway-tls.test
# dsys-gatewayd's static mode and its flag errors.
TESTS += tests/integration/gatewayd-static.test
EXTRA_DIST += tests/integration/gatewayd-static.test
# dsys-cluster's config file errors.
TESTS += tests/integration/cluster-config.test
EXTRA_DIST += tests/integration/cluster-config.test

# More fuzz targets (issue 10): the router, JWT verification, and the
# data/compute/auth JSON handlers, each replayed by make check like h1.
check_PROGRAMS += tests/fuzz/fuzz-router-check tests/fuzz/fuzz-jwt-check \
	tests/fuzz/fuzz-services-check
tests_fuzz_fuzz_router_check_SOURCES = tests/fuzz/fuzz-router.c tests/fuzz/driver.c \
	tests/fuzz/fuzz-lines.h
tests_fuzz_fuzz_router_check_CPPFLAGS = $(TEST_CPPFLAGS)
tests_fuzz_fuzz_router_check_CFLAGS = $(TEST_CFLAGS)
tests_fuzz_fuzz_router_check_LDADD = $(TEST_LIBS)
tests_fuzz_fuzz_jwt_check_SOURCES = tests/fuzz/fuzz-jwt.c tests/fuzz/driver.c
tests_fuzz_fuzz_jwt_check_CPPFLAGS = $(TEST_CPPFLAGS)
tests_fuzz_fuzz_jwt_check_CFLAGS = $(TEST_CFLAGS)
tests_fuzz_fuzz_jwt_check_LDADD = $(TEST_LIBS)
tests_fuzz_fuzz_services_check_SOURCES = tests/fuzz/fuzz-services.c tests/fuzz/driver.c
tests_fuzz_fuzz_services_check_CPPFLAGS = $(TEST_CPPFLAGS)
tests_fuzz_fuzz_services_check_CFLAGS = $(TEST_CFLAGS)
tests_fuzz_fuzz_services_check_LDADD = $(TEST_LIBS)
TESTS += tests/fuzz/router.test tests/fuzz/jwt.test tests/fuzz/services.test
EXTRA_DIST += tests/fuzz/router.test tests/fuzz/jwt.test tests/fuzz/services.test

# `make fuzz` also runs the router, JWT and services targets under
# libFuzzer for FUZZ_SECONDS each (before h1). They need the whole library:
# its sources are compiled with clang and the fuzzer sanitizers into
# fuzz-obj/ (plain objects, not libtool) and linked into each target.
FUZZ_TARGETS = router jwt services
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer-no-link,address,undefined \
	-I$(top_srcdir)/include -I$(top_builddir)/include -I$(top_builddir) \
	-I$(top_srcdir)/lib -I$(top_srcdir)/lib/core -D_GNU_SOURCE -DHAVE_CONFIG_H \
	-DDSYS_BUILDING_LIBRARY $(DEP_CFLAGS) -pthread
fuzz: fuzz-lib-targets
fuzz-lib-targets: lib/services/dashboard-html.c
	@command -v clang >/dev/null || { echo "make fuzz needs clang"; exit 1; }
	@mkdir -p fuzz-obj
	@for s in $(filter %.c,$(libdsys_internal_la_SOURCES)); do echo $(top_srcdir)/$$s; done \
	  > fuzz-obj/sources; echo lib/services/dashboard-html.c >> fuzz-obj/sources
	@echo "  CLANG    `wc -l < fuzz-obj/sources` library sources"
	@xargs -P 4 -I{} sh -c 'o=fuzz-obj/`echo {} | tr / _ | sed "s/\.c$$/.o/"`; \
	  clang $(FUZZ_CFLAGS) -c {} -o $$o || exit 255' < fuzz-obj/sources
	@for t in $(FUZZ_TARGETS); do \
	  echo "  CLANG    fuzz-$$t"; \
	  clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $(top_srcdir)/tests/fuzz/fuzz-$$t.c fuzz-obj/*.o \
	    -o fuzz-$$t $(DEP_LIBS) || exit 1; \
	done
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz-out/$$t; \
	  echo "== fuzz-$$t for $(FUZZ_SECONDS) s"; \
	  FUZZ_SERVICES_HASH=1 ./fuzz-$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    fuzz-out/$$t $(top_srcdir)/tests/fuzz/corpus/$$t || exit 1; \
	done
.PHONY: fuzz-lib-targets
# OpenSSL's per-thread state reported at exit (see the file).
EXTRA_DIST += tests/fuzz/lsan.supp
fuzz-lib-targets: export LSAN_OPTIONS = suppressions=$(abs_top_srcdir)/tests/fuzz/lsan.supp
# The gateway edge's request checks (path tricks, framing), through a whole
# gateway on inproc:// (the checks are static functions of gateway.c).
check_PROGRAMS += tests/fuzz/fuzz-gateway-check
tests_fuzz_fuzz_gateway_check_SOURCES = tests/fuzz/fuzz-gateway.c tests/fuzz/driver.c \
	tests/fuzz/fuzz-lines.h
tests_fuzz_fuzz_gateway_check_CPPFLAGS = $(TEST_CPPFLAGS)
tests_fuzz_fuzz_gateway_check_CFLAGS = $(TEST_CFLAGS)
tests_fuzz_fuzz_gateway_check_LDADD = $(TEST_LIBS)
TESTS += tests/fuzz/gateway.test
EXTRA_DIST += tests/fuzz/gateway.test
FUZZ_TARGETS += gateway

# Service identity (issue 10): the secure cluster refuses rogue
# registrations and direct calls without an identity.
TESTS += tests/integration/cluster-secure.test
EXTRA_DIST += tests/integration/cluster-secure.test
# Mutual TLS between services (issue 10): registry, data instance, gateway
# and fault detector with a throwaway CA.
TESTS += tests/integration/mtls.test
EXTRA_DIST += tests/integration/mtls.test
