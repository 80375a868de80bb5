"""Every registered signature keeps the promises of its record.

The tests are parametrized over the registry (``stability_lab.diagnosis.signatures``):
adding a record is what adds its checks. For each signature:

- its detector fires on the record's hand-made failing trace (``fires_on``), with
  findings of its own name that carry evidence and an onset inside the trace, and the
  registry's one detection path (``detect_all``) reaches it there;
- nothing fires on the record's healthy trace (``silent_on``), its own detector or any
  other;
- its playbook text is its section of docs/playbook.md, word for word, when it has a
  catalogue scenario, and that scenario is in the catalogue; without one, the record
  says why;
- its mitigations are registered recommendation rules (or the record says why none can
  fix it).

That the scenario reproduces the signature and a fix removes it is checked by running
the playbook's commands (tests/test_playbook.py).
"""

import json
import re
from pathlib import Path

import pytest

from stability_lab import catalogue
from stability_lab.diagnosis.signatures import SIGNATURES, Playbook, Signature, detect_all
from stability_lab.remedies import recommend  # noqa: F401  (registers every rule)
from stability_lab.remedies.rules import RULES

PLAYBOOK = Path(__file__).resolve().parents[1] / "docs" / "playbook.md"
RECORDS = list(SIGNATURES.values())
each_signature = pytest.mark.parametrize("sig", RECORDS, ids=[s.name for s in RECORDS])


def _playbook_section(name: str) -> str:
    """The text of ``## name`` in docs/playbook.md, up to the next section."""
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", PLAYBOOK.read_text(),
                      flags=re.M | re.S)
    assert match, f"docs/playbook.md has no section '## {name}'"
    return match.group(1)


@each_signature
def test_fires_on_its_failing_trace(sig):
    trace = sig.fires_on()
    assert sig.applies(trace), f"{sig.name}: its failing trace is not one it applies to"
    findings = sig.detect(trace)
    assert findings, f"{sig.name} did not fire on its failing trace"
    for f in findings:
        assert f.signature == sig.name
        assert f.severity in ("warning", "error")
        assert f.message and f.evidence
        assert f.onset is None or 1 <= f.onset <= trace.n_steps
        json.dumps(f.to_dict())  # the store keeps it as JSON
    assert sig.name in {f.signature for f in detect_all(trace)}


@each_signature
def test_silent_on_its_healthy_trace(sig):
    trace = sig.silent_on()
    assert sig.detect(trace) == []
    alarms = [f.signature for f in detect_all(trace) if f.severity in ("warning", "error")]
    assert alarms == [], f"{sig.name}'s healthy trace raises {alarms}"


@each_signature
def test_playbook_section_and_scenario(sig):
    if sig.scenario is None:
        assert sig.no_scenario
        return
    assert sig.scenario in catalogue.names()
    section = _playbook_section(sig.scenario)
    text: Playbook = sig.playbook
    assert f"**What you see.** {text.symptom}\n" in section
    assert f"**Cause.** {text.cause}\n" in section
    fixes = "".join(f"{i}. {fix}\n" for i, fix in enumerate(text.fixes, 1))
    assert f"**Fixes, cheapest first.**\n\n{fixes}" in section


@each_signature
def test_mitigations_are_registered_rules(sig):
    rules = {rule.__name__ for rule in RULES}
    assert set(sig.mitigations) <= rules, (
        f"{sig.name}: {sorted(set(sig.mitigations) - rules)} are not registered rules")
    assert sig.mitigations or sig.no_mitigation


def test_every_catalogue_scenario_is_a_signatures_scenario():
    assert sorted(catalogue.names()) == sorted(s.scenario for s in RECORDS if s.scenario)


def test_a_record_must_say_why_it_lacks_a_scenario_or_a_mitigation():
    sig = SIGNATURES["overflow"]
    fields = {k: getattr(sig, k) for k in Signature.__dataclass_fields__}
    with pytest.raises(ValueError, match="no_scenario"):
        Signature(**{**fields, "scenario": None})
    with pytest.raises(ValueError, match="no_mitigation"):
        Signature(**{**fields, "mitigations": ()})
    with pytest.raises(ValueError, match="applies_to"):
        Signature(**{**fields, "applies_to": "epoch_traces"})
