# transport: the request object, router and server core, the client, and
# the transports (http and https over libmicrohttpd and libcurl plus the
# in-loop HTTP/1.1 client, unix, inproc). Uses core.
libdsys_internal_la_SOURCES += \
	lib/transport/hdrs.c lib/transport/request.c lib/transport/server.c lib/transport/url.c \
	lib/transport/client.c lib/transport/h1.c lib/transport/evloop.c \
	lib/transport/identity_guard.c
# The listeners and dialers register themselves (transport.h).
DSYS_PLUGIN_SOURCES += lib/transport/http_server.c lib/transport/http_client.c \
	lib/transport/inproc.c lib/transport/h1client.c
noinst_HEADERS += lib/transport/transport.h lib/transport/url.h lib/transport/h1.h \
	lib/transport/evloop.h lib/transport/h1client.h lib/transport/identity_guard.h \
	lib/transport/inproc.h
pkginclude_HEADERS += include/distsys/server.h include/distsys/client.h
