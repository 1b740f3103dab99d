# state: key-value store, durable job queue, lease locks and the cache (front ends and their
# built-in backends, which register themselves) and workers. Uses core.
libdsys_internal_la_SOURCES += \
	lib/state/store.c lib/state/queue.c lib/state/worker.c lib/state/lock.c \
	lib/state/cache.c
DSYS_PLUGIN_SOURCES += lib/state/store_sqlite.c lib/state/store_memory.c \
	lib/state/queue_sqlite.c lib/state/queue_pg.c lib/state/store_pg.c \
	lib/state/lock_memory.c lib/state/lock_sqlite.c lib/state/lock_pg.c \
	lib/state/lock_etcd.c
noinst_HEADERS += lib/state/store_int.h lib/state/queue_int.h
pkginclude_HEADERS += include/distsys/store.h include/distsys/queue.h \
	include/distsys/lock.h include/distsys/cache.h
