"""Score the lab's judgments on a labeled corpus (``stability-lab evaluate``).

The corpus (``benchmarks/diagnosis_corpus/scenarios.json``) is a list of scenarios,
each a small generated or shipped data set plus a run spec, the matched controls the
recommendations need (``sweep``), which run of the sweep is the case (``case``), and
its truth: the acceptable verdicts, the signatures the run must show (``signatures``)
and may show (``allowed``), the actions the lab must advise (``actions``), whether
the computation is healthy (``healthy``: nothing may be flagged) and the true cause in
words. A scenario is in the ``dev`` split (the cases the detectors were built and
checked around) or the ``held_out`` split (written down before the lab was run on
them, never used to change a rule): the scores are reported per split and together.

For each scenario the lab runs the sweep as ``stability-lab run`` does, with
verification when it takes at most 200 re-runs (so the advice scored is the advice a
user would see), and the case run is scored:

- verdict: its status is one of the acceptable verdicts;
- signatures: the signatures of its warning and error findings, against the required
  ones (recall) and the required plus allowed ones (precision);
- actions: the advised recommendations listing the case run (verification did not show
  them useless), plus an advisory on its data (``near_singular_advisory``), against
  the required actions (recall) and the required plus ``allowed_actions`` (precision);
- false alarm: a healthy case with a failed verdict, any warning/error finding, any
  advised action or any advisory.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stability_lab.diagnosis.findings import FAILED

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnosis_corpus"
TARGETS = {"verdict_accuracy": 0.95, "action_recall": 0.90, "false_alarms": 0}


# -- data generators --------------------------------------------------------------------
def generate(spec: dict[str, Any], folder: Path) -> str:
    """Write a generated data set as CSV (header, label column ``label``); its path.

    Keys: ``n``, ``d``, ``seed``; ``labels`` = "logistic" (y ~ Bernoulli(sigmoid(2 X w)),
    the default), "random" (labels independent of X: nothing to learn) or "circle"
    (y = 1 when x0^2 + x1^2 > 1.4: a linear model is misspecified); ``scales`` multiplies
    the columns; ``dependent`` = [i, j, eps] makes column j = column i + eps * noise;
    ``offset`` adds a constant to every column; ``names`` names the columns.
    """
    n, d, seed = int(spec["n"]), int(spec["d"]), int(spec.get("seed", 0))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if "dependent" in spec:
        i, j, eps = spec["dependent"]
        X[:, int(j)] = X[:, int(i)] + float(eps) * rng.standard_normal(n)
    kind = spec.get("labels", "logistic")
    if kind == "random":
        y = (rng.random(n) < 0.5).astype(int)
    elif kind == "circle":
        y = (X[:, 0] ** 2 + X[:, 1] ** 2 > 1.4).astype(int)
    else:
        w = rng.standard_normal(d)
        w /= np.linalg.norm(X @ w) / math.sqrt(n)
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * X @ w))).astype(int)
    scales = spec.get("scales")
    if scales:
        X = X * np.resize(np.asarray(scales, dtype=np.float64), d)
    X = X + float(spec.get("offset", 0.0))
    names = list(spec.get("names") or [f"x{k}" for k in range(d)])
    path = folder / f"{spec.get('name', 'gen')}_{n}x{d}_{seed}.csv"
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(names + ["label"])
        for k in range(n):
            wr.writerow([repr(float(v)) for v in X[k]] + [int(y[k])])
    return str(path)


# -- one scenario -----------------------------------------------------------------------
@dataclass
class Score:
    name: str
    split: str
    healthy: bool
    truth_verdicts: list[str]
    verdict: str
    signatures: set[str]
    required_signatures: set[str]
    allowed_signatures: set[str]
    actions: set[str]
    required_actions: set[str]
    allowed_actions: set[str]
    seconds: float = 0.0
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict_ok(self) -> bool:
        return self.verdict in self.truth_verdicts

    @property
    def false_alarm(self) -> bool:
        return self.healthy and (self.verdict in FAILED or bool(self.signatures)
                                 or bool(self.actions))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "healthy": self.healthy,
                "verdict": self.verdict, "truth_verdicts": self.truth_verdicts,
                "verdict_ok": self.verdict_ok, "signatures": sorted(self.signatures),
                "required_signatures": sorted(self.required_signatures),
                "actions": sorted(self.actions), "required_actions": sorted(self.required_actions),
                "false_alarm": self.false_alarm, "seconds": round(self.seconds, 2),
                "detail": self.detail}


def _parse(name: str, value: Any) -> Any:
    from stability_lab.spec.axes import AXES

    if name in AXES and isinstance(value, str):
        return AXES[name].parse(value)
    return value


def build(scenario: dict[str, Any], folder: Path):
    """The sweep of a scenario and the spec of its case run."""
    from stability_lab.spec import RunSpec, Sweep
    from stability_lab.tasks import DEFAULT_DATA

    task = scenario.get("task", "logistic_regression")
    data = scenario.get("data") or DEFAULT_DATA.get(task, "user")
    target = scenario.get("target")
    if isinstance(data, dict):
        data, target = generate(dict(data, name=scenario["name"]), folder), "label"
    if task.startswith("corpus:"):  # a user model shipped with the corpus
        task = str(Path(scenario["_corpus"]) / task.split(":", 1)[1])
    base = RunSpec(task=task, data=data, target=target,
                   solver="auto" if task == "linear_regression" else None)
    changes = {k: _parse(k, v) for k, v in (scenario.get("base") or {}).items()
               if k != "lr_times_bound"}
    if changes:
        base = base.replace(**changes)
    if "lr_times_bound" in (scenario.get("base") or {}):
        from stability_lab.catalogue.common import lr_bound

        k = float(scenario["base"]["lr_times_bound"])
        base = base.replace(lr=float(f"{k * lr_bound(base):.2g}"))
    axes = [(k, [_parse(k, v) for v in vals]) for k, vals in (scenario.get("sweep") or {}).items()]
    case = base.replace(**{k: _parse(k, v) for k, v in (scenario.get("case") or {}).items()})
    return Sweep(base, axes), case


def run_scenario(scenario: dict[str, Any], folder: Path, verify: bool = True) -> Score:
    import time

    from stability_lab.lab import run_sweep
    from stability_lab.remedies.verify import (VERIFY_BY_DEFAULT, close_recommendations,
                                               rerun_count, verify_sweep)

    t0 = time.perf_counter()
    sweep, case = build(scenario, folder)
    result = run_sweep(sweep)
    reruns = rerun_count(result)
    if verify and reruns <= VERIFY_BY_DEFAULT:
        verify_sweep(result)
        close_recommendations(result, "verified", reruns)
    else:
        close_recommendations(result, "skipped", reruns)
    by_id = {r.run_id: r for r in result.results}
    r = by_id.get(case.run_id)
    if r is None:
        raise KeyError(f"scenario {scenario['name']!r}: its case run is not in its sweep")
    sigs = {f.signature for f in r.findings if f.severity in ("warning", "error")}
    actions = {rec.action for rec in result.recommendations
               if rec.advised and r.run_id in rec.runs}
    for adv in result.advisories:
        if adv.get("data") == r.spec.data and adv.get("scale") == r.spec.scale:
            actions.add(adv["kind"] + "_advisory" if not adv["kind"].endswith("advisory")
                        else adv["kind"])
    truth = scenario["truth"]
    verdicts = truth["verdict"] if isinstance(truth["verdict"], list) else [truth["verdict"]]
    return Score(
        scenario["name"], scenario.get("split", "dev"), bool(truth.get("healthy")), verdicts,
        r.verdict.status, sigs, set(truth.get("signatures", [])),
        set(truth.get("allowed", [])), actions, set(truth.get("actions", [])),
        set(truth.get("allowed_actions", [])), time.perf_counter() - t0, str(r.verdict))


# -- the table --------------------------------------------------------------------------
def summarize(scores: list[Score]) -> dict[str, Any]:
    def prf(pred_req_allowed):
        tp = fp = fn = 0
        for pred, req, allowed in pred_req_allowed:
            tp += len(pred & req)
            fp += len(pred - req - allowed)
            fn += len(req - pred)
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / (tp + fn) if tp + fn else 1.0
        return prec, rec, tp, fp, fn

    sp, sr, *_ = prf([(s.signatures, s.required_signatures, s.allowed_signatures)
                      for s in scores])
    ap, ar, *_ = prf([(s.actions, s.required_actions, s.allowed_actions) for s in scores])
    healthy = [s for s in scores if s.healthy]
    return {
        "scenarios": len(scores),
        "verdict_accuracy": (sum(s.verdict_ok for s in scores) / len(scores)) if scores else 0.0,
        "signature_precision": sp, "signature_recall": sr,
        "action_precision": ap, "action_recall": ar,
        "healthy": len(healthy), "false_alarms": sum(s.false_alarm for s in healthy),
    }


def meets_targets(summary: dict[str, Any]) -> bool:
    return (summary["verdict_accuracy"] >= TARGETS["verdict_accuracy"]
            and summary["action_recall"] >= TARGETS["action_recall"]
            and summary["false_alarms"] <= TARGETS["false_alarms"])


def confusion(scores: list[Score]) -> dict[str, dict[str, int]]:
    """True verdict (the first acceptable one) -> predicted verdict -> count."""
    out: dict[str, dict[str, int]] = {}
    for s in scores:
        row = out.setdefault(s.truth_verdicts[0], {})
        key = s.truth_verdicts[0] if s.verdict_ok else s.verdict  # an accepted one counts
        row[key] = row.get(key, 0) + 1
    return out


def load(corpus: Path) -> list[dict[str, Any]]:
    path = corpus / "scenarios.json"
    scenarios = json.loads(path.read_text())
    for s in scenarios:
        s["_corpus"] = str(corpus)
    return scenarios


def _safe_run(scenario: dict[str, Any], folder: str) -> Score:
    """A scenario's score; a scenario that raises is scored as verdict 'error'."""
    try:
        return run_scenario(scenario, Path(folder))
    except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
        truth = scenario["truth"]
        verdicts = truth["verdict"] if isinstance(truth["verdict"], list) else [truth["verdict"]]
        return Score(scenario["name"], scenario.get("split", "dev"),
                     bool(truth.get("healthy")), verdicts, "error", set(),
                     set(truth.get("signatures", [])), set(truth.get("allowed", [])), set(),
                     set(truth.get("actions", [])), set(truth.get("allowed_actions", [])),
                     detail=f"{type(exc).__name__}: {exc}"[:300])


