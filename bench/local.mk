# Benchmark programs: built by make, run by the bench/ scripts (never by
# make check, which must not time anything).
noinst_PROGRAMS += bench/bench-server
bench_bench_server_SOURCES = bench/bench-server.c
bench_bench_server_CFLAGS = $(AM_CFLAGS) $(MHD_CFLAGS)
bench_bench_server_LDADD = libdistsys.la $(MHD_LIBS)
EXTRA_DIST += bench/run-transport
EXTRA_DIST += bench/run-gateway bench/ab-gateway bench/proxy-common.sh bench/read-gap
EXTRA_DIST += bench/run-fullstack bench/run-all
EXTRA_DIST += bench/python-memory.py
# Service identity: issue, first verify, cached verify.
noinst_PROGRAMS += bench/bench-identity
bench_bench_identity_SOURCES = bench/bench-identity.c
bench_bench_identity_LDADD = libdistsys.la
