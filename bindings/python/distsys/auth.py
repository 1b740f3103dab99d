"""Password hashing and JSON Web Tokens (``<distsys/auth.h>``): the same
functions the auth service uses."""
from __future__ import annotations

import json
from ctypes import byref, c_void_p, sizeof
from typing import Any, Dict, Optional, Union

from . import _check, _lib, errors

__all__ = ["hash_password", "verify_password", "issue_token", "verify_token"]

_EAUTH = -20


def hash_password(password: str, prefix: Optional[str] = None) -> str:
    """A salted hash of password in crypt(3) format: yescrypt ("$y$", the
    default) or e.g. bcrypt ("$2b$"). Slow on purpose (tens of ms); the GIL
    is released meanwhile. InvalidArgumentError for a password over 1024
    bytes or an unsupported prefix."""
    out = c_void_p()
    errors.raise_for(_lib.dsys_password_hash(
        _check.text(password, "password"), _check.opt_text(prefix, "prefix"), byref(out)))
    return _lib.take_string(out.value)  # type: ignore[return-value]


def verify_password(password: str, hashed: str) -> bool:
    """True when password matches hashed (constant-time comparison); False
    when it does not or the hash is malformed."""
    rc = _lib.dsys_password_verify(_check.text(password, "password"),
                                   _check.text(hashed, "hashed"))
    if rc == _EAUTH:
        return False
    errors.raise_for(rc)
    return True


def _key(secret: Union[bytes, str]) -> bytes:
    return _check.blob(secret, "secret")


def _opts(alg: str, lifetime_s: int) -> Any:
    return _lib.dsys_token_options(size=sizeof(_lib.dsys_token_options),
                                   alg=_check.text(alg, "alg"),
                                   lifetime_s=_check.integer(lifetime_s, "lifetime_s"))


def issue_token(secret: Union[bytes, str], claims: Optional[Dict[str, Any]] = None,
                *, alg: str = "HS256", lifetime_s: int = 86400) -> str:
    """A JWT signed with HMAC (alg "HS256", "HS384" or "HS512") carrying
    claims plus "iat" and "exp" (= iat + lifetime_s). The secret must be
    32..4096 bytes (InvalidArgumentError)."""
    k = _key(secret)
    out = c_void_p()
    cj = _check.json_object(claims, "claims")
    errors.raise_for(_lib.dsys_token_issue(k, len(k), cj, byref(_opts(alg, lifetime_s)),
                                           byref(out)))
    return _lib.take_string(out.value)  # type: ignore[return-value]


def verify_token(secret: Union[bytes, str], token: str, *,
                 alg: str = "HS256") -> Dict[str, Any]:
    """The claims of a valid token. Raises AuthError when the signature is
    wrong, the algorithm is not exactly ``alg`` (e.g. "none"), or the token
    is expired, not yet valid or malformed."""
    k = _key(secret)
    out = c_void_p()
    errors.raise_for(_lib.dsys_token_verify(k, len(k), _check.text(token, "token"),
                                            byref(_opts(alg, 0)), byref(out)))
    claims: Dict[str, Any] = json.loads(_lib.take_string(out.value) or "{}")
    return claims
