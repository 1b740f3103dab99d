import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)
sys.path.insert(0, PKG)


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.fixture
def dbfile(tmp_path):
    return str(tmp_path / "test.sqlite")


@pytest.fixture
def builddir():
    d = os.environ.get("DSYS_BUILDDIR")
    if not d:
        lib = os.environ.get("DSYS_LIBRARY", "")
        d = os.path.dirname(os.path.dirname(lib)) if lib else ""
    return d
