import numpy as np

from stability_lab.diagnosis.phases import PhaseTracker, segment, segment_values
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


def names(phases):
    return [p.name for p in phases]


def test_descent_then_plateau():
    t = np.arange(300)
    ph = segment_values(np.exp(-0.05 * t) + 0.5)
    assert names(ph) == ["stable_descent", "plateau"]
    assert ph[0].start == 1 and ph[-1].end == 300
    assert all(a.end + 1 == b.start for a, b in zip(ph, ph[1:]))


def test_spike_recovery_oscillation_divergence_collapse():
    rng = np.random.default_rng(0)
    t = np.arange(300)
    loss = 1 / (1 + 0.05 * t) + 0.002 * rng.standard_normal(300)
    loss[150] += 1.0
    loss[151] += 0.5
    loss[200:240] = loss[199] + 0.05 * (-1) ** np.arange(40)
    loss[260:] = loss[259] * np.exp(0.1 * np.arange(40))
    loss[295:] = np.inf
    ph = segment_values(loss)
    got = names(ph)
    spike = ph[got.index("spike")]
    assert spike.start == 151
    assert got[got.index("spike") + 1] == "recovery"
    assert "oscillation" in got
    osc = [p for p in ph if p.name == "oscillation"]
    assert any(200 <= p.start <= 212 for p in osc)
    div = ph[got.index("divergence")]
    assert 258 <= div.start <= 266
    assert got[-1] == "collapse" and ph[-1].start == 296


def test_noise_is_not_spike_or_oscillation():
    rng = np.random.default_rng(1)
    loss = 0.3 + 0.01 * rng.standard_normal(400)
    got = set(names(segment_values(loss)))
    assert "spike" not in got and "divergence" not in got


def test_online_tracker_matches_segment():
    loss = np.exp(-0.05 * np.arange(100)) + 0.5
    tr = Trace(spec=RunSpec(), metrics={"loss": loss, "grad_norm": np.ones(100)})
    tracker = PhaseTracker()
    for v in loss:
        tracker.update(v, 1.0)
    assert [p.to_dict() for p in tracker.phases] == [p.to_dict() for p in segment(tr)]
    d = segment(tr)[0].to_dict()
    assert set(d) == {"name", "start", "end", "evidence"}
