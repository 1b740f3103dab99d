# Tests, listed once. They mirror lib/: tests/core, security, transport,
# resilience, state, observe and services hold the unit and conformance
# programs of that layer; tests/integration runs the daemons as real
# processes; tests/fuzz replays the fuzz corpora. A C test program is
# PROGRAM.c (automake's default source) compiled and linked with the
# defaults of Makefile.am (AM_CPPFLAGS, AM_CFLAGS, LDADD); it speaks TAP
# (tests/helpers/tap.h). Adding a test = its file + its name below.
check_LTLIBRARIES += libdsys_testutil.la
libdsys_testutil_la_SOURCES = tests/helpers/tap.c tests/helpers/tap.h \
	tests/helpers/net.c tests/helpers/net.h \
	tests/helpers/pgserver.c tests/helpers/pgserver.h \
	tests/helpers/etcdserver.c tests/helpers/etcdserver.h \
	tests/helpers/reaper.c tests/helpers/reaper.h

C_TESTS = \
	tests/core/test-core tests/core/test-plugin tests/core/test-log tests/core/test-pg tests/core/test-group \
	tests/security/test-identity \
	tests/transport/test-transport tests/transport/test-h1 \
	tests/transport/test-h1client tests/transport/test-http-stop \
	tests/transport/test-http-loops tests/transport/test-http-wait \
	tests/transport/test-http-limits tests/transport/test-http-flood \
	tests/resilience/test-breaker tests/resilience/test-retry \
	tests/resilience/test-balancer tests/resilience/test-health \
	tests/resilience/test-registry tests/resilience/test-registry-etcd \
	tests/resilience/test-registry-sweep \
	tests/resilience/test-upstream \
	tests/resilience/test-upstream-http tests/resilience/test-upstream-loop \
	tests/resilience/test-upstream-slow \
	tests/state/test-store tests/state/test-store-group tests/state/test-queue tests/state/test-queue-pg tests/state/test-state-crash \
	tests/state/test-lock tests/state/test-cache \
	tests/observe/test-events tests/observe/test-metrics \
	tests/services/test-data tests/services/test-auth tests/services/test-compute tests/services/test-compute-submit \
	tests/services/test-gateway tests/services/test-gateway-edge tests/services/test-gateway-cache \
	tests/services/test-registry-service tests/services/test-faultd \
	tests/services/test-streams tests/services/test-daemon-reload \
	tests/integration/test-cluster \
	tests/tools/test-loadtest-hist \
	tests/sim/test-sched

# The fuzz targets' replay programs, run by tests/fuzz/*.test.
FUZZ_CHECKS = tests/fuzz/fuzz-h1-check tests/fuzz/fuzz-router-check tests/fuzz/fuzz-jwt-check \
	tests/fuzz/fuzz-services-check tests/fuzz/fuzz-gateway-check

SCRIPT_TESTS = \
	tests/headers.test tests/docs.test tests/layers.test tests/python.test \
	tests/python-types.test tests/python-install.test \
	tests/man.test tests/symbols.test \
	tests/integration/pg-deploy.test \
	tests/state/example-queue-worker.test tests/state/example-toy-store.test tests/state/example-locks.test \
	tests/integration/echo-service.test tests/integration/advertise.test tests/integration/faultd-leader.test tests/integration/pg-failover.test tests/integration/upstream-client.test \
	tests/integration/services.test tests/integration/registryd.test \
	tests/integration/faultd.test tests/integration/identity.test \
	tests/integration/loadtest.test tests/integration/dashboard.test \
	tests/integration/metrics.test tests/integration/gateway-tls.test \
	tests/integration/gatewayd-static.test tests/integration/cluster-config.test \
	tests/integration/gateway-reload.test tests/integration/gateway-restart.test \
	tests/integration/tls-reload.test \
	tests/integration/cluster-secure.test tests/integration/mtls.test \
	tests/integration/cli.test tests/integration/http-api.test tests/integration/storage.test \
	tests/integration/systemd.test tests/integration/daemon-signals.test \
	tests/integration/conn-flood.test \
	tests/integration/queue-cli.test tests/integration/registry-cli.test \
	tests/integration/python-service.test tests/integration/etcd-registry.test \
	tests/integration/compute-sweep.test \
	tests/integration/hung-instance.test \
	tests/integration/multihost-config.test tests/integration/multihost-history.test \
	tests/integration/multihost-kill.test tests/integration/multihost-tls-config.test \
	tests/fuzz/h1.test tests/fuzz/router.test tests/fuzz/jwt.test \
	tests/fuzz/services.test tests/fuzz/gateway.test \
	tests/sim/determinism.test tests/sim/seeds.test tests/sim/example.test

# The multi-host scenarios (docs/reference/multi-host.md): three hosts as
# network namespaces (root), real etcd, Patroni and PostgreSQL. make check
# runs scenario 1 with a short load (multihost-kill.test, about a minute);
# `make check-multihost` runs every scenario with longer load phases.
MULTIHOST_TESTS = tests/integration/multihost-kill.test tests/integration/multihost-pause.test \
	tests/integration/multihost-etcd.test tests/integration/multihost-partition.test \
	tests/integration/multihost-rolling.test tests/integration/multihost-tls.test \
	tests/integration/multihost-skew.test
