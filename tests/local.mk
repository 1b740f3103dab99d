# Tests. C programs speak TAP (tests/helpers/tap.h). Each area appends its
# programs to check_PROGRAMS and TESTS.
check_LTLIBRARIES += libdsys_testutil.la
libdsys_testutil_la_SOURCES = tests/helpers/tap.c tests/helpers/tap.h
libdsys_testutil_la_CPPFLAGS = $(TEST_CPPFLAGS)
libdsys_testutil_la_CFLAGS = $(TEST_CFLAGS)
EXTRA_DIST += tests/helpers/run-test tests/headers.test

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
