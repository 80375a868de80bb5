"""docs/playbook.md regenerates byte for byte, whatever kernels the caller's environment
selects: the command pins its own (a file of its own, so that the suite's workers run it
beside the repro commands of tests/test_playbook.py)."""

from pathlib import Path

PLAYBOOK = Path(__file__).resolve().parents[1] / "docs" / "playbook.md"


def test_playbook_regenerates_byte_for_byte_on_another_kernel(tmp_path):
    """`playbook --write`, started under OpenBLAS kernels other than the default ones of the
    machine that wrote docs/playbook.md, gives that file's bytes: its figures hold on every
    machine. It runs its repros two at a time (docs/playbook.md was written one at a time),
    so this also holds the text to not depending on ``--jobs``. (Not marked `blas`: the
    command pins its own numerical environment, so .ci/run's kernel re-runs would add
    nothing.)"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_CORETYPE": "Sandybridge", "OPENBLAS_NUM_THREADS": "2"}
    env.pop("STABILITY_LAB_PLAYBOOK_PINNED", None)
    path = tmp_path / "playbook.md"
    proc = subprocess.run([sys.executable, "-m", "stability_lab", "playbook", "--write",
                           str(path), "--jobs", "2"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    text = path.read_bytes()
    assert text == PLAYBOOK.read_bytes(), (
        "docs/playbook.md is stale: regenerate it with "
        "'stability-lab playbook --write docs/playbook.md'")
    assert b"Nehalem kernels" in text


def test_playbook_pins_the_kernel_whatever_the_callers_environment(monkeypatch):
    """The environment the repros run in overrides the caller's kernel and thread settings,
    and OpenBLAS really runs its Nehalem kernels on one thread there."""
    import subprocess
    import sys

    from stability_lab.cli.commands.playbook import PINNED, pinned_env

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    env = pinned_env()
    assert {k: env[k] for k in PINNED} == PINNED
    probe = ("import numpy; from threadpoolctl import threadpool_info as t; "
             "print(sorted({(i['architecture'], i['num_threads']) for i in t() "
             "if i.get('internal_api') == 'openblas'}))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[('Nehalem', 1)]"
