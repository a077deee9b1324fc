"""Front ends for the end-to-end tests: required in CI, skipped with a reason elsewhere."""

from __future__ import annotations

import os

import pytest

from tests.frontends import FrontendMissing, find


def require(binary: str, package: str) -> str:
    try:
        return find(binary, package)
    except FrontendMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} CI must run every end-to-end test.")
        pytest.skip(f"{missing} Install it to run this test.")


@pytest.fixture
def nginx_binary() -> str:
    return require("nginx", "nginx-light")
