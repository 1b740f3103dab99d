"""Service identity: key pairs, ES256 identity tokens, credentials that
follow their token file, and verification (<distsys/identity.h>)."""
import base64
import gc
import json
import os
import stat
import threading
import time

import pytest

import distsys
from conftest import rss_kib


@pytest.fixture
def keys(tmp_path):
    key, pub = str(tmp_path / "id.key"), str(tmp_path / "id.pub")
    assert distsys.identity_keygen(key, pub) is True
    return key, pub


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def wait_for(pred, timeout=5.0):
    """Poll pred (bounded); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.01)


def test_header_constants():
    assert distsys.IDENTITY_HEADER == "X-Dsys-Identity"
    assert distsys.IDENTITY_TOKEN_MAX == 4096
    for n in ("identity_keygen", "identity_issue", "identity_issue_file",
              "Identity", "IdentityVerifier", "IDENTITY_HEADER"):
        assert n in distsys.__all__


def test_keygen_creates_files_with_modes(tmp_path):
    key, pub = tmp_path / "k.pem", tmp_path / "p.pem"
    old = os.umask(0o077)  # the modes are exact, whatever the umask
    try:
        assert distsys.identity_keygen(key, pub) is True  # os.PathLike works
    finally:
        os.umask(old)
    assert mode(key) == 0o600 and mode(pub) == 0o644
    assert "PRIVATE KEY" in key.read_text() and "PUBLIC KEY" in pub.read_text()
    k1, p1 = key.read_bytes(), pub.read_bytes()
    # an existing key is kept; the public key is rewritten from it
    assert distsys.identity_keygen(str(key), str(pub)) is False
    assert key.read_bytes() == k1
    pub.unlink()
    assert distsys.identity_keygen(str(key), str(pub)) is False
    assert pub.read_bytes() == p1 and mode(pub) == 0o644
    pub.write_text("stale")
    assert distsys.identity_keygen(str(key), str(pub)) is False
    assert pub.read_bytes() == p1


def test_issue_and_verify_roundtrip(keys):
    key, pub = keys
    now = time.time()
    tok = distsys.identity_issue(key, "data-1", "data", lifetime_s=60)
    assert isinstance(tok, str) and tok.count(".") == 2
    with distsys.IdentityVerifier(pub) as v:
        c = v.verify(tok)
        assert c["instance"] == "data-1" and c["service"] == "data"
        assert now + 55 <= c["expires_s"] <= now + 65
        assert v.verify(tok) == c                      # cached path
        assert v.verify(tok.encode()) == c             # bytes accepted
        d = v.verify(distsys.identity_issue(key, "gw", "gateway"))
        assert d["instance"] == "gw" and d["service"] == "gateway"
        assert now + 86400 - 5 <= d["expires_s"] <= now + 86400 + 5  # default
        # longest names
        long = distsys.identity_issue(key, "i" * 127, "s" * 63)
        c = v.verify(long)
        assert c["instance"] == "i" * 127 and c["service"] == "s" * 63
        assert "id.pub" in repr(v)
    assert v.closed
    with pytest.raises(distsys.ClosedError):
        v.verify(tok)
    v.close()  # idempotent


def test_tampered_and_forged_tokens_raise_auth_error(keys):
    key, pub = keys
    tok = distsys.identity_issue(key, "data-1", "data")
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    with distsys.IdentityVerifier(pub) as v:
        v.verify(tok)
        bad_sig = s[:10] + ("A" if s[10] != "A" else "B") + s[11:]
        other_sub = b64(dict(claims, sub="data-2"))
        for t in (f"{h}.{p}.{bad_sig}",                 # signature changed
                  f"{h}.{other_sub}.{s}",               # claims changed
                  f"{h}.{p}.",                          # signature removed
                  b64({"alg": "none", "typ": "JWT"}) + "." + p + ".",
                  "garbage", "", "a.b.c", tok + "x",
                  tok + "\0trailing", tok[:20] + "\0" + tok[20:]):
            with pytest.raises(distsys.AuthError):
                v.verify(t)
        # algorithm confusion: HS256 keyed with the (public) public key
        with open(pub, "rb") as f:
            pem = f.read()
        forged = distsys.issue_token(pem, dict(claims, sub="rogue"))
        with pytest.raises(distsys.AuthError):
            v.verify(forged)
        # a valid JWT that is not an identity token
        plain = distsys.issue_token(b"k" * 32, {"sub": "data-1", "svc": "data"})
        with pytest.raises(distsys.AuthError):
            v.verify(plain)
        v.verify(tok)  # still fine
        with pytest.raises(TypeError):
            v.verify(None)


def test_token_from_another_key_pair_raises(keys, tmp_path):
    key, pub = keys
    key2, pub2 = str(tmp_path / "other.key"), str(tmp_path / "other.pub")
    assert distsys.identity_keygen(key2, pub2)
    t2 = distsys.identity_issue(key2, "data-1", "data")
    with distsys.IdentityVerifier(pub) as v, distsys.IdentityVerifier(pub2) as v2:
        assert v2.verify(t2)["instance"] == "data-1"
        with pytest.raises(distsys.AuthError) as ei:
            v.verify(t2)
        assert ei.value.name == "DSYS_EAUTH"
        with pytest.raises(distsys.AuthError):
            v2.verify(distsys.identity_issue(key, "data-1", "data"))


def test_expired_token_raises(keys):
    key, pub = keys
    tok = distsys.identity_issue(key, "data-1", "data", lifetime_s=1)
    with distsys.IdentityVerifier(pub) as v:
        v.verify(tok)  # cached until it expires, then refused

        def refused():
            try:
                v.verify(tok)
            except distsys.AuthError:
                return True
            return False
        assert wait_for(refused, timeout=5.0)


def test_identity_open_follows_rewritten_file(keys, tmp_path):
    key, pub = keys
    tf = str(tmp_path / "data-1.token")
    distsys.identity_issue_file(key, "data-1", "data", tf, lifetime_s=600)
    assert mode(tf) == 0o600
    with open(tf) as f:
        on_disk = f.read()
    assert on_disk.endswith("\n")
    with distsys.IdentityVerifier(pub) as v, \
            distsys.Identity.open(tf, reload_ms=1) as me:
        t1 = me.token()
        assert t1 == on_disk.strip()
        assert v.verify(t1)["instance"] == "data-1"
        assert me.token_file == tf and t1 not in repr(me)
        # the issuer rewrites the file (atomically): picked up after reload_ms
        distsys.identity_issue_file(key, "data-1b", "data", tf)
        t2 = wait_for(lambda: (lambda t: t if t != t1 else None)(me.token()))
        assert t2, "the rewritten token file was not reloaded"
        assert v.verify(t2)["instance"] == "data-1b"
        # garbage in the file: the last good token is kept
        with open(tf, "w") as f:
            f.write("not a token at all\n")
        time.sleep(0.05)
        assert me.token() == t2
        # a fixed credential never follows a file
        fixed = distsys.Identity.fixed(t2)
        distsys.identity_issue_file(key, "data-1c", "data", tf)
        assert wait_for(lambda: v.verify(me.token())["instance"] == "data-1c")
        time.sleep(0.05)
        assert fixed.token() == t2 and "fixed" in repr(fixed)
        assert fixed.token_file is None
        fixed.close()
        with pytest.raises(distsys.ClosedError):
            fixed.token()
    with pytest.raises(distsys.ClosedError):
        me.token()


def test_default_reload_interval_is_not_every_call(keys, tmp_path):
    key, _ = keys
    tf = tmp_path / "t.token"
    distsys.identity_issue_file(key, "a", "data", tf)
    with distsys.Identity.open(tf) as me:  # reload_ms default 1000
        t1 = me.token()
        distsys.identity_issue_file(key, "b", "data", tf)
        assert me.token() == t1  # checked again only after about a second


def test_bad_inputs_raise_invalid_argument(keys, tmp_path):
    key, pub = keys
    tok = distsys.identity_issue(key, "data-1", "data")
    tf = str(tmp_path / "t.token")
    bad_names = ["", "has space", "x" * 128, "d\u00e4ta", "tab\t", "nul\0x"]
    for name in bad_names:
        with pytest.raises(distsys.InvalidArgumentError):
            distsys.identity_issue(key, name, "data")
        with pytest.raises(distsys.InvalidArgumentError):
            distsys.identity_issue_file(key, name, "data", tf)
    for svc in ["", "s" * 64, "a b", "nul\0x"]:
        with pytest.raises(distsys.InvalidArgumentError):
            distsys.identity_issue(key, "data-1", svc)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.identity_issue(key, "data-1", "data", lifetime_s=-1)
    assert not os.path.exists(tf)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.identity_keygen("", pub)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.identity_keygen(key, "")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.identity_keygen(key + "\0x", pub)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.identity_issue_file(key, "data-1", "data", "")
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError
        distsys.Identity.fixed("not a token")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Identity.fixed("a.b.c\r\nX-Evil: 1")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Identity.fixed(tok + "\0")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Identity.fixed("x" * 4095 + ".a.b")  # over IDENTITY_TOKEN_MAX
    with open(tf, "w") as f:
        f.write("garbage\n")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Identity.open(tf)
    open(tf, "w").close()
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Identity.open(tf)  # empty
    distsys.identity_issue_file(key, "data-1", "data", tf)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Identity.open(tf, reload_ms=-1)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.IdentityVerifier(key)  # a private key is not a public key
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.IdentityVerifier(tf)
    # missing or unusable files: IoError
    missing = str(tmp_path / "missing")
    with pytest.raises(distsys.IoError):
        distsys.Identity.open(missing)
    with pytest.raises(distsys.IoError):
        distsys.IdentityVerifier(missing)
    with pytest.raises(distsys.IoError):
        distsys.identity_issue(missing, "data-1", "data")
    with pytest.raises(distsys.IoError):
        distsys.identity_issue(pub, "data-1", "data")  # not a private key
    with open(tmp_path / "junk.key", "w") as f:
        f.write("junk")
    with pytest.raises(distsys.IoError):
        distsys.identity_keygen(str(tmp_path / "junk.key"), str(tmp_path / "junk.pub"))
    # Python-level misuse
    with pytest.raises(TypeError):
        distsys.identity_issue(key, None, "data")
    with pytest.raises(TypeError):
        distsys.Identity()
    with pytest.raises(TypeError):
        distsys.Identity(tf, token=tok)
    with pytest.raises(TypeError):
        distsys.Identity(token=tok, reload_ms=5)


def test_threads_share_a_verifier_and_a_credential(keys, tmp_path):
    key, pub = keys
    tf = str(tmp_path / "t.token")
    distsys.identity_issue_file(key, "data-1", "data", tf)
    errs = []
    with distsys.IdentityVerifier(pub) as v, \
            distsys.Identity.open(tf, reload_ms=1) as me:
        def run():
            try:
                for _ in range(200):
                    assert v.verify(me.token())["instance"] == "data-1"
            except BaseException as e:  # noqa: BLE001 - reported below
                errs.append(e)
        ts = [threading.Thread(target=run) for _ in range(4)]
        for t in ts:
            t.start()
        for _ in range(5):
            distsys.identity_issue_file(key, "data-1", "data", tf)
        for t in ts:
            t.join(30)
    assert not errs, errs


def test_rss_flat(keys, tmp_path):
    key, pub = keys
    tf = str(tmp_path / "t.token")
    distsys.identity_issue_file(key, "data-1", "data", tf)
    tok = distsys.identity_issue(key, "data-1", "data")
    h, p, s = tok.split(".")
    bad = f"{h}.{p}.{s[:5]}{'A' if s[5] != 'A' else 'B'}{s[6:]}"
    limit = int(os.environ.get("DSYS_RSS_LIMIT_KIB", "2048"))

    def cycle(i):
        with distsys.Identity.fixed(tok) as a:
            a.token()
        with distsys.Identity.open(tf) as b:
            b.token()
        with distsys.IdentityVerifier(pub) as v:
            v.verify(tok)
            try:
                v.verify(bad)
            except distsys.AuthError:
                pass

    for i in range(300):
        cycle(i)
    gc.collect()
    before = rss_kib()
    for i in range(1500):
        cycle(i)
    gc.collect()
    after = rss_kib()
    assert after - before < limit, f"RSS {before} -> {after} KiB"


def test_registry_presents_the_identity(tmp_path, keys, builddir):
    """A Registry on a dsys-registryd that requires identities: writes
    with the instance's own token succeed, without one they raise
    AuthError, with another instance's PermissionDeniedError."""
    import subprocess
    regd = os.path.join(builddir, "daemons", "dsys-registryd")
    if not os.path.exists(regd):
        if os.environ.get("DSYS_BUILDDIR"):
            pytest.fail(f"{regd} not built")
        pytest.skip("dsys-registryd not available (set DSYS_BUILDDIR)")
    key, pub = keys
    p = subprocess.Popen([regd, "--listen", "http://127.0.0.1:0", "--identity-public-key", pub,
                          "--log-format", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("listening "), line
        url = line.split()[1]
        tf = str(tmp_path / "data-1.token")
        distsys.identity_issue_file(key, "data-1", "data", tf)
        with distsys.Identity.open(tf) as me:
            with distsys.Registry(url, identity=me) as r:
                r.register("data-1-4001", "data", "http://127.0.0.1:4001", name="data-1")
                assert [i.url for i in r.lookup("data")] == ["http://127.0.0.1:4001"]
                with pytest.raises(distsys.PermissionDeniedError):
                    r.register("data-2-4002", "data", "http://127.0.0.1:4002", name="data-2")
                r.heartbeat("data-1-4001")
            with distsys.Registry(url) as anon:
                with pytest.raises(distsys.AuthError):
                    anon.deregister("data-1-4001")
            r2 = distsys.Registry(url, identity=me)
        assert r2.closed, "closing the Identity closes the Registry that uses it"
    finally:
        p.terminate()
        p.wait(10)
