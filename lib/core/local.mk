# core: errors, logging, clock and timers, JSON helpers, config, SQLite,
# PostgreSQL, etcd and file helpers, and small utilities one topic a file, each with the header
# of its name (core/internal.h includes the common ones). Uses no other
# layer.
libdsys_internal_la_SOURCES += \
	lib/core/error.c lib/core/log.c lib/core/clock.c lib/core/json.c \
	lib/core/config.c lib/core/db.c lib/core/file.c lib/core/plugin.c \
	lib/core/base64.c lib/core/buf.c lib/core/ct_equal.c lib/core/lock.c \
	lib/core/pool.c lib/core/proc.c lib/core/random.c lib/core/str.c \
	lib/core/ticker.c lib/core/pg.c lib/core/group.c lib/core/etcd.c
noinst_HEADERS += lib/core/internal.h lib/core/json.h lib/core/db.h lib/core/rng.h \
	lib/core/buf.h lib/core/file.h lib/core/lock.h lib/core/log.h \
	lib/core/pool.h lib/core/proc.h lib/core/random.h lib/core/str.h \
	lib/core/ticker.h lib/core/plugin.h lib/core/config.h \
	lib/core/pg.h lib/core/base64.h lib/core/group.h lib/core/etcd.h lib/core/clock_hook.h
pkginclude_HEADERS += include/distsys/distsys.h include/distsys/common.h \
	include/distsys/log.h include/distsys/clock.h include/distsys/util.h \
	include/distsys/config.h