def evaluate(corpus: Path = DEFAULT_CORPUS, fast: bool = False, split: str = "all",
             names: list[str] | None = None, progress=None, jobs: int = 1) -> dict[str, Any]:
    scenarios = load(corpus)
    if fast:
        scenarios = [s for s in scenarios if s.get("fast")]
    if split != "all":
        scenarios = [s for s in scenarios if s.get("split", "dev") == split]
    if names:
        scenarios = [s for s in scenarios if s["name"] in names]
    scores: list[Score] = []
    with tempfile.TemporaryDirectory() as tmp:
        if jobs > 1 and len(scenarios) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_safe_run, s, tmp) for s in scenarios]
                for i, fut in enumerate(futures):
                    scores.append(fut.result())
                    if progress:
                        progress(i + 1, len(scenarios), scores[-1])
        else:
            for i, s in enumerate(scenarios):
                scores.append(_safe_run(s, tmp))
                if progress:
                    progress(i + 1, len(scenarios), scores[-1])
    out = {"all": summarize(scores), "targets": TARGETS,
           "splits": {sp: summarize([s for s in scores if s.split == sp])
                      for sp in sorted({s.split for s in scores})},
           "confusion": confusion(scores), "scores": [s.to_dict() for s in scores]}
    out["meets_targets"] = meets_targets(out["all"])
    return out


