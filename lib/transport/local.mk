# Transports (http, unix, inproc), server core and client.
libdsys_internal_la_SOURCES += \
	lib/transport/hdrs.c lib/transport/request.c lib/transport/server.c lib/transport/url.c \
	lib/transport/client.c lib/transport/http_server.c \
	lib/transport/http_client.c lib/transport/inproc.c lib/transport/h1.c \
	lib/transport/evloop.c lib/transport/h1client.c
noinst_HEADERS += lib/transport/transport.h lib/transport/url.h lib/transport/h1.h lib/transport/evloop.h lib/transport/h1client.h
# https:// (issue 10): the listener checks client certificates (mutual TLS)
# with GnuTLS (GNUTLS_LIBS, part of DEP_LIBS).
