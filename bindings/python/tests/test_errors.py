import os
import subprocess
import sys

import distsys
from distsys import _lib, errors


def test_every_code_has_a_class():
    n = _lib.dsys_err_count()
    assert n > 30
    for i in range(1, n):
        cls = distsys.error_class(-i)
        assert issubclass(cls, distsys.DistsysError)
        assert cls.code == -i
        assert getattr(distsys, cls.__name__) is cls
        e = cls()
        assert e.code == -i and e.name == _lib.dsys_err_name(-i).decode()
        assert e.message == _lib.dsys_strerror(-i).decode()


def test_names_follow_the_rule_and_do_not_shadow_builtins():
    import builtins
    assert distsys.NotFoundError.name == "DSYS_ENOTFOUND"
    assert distsys.ConflictError.name == "DSYS_ECONFLICT"
    assert distsys.TimedOutError.name == "DSYS_ETIMEDOUT"
    assert distsys.DsysTypeError.name == "DSYS_ETYPE"
    assert errors.class_name_for("DSYS_EFUTURETHING") == "FuturethingError"
    for name in distsys.error_classes():
        assert not hasattr(builtins, name), name
    assert issubclass(distsys.NotFoundError, LookupError)
    assert issubclass(distsys.InvalidArgumentError, ValueError)
    assert distsys.error_class(-9999) is distsys.DistsysError


def test_error_str_and_pickle():
    import pickle
    e = distsys.NotFoundError(detail="key 'x'")
    assert str(e) == "DSYS_ENOTFOUND: not found (key 'x')"
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is distsys.NotFoundError and e2.detail == "key 'x'"


def _import_with(env):
    full = dict(os.environ)
    full.pop("DSYS_LIBRARY", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", "import distsys"], env=full,
                          capture_output=True, text=True, timeout=30)


def test_bad_library_path_names_the_variable():
    r = _import_with({"DSYS_LIBRARY": "/nonexistent/libdistsys.so"})
    assert r.returncode != 0
    assert "DSYS_LIBRARY" in r.stderr and "/nonexistent/libdistsys.so" in r.stderr
    assert "LibraryNotFoundError" in r.stderr


def test_missing_library_names_both_places():
    r = _import_with({"LD_LIBRARY_PATH": "/nonexistent"})
    if r.returncode == 0:  # an installed libdistsys exists on this host
        return
    assert "DSYS_LIBRARY" in r.stderr and "install" in r.stderr


def test_not_libdistsys_is_refused():
    import ctypes.util
    libc = ctypes.util.find_library("c")
    r = _import_with({"DSYS_LIBRARY": libc})
    assert r.returncode != 0 and "not libdistsys" in r.stderr


def test_version():
    assert distsys.library_version.count(".") == 2
