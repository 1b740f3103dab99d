# resilience: registry (generic layer and the memory, sqlite, http,
# postgresql and etcd backends), registration agent, balancers, health
# checks and outlier detection, breakers, retry policy, and dsys_upstream.
# Uses core, security and transport.
libdsys_internal_la_SOURCES += \
	lib/resilience/breaker.c lib/resilience/balancer.c \
	lib/resilience/retry.c lib/resilience/health.c \
	lib/resilience/registry.c lib/resilience/registry_table.c \
	lib/resilience/registry_rows.c \
	lib/resilience/registration.c lib/resilience/upstream.c
DSYS_PLUGIN_SOURCES += lib/resilience/registry_memory.c \
	lib/resilience/registry_sqlite.c lib/resilience/registry_http.c \
	lib/resilience/registry_pg.c lib/resilience/registry_etcd.c
noinst_HEADERS += lib/resilience/registry_int.h lib/resilience/registry_table.h \
	lib/resilience/upstream_int.h lib/resilience/retry.h \
	lib/resilience/shared_cause.h
pkginclude_HEADERS += include/distsys/breaker.h include/distsys/balancer.h \
	include/distsys/retry.h include/distsys/health.h \
	include/distsys/registry.h include/distsys/registration.h \
	include/distsys/upstream.h
