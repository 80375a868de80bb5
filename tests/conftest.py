import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NIST_DIR = SHARED / "data" / "nist-strd"

# In CI the property tests replay the same examples every time (a failure found once
# must not come and go between runs); locally they explore new random examples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def out(tmp_path):
    """A fresh run-store folder."""
    return str(tmp_path / "runs")
