# resilience: circuit breaker, balancer, retry policy, health checking and
# outlier detection, service registry (memory and sqlite backends).
libdsys_internal_la_SOURCES += \
	lib/resilience/breaker.c lib/resilience/balancer.c \
	lib/resilience/retry.c lib/resilience/health.c \
	lib/resilience/registry.c lib/resilience/registry-memory.c lib/resilience/registry-table.c \
	lib/resilience/registry-sqlite.c
noinst_HEADERS += lib/resilience/rint.h lib/resilience/registry-int.h lib/resilience/registry-table.h
pkginclude_HEADERS += include/distsys/breaker.h include/distsys/balancer.h \
	include/distsys/retry.h include/distsys/health.h \
	include/distsys/registry.h

RESIL_TESTS = tests/unit/test-breaker tests/unit/test-retry \
	tests/unit/test-balancer tests/unit/test-health \
	tests/unit/test-registry
check_PROGRAMS += $(RESIL_TESTS)
TESTS += $(RESIL_TESTS)

tests_unit_test_breaker_SOURCES = tests/unit/test-breaker.c
tests_unit_test_breaker_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_breaker_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_breaker_LDADD = $(TEST_LIBS)

tests_unit_test_retry_SOURCES = tests/unit/test-retry.c
tests_unit_test_retry_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_retry_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_retry_LDADD = $(TEST_LIBS)

tests_unit_test_balancer_SOURCES = tests/unit/test-balancer.c
tests_unit_test_balancer_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_balancer_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_balancer_LDADD = $(TEST_LIBS)

tests_unit_test_health_SOURCES = tests/unit/test-health.c
tests_unit_test_health_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_health_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_health_LDADD = $(TEST_LIBS)

tests_unit_test_registry_SOURCES = tests/unit/test-registry.c
tests_unit_test_registry_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_registry_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_registry_LDADD = $(TEST_LIBS)

# Benchmark (built by make, not run by make check): bench/bench-resil
noinst_PROGRAMS += bench/bench-resil
bench_bench_resil_SOURCES = bench/bench-resil.c
bench_bench_resil_CFLAGS = $(AM_CFLAGS) -O2
bench_bench_resil_LDADD = libdistsys.la $(PTHREAD_LIBS)

# dsys_upstream: the composed client (discover -> pick -> breaker -> call -> retry)
libdsys_internal_la_SOURCES += lib/resilience/upstream.c
pkginclude_HEADERS += include/distsys/upstream.h
UPSTREAM_TESTS = tests/unit/test-upstream
check_PROGRAMS += $(UPSTREAM_TESTS)
TESTS += $(UPSTREAM_TESTS)
tests_unit_test_upstream_SOURCES = tests/unit/test-upstream.c
tests_unit_test_upstream_CPPFLAGS = $(TEST_CPPFLAGS)
tests_unit_test_upstream_CFLAGS = $(TEST_CFLAGS)
tests_unit_test_upstream_LDADD = $(TEST_LIBS)
check_PROGRAMS += tests/integration/test-upstream-http
TESTS += tests/integration/test-upstream-http
tests_integration_test_upstream_http_SOURCES = tests/integration/test-upstream-http.c
tests_integration_test_upstream_http_CPPFLAGS = $(TEST_CPPFLAGS)
tests_integration_test_upstream_http_CFLAGS = $(TEST_CFLAGS)
tests_integration_test_upstream_http_LDADD = $(TEST_LIBS)

# Benchmark (built by make, not run by make check): bench/bench-upstream
noinst_PROGRAMS += bench/bench-upstream
bench_bench_upstream_SOURCES = bench/bench-upstream.c
bench_bench_upstream_CFLAGS = $(AM_CFLAGS) -O2
bench_bench_upstream_LDADD = libdistsys.la $(PTHREAD_LIBS)
# http registry backend (client of dsys-registryd) and the registration agent
libdsys_internal_la_SOURCES += lib/resilience/registry-http.c \
	lib/resilience/registration.c
pkginclude_HEADERS += include/distsys/registration.h
