# security: password hashing and JWT primitives, the JWT secret, service
# identities (key pairs, ES256 tokens, the verifier). Uses core.
libdsys_internal_la_SOURCES += \
	lib/security/crypto.c lib/security/secret.c lib/security/identity.c
noinst_HEADERS += lib/security/crypto.h lib/security/identity_int.h
pkginclude_HEADERS += include/distsys/auth.h include/distsys/identity.h
