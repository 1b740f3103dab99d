# core: errors, logging, clock and timers, JSON helpers, config, utilities,
# SQLite and file helpers. Uses no other layer.
libdsys_internal_la_SOURCES += \
	lib/core/error.c lib/core/log.c lib/core/clock.c lib/core/json.c \
	lib/core/config.c lib/core/util.c lib/core/db.c lib/core/file.c \
	lib/core/plugin.c
noinst_HEADERS += lib/core/internal.h lib/core/json.h lib/core/db.h lib/core/rng.h \
	lib/core/plugin.h lib/core/config.h
pkginclude_HEADERS += include/distsys/distsys.h include/distsys/common.h \
	include/distsys/log.h include/distsys/clock.h include/distsys/util.h \
	include/distsys/config.h
