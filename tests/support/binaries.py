"""The programs the tests drive (web servers, inetd, socat, systemd's tools): required in
CI, the test skipped with a reason elsewhere."""

from __future__ import annotations

import os

import pytest

from tests.support.frontends import FrontendMissing, find


def require(binary: str, package: str) -> str:
    try:
        return find(binary, package)
    except FrontendMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} CI must run every test.")
        pytest.skip(f"{missing} Install it to run this test.")
