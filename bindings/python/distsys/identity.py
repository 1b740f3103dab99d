"""Service identity (``<distsys/identity.h>``): ES256 identity tokens that
let instances prove who they are to the registry and to each other.

One ECDSA P-256 key pair per deployment: the issuer keeps the private key
(:func:`identity_keygen`, :func:`identity_issue`,
:func:`identity_issue_file`); an instance holds its own token
(:class:`Identity`, which follows its token file) and sends it in the
``X-Dsys-Identity`` header (:data:`IDENTITY_HEADER`); verifiers hold only
the public key (:class:`IdentityVerifier`). See docs/reference/identity.md
for the trust model.
"""
from __future__ import annotations

import os
from ctypes import byref, c_int, c_void_p, sizeof
from typing import Any, Dict, Optional, Union

from . import _check, _lib, errors
from ._handle import attach, Handle

__all__ = ["IDENTITY_HEADER", "IDENTITY_TOKEN_MAX", "identity_keygen",
           "identity_issue", "identity_issue_file", "Identity",
           "IdentityVerifier"]

#: The request header that carries an identity token.
IDENTITY_HEADER: str = _lib.IDENTITY_HEADER
#: Longest accepted identity token in bytes.
IDENTITY_TOKEN_MAX: int = _lib.IDENTITY_TOKEN_MAX

_EINVAL = -1
_EAUTH = -20

PathArg = Union[str, "os.PathLike[str]", bytes]


_path = _check.path
_text = _check.text


def _token(t: Union[str, bytes], code: int) -> bytes:
    if isinstance(t, str):
        b = t.encode()
    elif isinstance(t, (bytes, bytearray)):
        b = bytes(t)
    else:
        raise TypeError(f"token must be str or bytes, not {type(t).__name__}")
    if b"\0" in b:  # C would see only the part before it
        errors.raise_for(code, "token contains a NUL byte")
    return b


def _issue_opts(lifetime_s: Optional[int]) -> Any:
    return _lib.dsys_identity_issue_options(
        size=sizeof(_lib.dsys_identity_issue_options),
        lifetime_s=0 if lifetime_s is None else _check.integer(lifetime_s, "lifetime_s"))


def identity_keygen(key_file: PathArg, pub_file: PathArg) -> bool:
    """Create the deployment's key pair unless ``key_file`` exists: a P-256
    private key (PEM, PKCS#8, mode 0600) in ``key_file`` and its public key
    (PEM, mode 0644) in ``pub_file``. When the key exists, ``pub_file`` is
    rewritten from it if missing or different. Returns True when this call
    created the key. Racing callers (threads or processes) end with one key.

    Raises InvalidArgumentError (empty path), IoError (a file cannot be
    read or written, or ``key_file`` is not an ECDSA private key)."""
    k, p = _path(key_file, "key_file"), _path(pub_file, "pub_file")
    created = c_int()
    errors.raise_for(_lib.dsys_identity_keygen(k, p, byref(created)),
                     f"key {os.fsdecode(k)!r}, public key {os.fsdecode(p)!r}")
    return bool(created.value)


def identity_issue(key_file: PathArg, instance: str, service: str,
                   lifetime_s: Optional[int] = None) -> str:
    """A signed identity token (ES256 JWT) for ``instance`` (the claim
    "sub", 1..127 printable ASCII bytes, no spaces) of type ``service``
    ("svc", 1..63), valid for ``lifetime_s`` seconds (None or 0: the
    library's default, 86400).

    Raises InvalidArgumentError (bad name, negative lifetime), IoError
    (``key_file`` unreadable or not a private key)."""
    k = _path(key_file, "key_file")
    o = _issue_opts(lifetime_s)
    out = c_void_p()
    errors.raise_for(_lib.dsys_identity_issue(
        k, _text(instance, "instance"), _text(service, "service"), byref(o),
        byref(out)))
    return _lib.take_string(out.value)  # type: ignore[return-value]


def identity_issue_file(key_file: PathArg, instance: str, service: str,
                        token_file: PathArg,
                        lifetime_s: Optional[int] = None) -> None:
    """Issue a token as :func:`identity_issue` and write it (and a newline)
    to ``token_file``, mode 0600, replacing an existing file atomically: an
    :class:`Identity` following the file sees the old token or the new one,
    never a mix. Raises as :func:`identity_issue`; IoError also when the
    file cannot be written."""
    k = _path(key_file, "key_file")
    t = _path(token_file, "token_file")
    o = _issue_opts(lifetime_s)
    errors.raise_for(_lib.dsys_identity_issue_file(
        k, _text(instance, "instance"), _text(service, "service"), byref(o), t))


