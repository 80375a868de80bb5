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


def _attribution_paths() -> list[str]:
    """The attribution step's reduction paths here: torch, and each copy of the C kernel."""
    try:
        from stability_lab.run import _attrkernel  # no torch import
    except ImportError:
        return ["torch"]
    return ["torch", *(f"kernel:{t}" for t in _attrkernel.targets())]


@pytest.fixture(params=_attribution_paths())
def attribution_path(request, monkeypatch):
    """Run the test once per reduction path; a kernel path must do every step itself.

    The kernel copies must give the torch path's statistics, so the reference tests run
    on each. On a kernel path every ``end_step`` that reduces something must go through
    the C kernel (no silent fallback to torch), which the fixture checks after the test.
    """
    from stability_lab.run.attribution import Attributor, kernel_path

    path = request.param
    monkeypatch.setattr(kernel_path, "REDUCE", "torch" if path == "torch" else "kernel")
    monkeypatch.setattr(kernel_path, "KERNEL_TARGET",
                        None if path == "torch" else path.split(":")[1])
    counts = {"steps": 0, "kernel": 0}
    if path != "torch":
        from stability_lab.run import _attrkernel

        real_reduce, real_end = _attrkernel.attr_reduce, Attributor.end_step

        def reduce(*args):
            counts["kernel"] += 1
            return real_reduce(*args)

        def end_step(self, *args, **kwargs):
            counts["steps"] += 1
            return real_end(self, *args, **kwargs)

        monkeypatch.setattr(_attrkernel, "attr_reduce", reduce)
        monkeypatch.setattr(Attributor, "end_step", end_step)
    yield path
    if path != "torch":
        assert counts["kernel"] == counts["steps"], (
            f"{counts['steps'] - counts['kernel']} of {counts['steps']} attribution steps "
            f"fell back to torch on {path}")
