"""System tools the deploy/ tests run (promtool, prometheus, kubectl). They are installed by
scripts/install-system-deps.sh, which `make test` runs first; a missing tool fails the test, never skips it."""

from __future__ import annotations

import shutil

import pytest

INSTALL_HINT = "run `bash scripts/install-system-deps.sh` (or `make test`, which runs it first)"


def require(name: str) -> str:
    """Path of the tool `name`, or a failed test that says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path
