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

libdsys_internal_la_SOURCES += lib/state/queue.c lib/state/queue_sqlite.c \
	lib/state/worker.c
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

# Example: a submitting process and a worker process on one file.
noinst_PROGRAMS += examples/queue-worker
examples_queue_worker_SOURCES = examples/queue-worker.c
examples_queue_worker_LDADD = libdistsys.la
TESTS += tests/state/example-queue-worker.test
EXTRA_DIST += tests/state/example-queue-worker.test bench/run-state

# Benchmarks (built by make like bench/local.mk says;
# run bench/run-state). Not run by make check.
noinst_PROGRAMS += bench/bench-store bench/bench-queue
bench_bench_store_SOURCES = bench/bench-store.c
bench_bench_store_LDADD = libdistsys.la $(PTHREAD_LIBS)
bench_bench_queue_SOURCES = bench/bench-queue.c
bench_bench_queue_LDADD = libdistsys.la $(PTHREAD_LIBS)

# Events: pub/sub with bounded queues, resume history, SSE streams (issue 7).
libdsys_internal_la_SOURCES += lib/state/events.c
pkginclude_HEADERS += include/distsys/events.h
check_PROGRAMS += tests/state/test-events
tests_state_test_events_SOURCES = tests/state/test-events.c
tests_state_test_events_CPPFLAGS = $(TEST_CPPFLAGS)
tests_state_test_events_CFLAGS = $(TEST_CFLAGS)
tests_state_test_events_LDADD = $(TEST_LIBS)
TESTS += tests/state/test-events

# Metrics: counters, gauges, histograms, Prometheus exposition (issue 7).
libdsys_internal_la_SOURCES += lib/state/metrics.c
pkginclude_HEADERS += include/distsys/metrics.h
check_PROGRAMS += tests/state/test-metrics
tests_state_test_metrics_SOURCES = tests/state/test-metrics.c
tests_state_test_metrics_CPPFLAGS = $(TEST_CPPFLAGS)
tests_state_test_metrics_CFLAGS = $(TEST_CFLAGS)
tests_state_test_metrics_LDADD = $(TEST_LIBS)
TESTS += tests/state/test-metrics
