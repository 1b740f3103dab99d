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
