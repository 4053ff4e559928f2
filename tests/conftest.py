"""Shared test fixtures: paths to the real speech fixtures and the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "fixtures" / "real"
# Real fixtures the tests need are copied into the repo, so the suite also runs without ../shared.
FIXTURES = REPO / "tests" / "fixtures"


def real_fixture(name: str) -> Path:
    local = FIXTURES / name
    return local if local.exists() else SHARED_REAL / name


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
