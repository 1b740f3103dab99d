# Daemons: thin mains over the service modules on the daemon shell
# (dsys_daemon_main in lib/services/daemon.c), the supervisor of the
# reference deployment, and the tools.
bin_PROGRAMS += daemons/dsys-authd daemons/dsys-datad daemons/dsys-computed \
	daemons/dsys-gatewayd daemons/dsys-registryd daemons/dsys-faultd \
	daemons/dsys-identity daemons/dsys-cluster tools/dsys-loadtest
daemons_dsys_authd_SOURCES = daemons/dsys-authd.c
daemons_dsys_authd_LDADD = libdistsys.la
daemons_dsys_datad_SOURCES = daemons/dsys-datad.c
daemons_dsys_datad_LDADD = libdistsys.la
daemons_dsys_computed_SOURCES = daemons/dsys-computed.c daemons/leader.h
daemons_dsys_computed_LDADD = libdistsys.la
daemons_dsys_gatewayd_SOURCES = daemons/dsys-gatewayd.c
daemons_dsys_gatewayd_LDADD = libdistsys.la
daemons_dsys_registryd_SOURCES = daemons/dsys-registryd.c
daemons_dsys_registryd_LDADD = libdistsys.la
daemons_dsys_faultd_SOURCES = daemons/dsys-faultd.c daemons/leader.h
daemons_dsys_faultd_LDADD = libdistsys.la
daemons_dsys_identity_SOURCES = daemons/dsys-identity.c
daemons_dsys_identity_LDADD = libdistsys.la
daemons_dsys_cluster_SOURCES = daemons/dsys-cluster.c daemons/cluster-tls.c daemons/cluster-tls.h
daemons_dsys_cluster_LDADD = libdistsys.la $(GNUTLS_LIBS)
# where make install puts the deployment files (deploy/local.mk): the
# Patroni template of --deployment
daemons_dsys_cluster_CPPFLAGS = $(AM_CPPFLAGS) -DDSYS_DATADIR='"$(datadir)/distsys"'
# dsys-loadtest: the load generator; a client program, so it uses libcurl
# directly. See docs/reference/loadtest.md.
tools_dsys_loadtest_SOURCES = tools/dsys-loadtest.c tools/loadtest-hist.c tools/loadtest-hist.h
tools_dsys_loadtest_CFLAGS = $(AM_CFLAGS) $(CURL_CFLAGS)
tools_dsys_loadtest_LDADD = libdistsys.la $(CURL_LIBS) -lm
# dsys-queue and dsys-registry: operator tools over the public queue and
# registry APIs. See docs/reference/queue.md and registry-service.md.
bin_PROGRAMS += tools/dsys-queue tools/dsys-registry
tools_dsys_queue_SOURCES = tools/dsys-queue.c tools/cli-util.c tools/cli-util.h
tools_dsys_queue_LDADD = libdistsys.la
tools_dsys_registry_SOURCES = tools/dsys-registry.c tools/cli-util.c tools/cli-util.h
tools_dsys_registry_LDADD = libdistsys.la
