# State: key-value store, durable job queue and workers (issue 4).
libdsys_internal_la_SOURCES += \
	lib/state/store.c lib/state/store_sqlite.c lib/state/store_mem.c
noinst_HEADERS += lib/state/state.h
pkginclude_HEADERS += include/distsys/store.h

check_PROGRAMS += tests/state/test-store
tests_state_test_store_SOURCES = tests/state/test-store.c
tests_state_test_store_CPPFLAGS = $(TEST_CPPFLAGS)
tests_state_test_store_CFLAGS = $(TEST_CFLAGS)
tests_state_test_store_LDADD = $(TEST_LIBS)
TESTS += tests/state/test-store

libdsys_internal_la_SOURCES += lib/state/queue.c lib/state/worker.c
noinst_HEADERS += lib/state/queue_int.h
pkginclude_HEADERS += include/distsys/queue.h

check_PROGRAMS += tests/state/test-queue
tests_state_test_queue_SOURCES = tests/state/test-queue.c
tests_state_test_queue_CPPFLAGS = $(TEST_CPPFLAGS)
tests_state_test_queue_CFLAGS = $(TEST_CFLAGS)
tests_state_test_queue_LDADD = $(TEST_LIBS)
TESTS += tests/state/test-queue

check_PROGRAMS += tests/state/test-state-crash
tests_state_test_state_crash_SOURCES = tests/state/test-state-crash.c
tests_state_test_state_crash_CPPFLAGS = $(TEST_CPPFLAGS)
tests_state_test_state_crash_CFLAGS = $(TEST_CFLAGS)
tests_state_test_state_crash_LDADD = $(TEST_LIBS)
TESTS += tests/state/test-state-crash