class Identity(Handle):
    """An instance's own credential: the identity token it presents.

    ``Identity.open(token_file)`` reads a token file (as written by
    :func:`identity_issue_file`) and follows it: when :meth:`token` is
    called, the file is checked at most every ``reload_ms`` (None or 0: the
    library's default, 1000 ms) and reread when it changed. A file that
    becomes unreadable or garbage keeps the last good token (the library
    logs a warning). ``Identity.fixed(token)`` holds one token, never
    reloaded. The token is not verified here (the instance need not hold
    the public key), only checked to look like a JWT.

    Thread-safe; no callbacks. Use it as a context manager or call
    ``close()``; an unreferenced Identity is closed by the garbage
    collector.

    Example::

        with distsys.Identity.open("/run/dsys/data-1.token") as me:
            up.call("GET", "/x", headers={distsys.IDENTITY_HEADER: me.token()})
    """

    token_file: Optional[str]

    def __init__(self, token_file: Optional[PathArg] = None, *,
                 token: Optional[Union[str, bytes]] = None,
                 reload_ms: Optional[int] = None) -> None:
        """Prefer :meth:`open` or :meth:`fixed`: exactly one of
        ``token_file`` and ``token`` is given."""
        if (token_file is None) == (token is None):
            raise TypeError("Identity: give exactly one of token_file and token")
        h = c_void_p()
        if token_file is not None:
            p = _path(token_file, "token_file")
            o = _lib.dsys_identity_options(
                size=sizeof(_lib.dsys_identity_options),
                reload_ms=0 if reload_ms is None else _check.integer(reload_ms, "reload_ms"))
            errors.raise_for(_lib.dsys_identity_open(byref(h), p, byref(o)),
                             f"token file {os.fsdecode(p)!r}")
            self.token_file = os.fsdecode(p)
        else:
            if reload_ms is not None:
                raise TypeError("Identity: reload_ms applies to a token file only")
            errors.raise_for(_lib.dsys_identity_new(
                byref(h), _token(token, _EINVAL)))  # type: ignore[arg-type]
            self.token_file = None
        self._life, self._fin = attach(self, h.value, _lib.dsys_identity_free)

    @classmethod
    def open(cls, token_file: PathArg, reload_ms: Optional[int] = None) -> "Identity":
        """A credential following ``token_file``. Raises IoError (missing
        or unreadable file), InvalidArgumentError (empty, larger than
        IDENTITY_TOKEN_MAX or not a token; negative ``reload_ms``)."""
        return cls(token_file, reload_ms=reload_ms)

    @classmethod
    def fixed(cls, token: Union[str, bytes]) -> "Identity":
        """A credential holding one token (InvalidArgumentError when it
        does not look like a JWT)."""
        return cls(token=token)

    def __repr__(self) -> str:  # never shows the token: it is a credential
        what = "fixed" if self.token_file is None else repr(self.token_file)
        return f"<distsys.Identity {what}{' closed' if self.closed else ''}>"

    def token(self) -> str:
        """The current token (after a reload check of the file)."""
        out = c_void_p()
        self._call(_lib.dsys_identity_token, byref(out))
        return _lib.take_string(out.value)  # type: ignore[return-value]


class IdentityVerifier(Handle):
    """Verifies identity tokens with the deployment's public key.

    Verification pins the algorithm to ES256 ("none", HMAC keyed with the
    public key, or any other algorithm is refused) and checks the
    signature, "exp", "nbf" (if present) and "use". Verified tokens are
    cached by digest until they expire, so repeated checks of a peer's
    token cost one hash.

    Thread-safe; no callbacks. Use it as a context manager or call
    ``close()``.

    Example::

        with distsys.IdentityVerifier("/etc/dsys/identity.pub") as v:
            peer = v.verify(request.headers[distsys.IDENTITY_HEADER])
            print(peer["instance"], peer["service"], peer["expires_s"])
    """

    def __init__(self, pub_file: PathArg) -> None:
        """Raises IoError (unreadable), InvalidArgumentError (not an ECDSA
        public key), at once rather than at the first verify."""
        p = _path(pub_file, "pub_file")
        h = c_void_p()
        errors.raise_for(_lib.dsys_identity_verifier_new(byref(h), p, None),
                         f"public key {os.fsdecode(p)!r}")
        self.pub_file = os.fsdecode(p)
        self._life, self._fin = attach(self, h.value,
                                       _lib.dsys_identity_verifier_free)

    def __repr__(self) -> str:
        return (f"<distsys.IdentityVerifier {self.pub_file!r}"
                f"{' closed' if self.closed else ''}>")

    def verify(self, token: Union[str, bytes]) -> Dict[str, Any]:
        """The claims of a valid identity token of this deployment:
        ``{"instance": ..., "service": ..., "expires_s": ...}`` (exp in
        Unix seconds). Raises AuthError for anything else (bad signature,
        another key pair, wrong algorithm, expired, malformed)."""
        c = _lib.dsys_identity_claims()
        self._call(_lib.dsys_identity_verify, _token(token, _EAUTH), byref(c))
        return {"instance": c.instance.decode(), "service": c.service.decode(),
                "expires_s": c.expires_s}
