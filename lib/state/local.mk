# state: key-value store and durable job queue (front ends and their
# built-in backends, which register themselves) and workers. Uses core.
libdsys_internal_la_SOURCES += \
	lib/state/store.c lib/state/queue.c lib/state/worker.c
DSYS_PLUGIN_SOURCES += lib/state/store_sqlite.c lib/state/store_memory.c \
	lib/state/queue_sqlite.c lib/state/queue_pg.c
noinst_HEADERS += lib/state/store_int.h lib/state/queue_int.h
pkginclude_HEADERS += include/distsys/store.h include/distsys/queue.h
