# state: key-value store (memory and sqlite backends), durable job queue
# (sqlite backend) and workers. Uses core.
libdsys_internal_la_SOURCES += \
	lib/state/store.c lib/state/store_sqlite.c lib/state/store_mem.c \
	lib/state/queue.c lib/state/queue_sqlite.c lib/state/worker.c
noinst_HEADERS += lib/state/store_int.h lib/state/queue_int.h
pkginclude_HEADERS += include/distsys/store.h include/distsys/queue.h
