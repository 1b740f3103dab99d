# observe: events (pub/sub, resume history, SSE streams) and metrics
# (counters, gauges, histograms, Prometheus exposition). Uses core and
# transport (they serve routes).
libdsys_internal_la_SOURCES += lib/observe/events.c lib/observe/metrics.c
pkginclude_HEADERS += include/distsys/events.h include/distsys/metrics.h
noinst_HEADERS += lib/observe/metrics.h
