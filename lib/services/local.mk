# services: mountable modules (registry, auth, data, compute, gateway and
# its edge, fault detector), what they share (svc: health, readiness and
# slow-work routes; reply: JSON answers and bodies) and the daemon shell.
libdsys_internal_la_SOURCES += \
	lib/services/svc.c lib/services/reply.c lib/services/auth.c \
	lib/services/data.c lib/services/compute.c lib/services/daemon.c \
	lib/services/gateway.c lib/services/edge.c lib/services/registry_service.c \
	lib/services/faultd.c
noinst_HEADERS += lib/services/svc.h lib/services/reply.h lib/services/edge.h
pkginclude_HEADERS += include/distsys/services.h include/distsys/gateway.h \
	include/distsys/registry_service.h include/distsys/faultd.h

# The fault detector's dashboard: dashboard/index.html is embedded into the
# library as a C string by a POSIX od/sed script (no xxd, no build
# compiler). The generated source lives in the build tree (out-of-tree and
# distcheck builds work; it is not distributed).
nodist_libdsys_internal_la_SOURCES += lib/services/dashboard_html.c
EXTRA_DIST += dashboard/index.html lib/services/embed_file.sh
CLEANFILES += lib/services/dashboard_html.c
lib/services/dashboard_html.c: $(top_srcdir)/dashboard/index.html $(top_srcdir)/lib/services/embed_file.sh
	@$(MKDIR_P) lib/services
	$(AM_V_GEN)$(SHELL) $(top_srcdir)/lib/services/embed_file.sh dsysi_dashboard_html \
	  $(top_srcdir)/dashboard/index.html > $@.tmp && mv $@.tmp $@