check-multihost: all
	MH_LOAD_S=20 $(MAKE) $(AM_MAKEFLAGS) check TESTS="$(MULTIHOST_TESTS)"
.PHONY: check-multihost

# Helper programs of the shell tests.
TEST_HELPERS = tests/integration/queue-fixture

check_PROGRAMS += $(C_TESTS) $(FUZZ_CHECKS) $(TEST_HELPERS)
TESTS += $(C_TESTS) $(SCRIPT_TESTS)
EXTRA_DIST += $(SCRIPT_TESTS) tests/helpers/run-test tests/helpers/conn.sh tests/helpers/conn-flood.py \
	tests/helpers/pyenv.sh tests/helpers/history.py tests/helpers/test_history.py \
	tests/integration/multihost-lib.sh tests/integration/multihost-pause.test \
	tests/integration/multihost-etcd.test tests/integration/multihost-partition.test \
	tests/integration/multihost-rolling.test tests/integration/multihost-tls.test \
	tests/integration/multihost-skew.test tests/services/svc-test.h tests/integration/dashboard.py tests/fuzz/corpus \
	tests/fuzz/lsan.supp tests/fuzz/fuzz-lines.h deploy
# The dashboard test keeps two screenshots in tests/artifacts/.
CLEANFILES += tests/artifacts/dashboard-healthy.png tests/artifacts/dashboard-unhealthy.png

# Programs of more than one source file.
tests_tools_test_loadtest_hist_SOURCES = tests/tools/test-loadtest-hist.c tools/loadtest-hist.c
tests_state_test_store_SOURCES = tests/state/test-store.c examples/toy-store.c examples/toy-store.h
# A simulation program (tools/sim/local.mk): the runtime, the library
# statically, its symbols exported.
tests_sim_test_sched_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/sim -I$(top_srcdir)/tests/helpers
tests_sim_test_sched_LDADD = libdsys_testutil.la $(SIM_LIBS)
tests_sim_test_sched_LDFLAGS = $(AM_LDFLAGS) -export-dynamic
tests_fuzz_fuzz_h1_check_SOURCES = tests/fuzz/fuzz-h1.c tests/fuzz/driver.c
tests_fuzz_fuzz_router_check_SOURCES = tests/fuzz/fuzz-router.c tests/fuzz/driver.c
tests_fuzz_fuzz_jwt_check_SOURCES = tests/fuzz/fuzz-jwt.c tests/fuzz/driver.c
tests_fuzz_fuzz_services_check_SOURCES = tests/fuzz/fuzz-services.c tests/fuzz/driver.c
tests_fuzz_fuzz_gateway_check_SOURCES = tests/fuzz/fuzz-gateway.c tests/fuzz/driver.c

# Fuzz targets: make check replays the seed corpus plus deterministic
# mutations through a plain driver; `make fuzz` runs libFuzzer (clang).
FUZZ_SECONDS ?= 60
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang"; exit 1; }
	mkdir -p fuzz-out/h1
	clang -g -O1 -fsanitize=fuzzer,address,undefined -I$(top_srcdir)/include -I$(top_builddir)/include \
	  -I$(top_srcdir)/lib -D_GNU_SOURCE $(DEP_CFLAGS) \
	  $(top_srcdir)/tests/fuzz/fuzz-h1.c $(top_srcdir)/lib/transport/h1.c $(top_srcdir)/lib/transport/hdrs.c \
	  $(top_srcdir)/lib/core/buf.c $(top_srcdir)/lib/core/str.c \
	  $(top_srcdir)/lib/core/json.c $(top_srcdir)/lib/core/clock.c \
	  -o fuzz-h1 $(JSONC_LIBS) $(BSD_LIBS) -pthread
	./fuzz-h1 -max_total_time=$(FUZZ_SECONDS) fuzz-out/h1 $(top_srcdir)/tests/fuzz/corpus/h1
.PHONY: fuzz

# `make fuzz` also runs the router, JWT and services targets under
# libFuzzer for FUZZ_SECONDS each (before h1). They need the whole library:
# its sources are compiled with clang and the fuzzer sanitizers into
# fuzz-obj/ (plain objects, not libtool) and linked into each target.
FUZZ_TARGETS = router jwt services
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer-no-link,address,undefined \
	-I$(top_srcdir)/include -I$(top_builddir)/include -I$(top_builddir) \
	-I$(top_srcdir)/lib -D_GNU_SOURCE -DHAVE_CONFIG_H \
	-DDSYS_BUILDING_LIBRARY $(DEP_CFLAGS) -pthread
fuzz: fuzz-lib-targets
fuzz-lib-targets: lib/services/dashboard_html.c
	@command -v clang >/dev/null || { echo "make fuzz needs clang"; exit 1; }
	@mkdir -p fuzz-obj
	@for s in $(filter %.c,$(libdsys_internal_la_SOURCES)); do echo $(top_srcdir)/$$s; done \
	  > fuzz-obj/sources; echo lib/services/dashboard_html.c >> fuzz-obj/sources
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
FUZZ_TARGETS += gateway
