# Running the daemons in production: the systemd units (deploy/systemd/),
# the man pages made from each program's --help, and `make deb`.
# docs/reference/systemd.md and docs/reference/packaging.md.

# The deployment files (docs/reference/multi-host.md): the Patroni
# template that dsys-cluster --deployment fills (it looks here first), the
# three-host example, and the monitoring examples; in PREFIX/share/distsys
# (the daemons' name, not the package's).
distsysdatadir = $(datadir)/distsys
dist_distsysdata_DATA = deploy/patroni/patroni.yml.in deploy/multihost.conf \
	deploy/prometheus.yml deploy/grafana-dashboard.json

# systemd units: deploy/systemd/*.in with the real @bindir@; installed in
# --with-systemdsystemunitdir (default PREFIX/lib/systemd/system).
SYSTEMD_UNITS = deploy/systemd/dsys-registryd.service deploy/systemd/dsys-gatewayd.service \
	deploy/systemd/dsys-faultd.service deploy/systemd/dsys-authd@.service \
	deploy/systemd/dsys-datad@.service deploy/systemd/dsys-computed@.service
if HAVE_SYSTEMDUNITDIR
systemdsystemunit_DATA = $(SYSTEMD_UNITS) deploy/systemd/distsys.target
endif
noinst_DATA = $(SYSTEMD_UNITS)
CLEANFILES += $(SYSTEMD_UNITS)
$(SYSTEMD_UNITS): %: $(srcdir)/%.in Makefile
	@$(MKDIR_P) deploy/systemd
	$(AM_V_GEN)sed -e 's|@bindir[@]|$(bindir)|g' $(srcdir)/$@.in > $@.tmp && mv $@.tmp $@
# distsys.target has nothing to substitute: installed from the source tree
# (VPATH finds it).

# Man pages: made by help2man from --help (and --version) at build time, so
# the flags, variables and defaults in them are the program's own; the
# .h2m files add the sections --help does not have. Daemons in section 8,
# tools in section 1. tests/man.test checks each renders and names every
# flag; a new program in bin_PROGRAMS needs its line here (the test says so).
DAEMON_MANS = man/dsys-authd.8 man/dsys-datad.8 man/dsys-computed.8 man/dsys-gatewayd.8 \
	man/dsys-registryd.8 man/dsys-faultd.8
TOOL_MANS = man/dsys-identity.1 man/dsys-cluster.1 man/dsys-loadtest.1 \
	man/dsys-queue.1 man/dsys-registry.1
if HAVE_HELP2MAN
man_MANS = $(DAEMON_MANS) $(TOOL_MANS)
endif
CLEANFILES += $(DAEMON_MANS) $(TOOL_MANS)
EXTRA_DIST += man/daemon.h2m man/tool.h2m
man/dsys-authd.8: daemons/dsys-authd$(EXEEXT)
man/dsys-datad.8: daemons/dsys-datad$(EXEEXT)
man/dsys-computed.8: daemons/dsys-computed$(EXEEXT)
man/dsys-gatewayd.8: daemons/dsys-gatewayd$(EXEEXT)
man/dsys-registryd.8: daemons/dsys-registryd$(EXEEXT)
man/dsys-faultd.8: daemons/dsys-faultd$(EXEEXT)
man/dsys-identity.1: daemons/dsys-identity$(EXEEXT)
man/dsys-cluster.1: daemons/dsys-cluster$(EXEEXT)
man/dsys-loadtest.1: tools/dsys-loadtest$(EXEEXT)
man/dsys-queue.1: tools/dsys-queue$(EXEEXT)
man/dsys-registry.1: tools/dsys-registry$(EXEEXT)
# NAME: the summary line of --help up to its first ':', ';', '.' or '('.
$(DAEMON_MANS): $(srcdir)/man/daemon.h2m
$(TOOL_MANS): $(srcdir)/man/tool.h2m
$(DAEMON_MANS) $(TOOL_MANS):
	@$(MKDIR_P) man
	$(AM_V_GEN)sect=`echo $@ | sed 's/.*\.//'`; prog=; inc=; \
	for p in $^; do case $$p in *.h2m) inc=$$p ;; *) prog=$$p ;; esac; done; \
	name=`./$$prog --help | sed -n 2p | sed 's/[:;.(].*//; s/ *$$//'`; \
	$(HELP2MAN) --no-info --no-discard-stderr --section=$$sect --source='libdistsys' \
	  --version-string='$(PACKAGE_VERSION)' --name="$$name" --include=$$inc \
	  -o $@.tmp ./$$prog && mv $@.tmp $@
man: $(DAEMON_MANS) $(TOOL_MANS)
.PHONY: man

# make deb: the Debian packages (libdistsys0, libdistsys-dev,
# distsys-daemons, python3-distsys) from the release tree (make distdir),
# built by dpkg-buildpackage in deb/, then lintian. DEB_BUILD_OPTIONS=nocheck
# skips make check inside the package build.
# The release tree carries the packaging and the Python package (which
# python3-distsys installs and tests/python.test runs).
EXTRA_DIST += debian bindings/python
deb: distdir
	rm -rf deb && $(MKDIR_P) deb && mv $(distdir) deb/
	cd deb/$(distdir) && dpkg-buildpackage -us -uc -b
	rm -rf deb/$(distdir)
	@if command -v lintian >/dev/null; then \
	  echo "lintian --fail-on error deb/*.changes"; lintian --fail-on error deb/*.changes; \
	else echo "make deb: lintian is not installed (scripts/install-deps), not run"; fi
	@ls -1 deb/*.deb
clean-local: clean-deb
clean-deb:
	rm -rf deb
.PHONY: deb clean-deb
