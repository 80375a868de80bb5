import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NIST_DIR = SHARED / "data" / "nist-strd"


@pytest.fixture
def out(tmp_path):
    """A fresh run-store folder."""
    return str(tmp_path / "runs")


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
