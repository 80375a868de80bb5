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
from stability_lab.diagnosis.signatures import SIGNATURES

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
    # the signature record's mitigation (a registered rule) is among the verified fixes,
    # unless the record says no rule can fix it (the scenario shows what does)
    record = SIGNATURES[name]
    fixed_by = {row["mitigation"] for row in doc["verification"] if row["fixed"]}
    if not record.mitigations:  # no rule can fix it (the record says why)
        assert record.no_mitigation
    else:
        assert fixed_by & set(record.mitigations), (
            f"{name}: none of its record's mitigations {record.mitigations} fixed its "
            f"scenario (fixed: {sorted(fixed_by)})")


def test_playbook_jobs_must_be_positive(capsys):
    assert main(["playbook", "--jobs", "0"]) == 2
    assert "--jobs N needs N >= 1" in capsys.readouterr().err
