# services (see issues): sources are appended here.

# registry service module (the registry daemon's HTTP API)
libdsys_internal_la_SOURCES += lib/services/registry.c
pkginclude_HEADERS += include/distsys/registry_service.h
