# Services: mountable modules (auth, data, compute), their shared helpers,
# and the daemon boilerplate used by daemons/ (issue 5).
libdsys_internal_la_SOURCES += \
	lib/services/common.c lib/services/auth.c lib/services/secret.c \
	lib/services/data.c lib/services/compute.c lib/services/daemon.c
noinst_HEADERS += lib/services/common.h
pkginclude_HEADERS += include/distsys/services.h