def format_report(rep: dict[str, Any]) -> str:
    from stability_lab.report.tables import table

    lines = []
    rows = []
    for label, summ in [("all", rep["all"]), *rep["splits"].items()]:
        rows.append([label, str(summ["scenarios"]), f"{summ['verdict_accuracy']:.1%}",
                     f"{summ['signature_precision']:.1%}", f"{summ['signature_recall']:.1%}",
                     f"{summ['action_precision']:.1%}", f"{summ['action_recall']:.1%}",
                     f"{summ['false_alarms']} of {summ['healthy']}"])
    lines.append(table(["split", "cases", "verdict acc", "sig prec", "sig recall",
                        "action prec", "action recall", "false alarms (healthy)"], rows))
    t = rep["targets"]
    lines.append(f"Targets: verdict accuracy >= {t['verdict_accuracy']:.0%}, action recall >= "
                 f"{t['action_recall']:.0%}, {t['false_alarms']} false alarms: "
                 + ("met" if rep["meets_targets"] else "NOT met"))
    lines.append("")
    conf = rep["confusion"]
    preds = sorted({p for row in conf.values() for p in row})
    lines.append("Verdict confusion (rows: true verdict; columns: the lab's):")
    lines.append(table(["true \\ lab", *preds],
                       [[t_, *[str(row.get(p, 0)) for p in preds]] for t_, row in conf.items()]))
    lines.append("")
    rows = []
    for s in rep["scores"]:
        miss_sig = set(s["required_signatures"]) - set(s["signatures"])
        miss_act = set(s["required_actions"]) - set(s["actions"])
        problems = []
        if not s["verdict_ok"]:
            problems.append(f"verdict {s['verdict']} (expected {'/'.join(s['truth_verdicts'])})")
        if miss_sig:
            problems.append("missed " + ",".join(sorted(miss_sig)))
        if miss_act:
            problems.append("not advised " + ",".join(sorted(miss_act)))
        if s["false_alarm"]:
            problems.append("FALSE ALARM")
        rows.append([s["name"], s["split"], s["verdict"], ",".join(s["signatures"]) or "-",
                     ",".join(s["actions"]) or "-", "; ".join(problems) or "ok"])
    lines.append(table(["scenario", "split", "verdict", "signatures", "actions", "check"], rows))
    return "\n".join(lines)
