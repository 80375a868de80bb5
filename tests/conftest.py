import os
from pathlib import Path

# The suite runs its files in parallel worker processes (pyproject's addopts: pytest-xdist,
# one worker per CPU, at most 2). Each worker computes with one thread, unless the caller
# chose a thread count, so that two workers do not fight over the cores (and a worker's
# subprocesses inherit the setting). Set here, before any test imports NumPy or torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NIST_DIR = SHARED / "data" / "nist-strd"

# In CI the property tests replay the same examples every time (a failure found once
# must not come and go between runs); locally they explore new random examples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


#: worker processes at most: on the 2-core machine the suite took 214-243 s with 2 workers
#: and 264 s with 3 (`pytest -q -n 3`): the tests start processes of their own (Dask
#: clusters, the playbook's repros, kernel re-runs), which a third worker only crowds
MAX_WORKERS = 2


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may use, at most :data:`MAX_WORKERS`."""
    from stability_lab.portability import usable_cpus

    return min(usable_cpus(), MAX_WORKERS)


#: the files that take longest, longest first (one worker's seconds in a run of the suite
#: on 2 cores: the Dask clusters 54, the playbook's regeneration 52 and its repros 33, the
#: default command 30, the kernel re-runs 29, the browser 28, DDP's two ranks 18, then
#: 10-13 each), run first so that the workers finish together instead of one waiting
#: for a long file started last; the short files after them fill the gaps
LONGEST_FIRST = ("test_distributed.py", "test_playbook_regen.py", "test_playbook.py",
                 "test_cli.py", "test_portability.py", "test_report_browser.py",
                 "test_watch_ddp.py", "test_signatures.py", "test_deep.py",
                 "test_logistic.py", "test_report_maps.py", "test_report_command.py",
                 "test_verify.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


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
