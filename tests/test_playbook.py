"""The playbook and the catalogue agree, and every command in the playbook runs.

Running the playbook's commands is also the catalogue's end-to-end test: each repro must
show its own signature and at least one mitigation verified to fix it.
"""

import json
import re
from pathlib import Path

import pytest

from stability_lab import catalogue
from stability_lab.cli import main

PLAYBOOK = Path(__file__).resolve().parents[1] / "docs" / "playbook.md"


def playbook_text():
    return PLAYBOOK.read_text()


def test_playbook_lists_catalogue():
    headings = re.findall(r"^## (\S+)$", playbook_text(), flags=re.M)
    assert headings == catalogue.names()
    assert len(headings) >= 12


def test_repro_list_and_unknown(capsys):
    assert main(["repro", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == catalogue.names()
    assert main(["repro", "no_such_signature"]) == 2
    err = capsys.readouterr().err
    assert "overflow" in err and "saturation" in err


@pytest.mark.blas
@pytest.mark.parametrize("command", re.findall(r"^(stability-lab repro \S+)$",
                                               PLAYBOOK.read_text() if PLAYBOOK.exists()
                                               else "", flags=re.M))
def test_playbook_command_runs(command, tmp_path, capsys):
    argv = command.split()[1:] + ["--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    name = argv[1]
    assert doc["signature"] == name
    assert any(f["signature"] == name for f in doc["findings"]), "not reproduced"
    assert any(row["fixed"] for row in doc["verification"]), "no verified fix"
    for row in doc["verification"]:
        assert {"mitigation", "before", "after", "fixed"} <= set(row)


def test_playbook_regenerates_byte_for_byte_under_two_kernels(tmp_path):
    """`playbook --write` gives the same bytes under two OpenBLAS kernels, and those of
    docs/playbook.md: its figures hold on every machine. (Not marked `blas`: the command
    pins its own numerical environment, so .ci/run's kernel re-runs would add nothing.)"""
    import os
    import subprocess
    import sys

    procs = {}
    for kernel in ("Haswell", "Sandybridge"):
        env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "OPENBLAS_NUM_THREADS": "2"}
        env.pop("STABILITY_LAB_PLAYBOOK_PINNED", None)
        path = tmp_path / f"playbook-{kernel}.md"
        procs[kernel] = (path, subprocess.Popen(
            [sys.executable, "-m", "stability_lab", "playbook", "--write", str(path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    texts = {}
    for kernel, (path, proc) in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        texts[kernel] = path.read_bytes()
    assert texts["Haswell"] == texts["Sandybridge"]
    assert texts["Haswell"] == PLAYBOOK.read_bytes(), (
        "docs/playbook.md is stale: regenerate it with "
        "'stability-lab playbook --write docs/playbook.md'")
    assert b"Nehalem kernels" in texts["Haswell"]
