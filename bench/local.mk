# Benchmark programs: built by make, run by the bench/ scripts (never by
# make check, which must not time anything).
noinst_PROGRAMS += bench/bench-server bench/bench-identity bench/bench-store \
	bench/bench-queue bench/bench-resil bench/bench-upstream bench/bench-locks bench/bench-cache \
	bench/bench-sqlite-ceiling
bench_bench_server_SOURCES = bench/bench-server.c
bench_bench_server_CFLAGS = $(AM_CFLAGS) $(MHD_CFLAGS)
bench_bench_server_LDADD = libdistsys.la $(MHD_LIBS)
bench_bench_identity_SOURCES = bench/bench-identity.c
bench_bench_identity_LDADD = libdistsys.la
bench_bench_store_SOURCES = bench/bench-store.c
bench_bench_store_CFLAGS = $(AM_CFLAGS) $(SQLITE_CFLAGS)
bench_bench_store_LDADD = libdistsys.la $(SQLITE_LIBS) $(PTHREAD_LIBS)
bench_bench_queue_SOURCES = bench/bench-queue.c
bench_bench_queue_LDADD = libdistsys.la $(PTHREAD_LIBS)
bench_bench_resil_SOURCES = bench/bench-resil.c
bench_bench_resil_CFLAGS = $(AM_CFLAGS) -O2
bench_bench_resil_LDADD = libdistsys.la $(PTHREAD_LIBS)
bench_bench_sqlite_ceiling_SOURCES = bench/bench-sqlite-ceiling.c
bench_bench_sqlite_ceiling_CFLAGS = $(AM_CFLAGS) $(SQLITE_CFLAGS)
bench_bench_sqlite_ceiling_LDADD = $(SQLITE_LIBS)
bench_bench_locks_SOURCES = bench/bench-locks.c
bench_bench_locks_LDADD = libdistsys.la $(PTHREAD_LIBS)
bench_bench_cache_SOURCES = bench/bench-cache.c
bench_bench_cache_LDADD = libdistsys.la
bench_bench_upstream_SOURCES = bench/bench-upstream.c
bench_bench_upstream_CFLAGS = $(AM_CFLAGS) -O2
bench_bench_upstream_LDADD = libdistsys.la $(PTHREAD_LIBS)
EXTRA_DIST += bench/run-transport bench/run-state bench/run-gateway bench/ab-gateway bench/run-conn-flood \
	bench/run-python-service bench/python_service_app.py \
	bench/proxy-common.sh bench/read-gap bench/run-fullstack bench/run-all \
	bench/python-memory.py bench/run-locks bench/run-cache bench/run-jobs-http
