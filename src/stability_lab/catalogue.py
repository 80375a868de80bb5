"""The signature catalogue: for each failure signature, a reproduction and its verified fixes.

Each :class:`Scenario` reproduces one signature on real (breast_cancer) or generated
data in a few seconds, diagnoses the run with the detectors of
:mod:`stability_lab.diagnosis.signatures`, collects the recommendations (the lab's own
rules where they fire on the scenario's small matched sweep, plus the scenario's
evidence-driven mitigations), and re-runs the baseline with each mitigation alone and
all together, with the same seed, data order and precision (unless the mitigation
changes it). A row is ``fixed`` when the target signature is no longer detected and the
verdict is not a failure; a mitigation that does not fix it stays in the table.

Scenarios built on the logistic task use RunSpecs and the engine (their re-runs are
``spec.replace(**delta)``). Scenarios the RunSpec cannot express (a custom data pipeline,
a least-squares solver, a loss-scaled fp16 step, an lr restart, an MSE-on-sigmoid
classifier, summation-order variants) run a small NumPy/torch trainer of this module
that returns a :class:`~stability_lab.trace.Trace` with the same metrics, so the same
detectors and verdict rules judge them; their configs are dicts and a mitigation's
delta updates the dict.

``repro(name, out)`` runs one scenario and returns a :class:`Repro`.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from stability_lab.diagnosis.findings import Finding
from stability_lab.diagnosis.signatures import SIGNATURES
from stability_lab.formatting import jsonable, round_sig
from stability_lab.errors import UsageError
from stability_lab.remedies.rules import Recommendation, safe_lr
from stability_lab.diagnosis.record import RunResult
from stability_lab.spec import RunSpec, Sweep

# =========================================================================== containers


@dataclass
class Repro:
    signature: str
    description: str
    baseline: RunResult
    findings: list[Finding]
    recommendations: list[Recommendation]
    verification: list[dict[str, Any]]
    results: list[RunResult] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return any(f.signature == self.signature for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        rows = [{"mitigation": r["mitigation"], "delta": r["delta"], "before": r["before"],
                 "after": r["after"], "fixed": r["fixed"], "run_id": r["run_id"],
                 "fixed_run_id": r["fixed_run_id"]} for r in self.verification]
        return jsonable({
            "signature": self.signature,
            "description": self.description,
            "reproduced": self.reproduced,
            "baseline": {"id": self.baseline.run_id, "config": self.baseline.spec.to_dict(),
                         "verdict": self.baseline.verdict.to_dict()},
            "findings": [f.to_dict() for f in self.findings],
            "recommendations": [r.to_dict() for r in self.recommendations],
            "verification": rows,
        })


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    symptom: str
    cause: str
    #: the fixes, cheapest first (text for the playbook)
    fixes: tuple[str, ...]
    build: Callable[[Path], Repro]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str):
    """Register the scenario reproducing signature ``name``; its playbook text (symptom,
    cause, fixes) is the one the signature's record declares."""
    def wrap(fn: Callable[[Path], Repro]) -> Callable[[Path], Repro]:
        text = SIGNATURES[name].playbook
        SCENARIOS[name] = Scenario(name, description, text.symptom, text.cause, text.fixes, fn)
        return fn

    return wrap


def names() -> list[str]:
    return list(SCENARIOS)


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise UsageError(
            f"Unknown signature {name!r}; expected one of: {', '.join(SCENARIOS)} "
            "(see 'stability-lab repro --list')."
        )
    return SCENARIOS[name]


def repro(name: str, workdir: str | Path | None = None) -> Repro:
    """Run one scenario; ``workdir`` holds generated data files (a temp dir if None)."""
    sc = get(name)
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return sc.build(Path(tmp))
    path = Path(workdir) / "catalogue-data"
    path.mkdir(parents=True, exist_ok=True)
    return sc.build(path)


# =========================================================================== verification core
def _diagnosed(traces) -> list[RunResult]:
    from stability_lab.diagnosis.record import diagnose_trace

    return [diagnose_trace(t) for t in traces]


def _verify(before_cfg: Any, recs: Sequence[Recommendation], target: str,
            runner: Callable[[list[Any]], list], apply: Callable[[Any, dict], Any],
            reference: Callable[[Any], Any | None],
            ) -> tuple[RunResult, list[dict], list[RunResult]]:
    """Run the baseline and every mitigation (alone, then all together) and build rows."""
    from stability_lab.diagnosis.signatures import attach_reference
    from stability_lab.remedies.verify import Attempt, make_row, merge_deltas, rebound_lr, rediagnose

    attempts = [(rec.action, dict(rec.delta)) for rec in recs]
    if len(recs) > 1:
        combined = merge_deltas(recs)
        if isinstance(before_cfg, RunSpec):
            rebound_lr(before_cfg, combined)
        attempts.append(("all", combined))
    cfgs = [before_cfg] + [apply(before_cfg, d) for _, d in attempts]
    refs = [reference(c) for c in cfgs]
    extra = [r for r in refs if r is not None]
    results = _diagnosed(runner(cfgs + extra))
    main, ref_results = results[:len(cfgs)], iter(results[len(cfgs):])
    digits: list[float | None] = []
    for res, ref_cfg in zip(main, refs):
        if ref_cfg is None:
            digits.append(None)
            continue
        info = attach_reference(res.trace, next(ref_results).trace)
        digits.append(info["lre_loss"])
    for res in main:
        rediagnose(res)
    before = main[0]
    rows = []
    for (name, delta), after, d in zip(attempts, main[1:], digits[1:]):
        rows.append(make_row(Attempt(before, name, delta), after, digits[0], d, target,
                             label="baseline"))
    return before, rows, results


def _spec_scenario(name: str, base: RunSpec, axes: list,
                   extra: Callable[[RunResult], list[Recommendation]] | None = None,
                   post: Callable[[Any], None] | None = None) -> Repro:
    """A scenario on a lab task: a small matched sweep for the rules, then verification.

    ``name`` is the scenario's (its description comes from :data:`SCENARIOS`) and the
    target signature the fixes must remove.
    """
    from stability_lab.run import engine
    from stability_lab.lab import run_sweep

    sweep = run_sweep(Sweep(base, axes))
    first = next(r for r in sweep.results if r.run_id == base.run_id)
    recs = [r for r in sweep.recommendations if first.run_id in r.runs]
    if extra is not None:
        have = {r.action for r in recs}
        recs += [r for r in extra(first) if r.action not in have]

    def runner(specs):
        traces = engine.run_specs(specs)
        if post is not None:
            for t in traces:
                post(t)
        return traces

    before, rows, results = _verify(
        base, recs, name, runner, lambda s, d: s.replace(**d),
        lambda s: s.replace(precision="float64") if s.precision != "float64" else None)
    return Repro(name, SCENARIOS[name].description, before, before.findings, recs, rows, results)


def _fn_scenario(name: str, run: Callable[[dict], Any], base: dict,
                 recs: list[Recommendation]) -> Repro:
    """A scenario on this module's own trainer: configs are dicts (``name`` as in
    :func:`_spec_scenario`)."""

    def runner(cfgs):
        return [run(c) for c in cfgs]

    def reference(c):
        p = c.get("precision")
        return {**c, "precision": "float64"} if p not in (None, "float64") else None

    before, rows, results = _verify(base, recs, name, runner, lambda c, d: {**c, **d},
                                    reference)
    return Repro(name, SCENARIOS[name].description, before, before.findings, recs, rows, results)


def _lr_bound(spec: RunSpec) -> float:
    from stability_lab.tasks.logistic import LogisticRegression

    task = LogisticRegression()
    return task.lr_bound(spec, task.prepare(spec))


# =========================================================================== small trainer
def _spec_for(name: str, cfg: dict) -> RunSpec:
    params = {k: v for k, v in cfg.items() if k not in ("precision", "lr", "lam", "seed")}
    return RunSpec(task=f"catalogue:{name}", data=str(cfg.get("data", name)),
                   precision=str(cfg.get("precision", "float64")), lr=float(cfg.get("lr", 0.0)),
                   lam=float(cfg.get("lam", 0.0)), seed=int(cfg.get("seed", 0)),
                   epochs=int(cfg.get("epochs", 0)),
                   params=tuple(sorted((k, v) for k, v in params.items()
                                       if isinstance(v, (int, float, str, bool)))))


def _dtype(precision: str):
    return {"float64": np.float64, "float32": np.float32, "float16": np.float16}[precision]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from stability_lab import numerics

    return numerics.sigmoid(z)


def train_gd(X: np.ndarray, y: np.ndarray, *, lr: float | Sequence[float], epochs: int,
             precision: str = "float64", loss: str = "logloss", lam: float = 0.0,
             seed: int = 0, init_scale: float = 0.01, grad_format: str | None = None,
             loss_scale: float | None = None) -> dict[str, Any]:
    """Full-batch gradient descent for a linear classifier, with per-step metrics.

    ``loss``: ``logloss`` (fused, gradient p - y) or ``mse`` (squared error of the
    sigmoid output, gradient (p - y) p (1 - p)). ``precision``: format of the weights, data
    and arithmetic (NumPy float64/float32). ``grad_format='float16'`` rounds the
    per-sample gradient dL/dz to float16 (fp16 compute with fp32 master weights), optionally
    multiplied by ``loss_scale`` before the rounding and divided after it (static loss
    scaling); the weight gradient is accumulated in float32 (tensor-core semantics).
    ``lr`` may be a per-epoch schedule. The loss is evaluated in float64 from the weights.
    """
    dt = _dtype(precision)
    n, d = X.shape
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(d + 1) * init_scale).astype(dt)
    with np.errstate(all="ignore"):
        A = np.hstack([X, np.ones((n, 1))]).astype(dt)
    A64 = A.astype(np.float64)
    lrs = np.broadcast_to(np.asarray(lr, dtype=np.float64), (epochs,))
    pen = np.ones(d + 1, dtype=dt)
    pen[-1] = 0
    names = ("loss", "grad_norm", "update_norm", "weight_norm", "update_ratio",
             "nonfinite_weights", "nonfinite_grads", "max_abs_logit", "frac_saturated",
             "frac_saturated_wrong", "grad_underflow_frac", "frac_unchanged")
    rec = {k: np.full(epochs, np.nan) for k in names}
    with np.errstate(all="ignore"):
        for e in range(epochs):
            z = A @ w
            p = _sigmoid(z)
            z64 = A64 @ w.astype(np.float64)
            if loss == "mse":
                p64 = 0.5 * (1 + np.tanh(0.5 * z64))
                L = 0.5 * np.mean((p64 - y) ** 2)
            else:
                L = np.mean(np.logaddexp(0, z64) - y * z64)
            rec["loss"][e] = L + 0.5 * lam * float(np.sum(w[:-1].astype(np.float64) ** 2))
            sat = (p == 0) | (p == 1)
            rec["frac_saturated"][e] = sat.mean()
            rec["frac_saturated_wrong"][e] = (sat & (np.round(p) != y)).mean()
            rec["max_abs_logit"][e] = float(np.max(np.abs(z)))
            r = p - y.astype(dt)
            dz = r * p * (1 - p) if loss == "mse" else r
            dz = dz / dt(n)
            if grad_format == "float16":
                s = float(loss_scale or 1.0)
                dz32 = dz.astype(np.float32) * np.float32(s)
                dz16 = dz32.astype(np.float16)
                rec["grad_underflow_frac"][e] = float(np.mean((dz16 == 0) & (dz32 != 0)))
                g = (dz16.astype(np.float32) @ A.astype(np.float32)) / np.float32(s)
                g = g.astype(dt)
            else:
                rec["grad_underflow_frac"][e] = 0.0
                g = dz @ A
            g = g + dt(lam) * pen * w
            rec["grad_norm"][e] = float(np.linalg.norm(g.astype(np.float64)))
            rec["weight_norm"][e] = float(np.linalg.norm(w.astype(np.float64)))
            rec["nonfinite_weights"][e] = float(np.sum(~np.isfinite(w)))
            rec["nonfinite_grads"][e] = float(np.sum(~np.isfinite(g)))
            if not (np.isfinite(rec["loss"][e]) and np.all(np.isfinite(g))):
                k = e + 1
                break
            step = dt(lrs[e]) * g
            wn = (w - step).astype(dt)
            delta = wn.astype(np.float64) - w.astype(np.float64)
            rec["update_norm"][e] = float(np.linalg.norm(delta))
            rec["update_ratio"][e] = rec["update_norm"][e] / max(rec["weight_norm"][e], 1e-300)
            intended = step != 0
            rec["frac_unchanged"][e] = float(np.sum((delta == 0) & intended)) / max(
                1, int(np.sum(intended)))
            w = wn
        else:
            k = epochs
    metrics = {name: v[:k].copy() for name, v in rec.items()}
    return {"metrics": metrics, "params": w.astype(np.float64)}


def _trace(name: str, cfg: dict, out: dict, probes: dict | None = None,
           extras: dict | None = None, step_unit: str = "epoch"):
    from stability_lab.precision import FORMATS
    from stability_lab.trace import Trace, environment

    spec = _spec_for(name, cfg)
    fmt = FORMATS[spec.precision]
    tr = Trace(spec=spec, metrics=out["metrics"], probes=probes or {}, meta=environment(),
               step_unit=step_unit, extras={"format": {"name": fmt.name, "eps": fmt.eps,
                                                     "max": fmt.max, "tiny": fmt.tiny},
                                          **(extras or {})},
               final_params=out.get("params"))
    return tr


def _breast_cancer(scale: str = "standardized") -> tuple[np.ndarray, np.ndarray]:
    from stability_lab.tasks import datasets

    ds = datasets.load("breast_cancer")
    return datasets.scale_features(ds.X, scale), ds.y


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "target"])
        for row, label in zip(X, y):
            w.writerow([repr(float(v)) for v in row] + [int(label)])
    return str(path)


# =========================================================================== the scenarios
@scenario(
    "overflow",
    "float16 logistic regression on raw breast-cancer features: the gradient overflows to inf",
)
def _overflow(ws: Path) -> Repro:
    base = RunSpec(precision="float16", lr=0.2, lam=0.1)
    return _spec_scenario("overflow", base, [("precision", ["float16", "float32"])])


@scenario(
    "nan_creation",
    "naive sigmoid-then-log loss in float32: log(1 - p) with p rounded to 1 gives inf, "
    "its gradient NaN",
)
def _nan(ws: Path) -> Repro:
    base = RunSpec(precision="float32", scale="standardized", lr=5.0, lam=0.01, loss="naive")
    return _spec_scenario("nan_creation", base, [("loss", ["naive", "stable"])])


@scenario(
    "divergence",
    "gradient descent with lr 2.5x the stability bound 2/L on a ridge-logistic problem",
)
def _divergence(ws: Path) -> Repro:
    base = RunSpec(data="synthetic:n=500,d=10,kappa=10,seed=0", scale="standardized",
                   lam=1.0)
    base = base.replace(lr=round_sig(2.5 * _lr_bound(base)))
    return _spec_scenario("divergence", base, [])


@scenario(
    "edge_of_stability",
    "lr 6x 2/L with L2 0.1 on standardized breast cancer: the loss oscillates and never settles",
)
def _eos(ws: Path) -> Repro:
    base = RunSpec(scale="standardized", lam=0.1)
    base = base.replace(lr=round_sig(6.0 * _lr_bound(base)))
    return _spec_scenario("edge_of_stability", base, [])


def _spike_run(cfg: dict):
    X, y = _breast_cancer()
    E, at = cfg["epochs"], cfg["restart_at"]
    lr = np.full(E, cfg["lr"])
    ramp = int(cfg.get("warmup", 0))
    peak = cfg["restart_lr"]
    for i in range(at, E):
        lr[i] = peak * min(1.0, (i - at + 1) / ramp) if ramp else peak
    out = train_gd(X, y, lr=lr, epochs=E, precision=cfg["precision"], lam=cfg["lam"])
    return _trace("loss_spike", cfg, out)


@scenario(
    "loss_spike",
    "an lr schedule restart (warm restart to 30x 2/L) on logistic regression: spike, then recovery",
)
def _spike(ws: Path) -> Repro:
    B = _lr_bound(RunSpec(scale="standardized", lam=0.01))
    base = {"data": "breast_cancer standardized", "precision": "float64",
            "lr": round_sig(0.5 * B), "lam": 0.01, "epochs": 200, "restart_at": 60,
            "restart_lr": round_sig(30 * B), "warmup": 0}
    recs = [
        Recommendation("warmup", "warm the restarted lr up over 20 epochs",
                       "the spike starts the epoch the lr jumps to 30x 2/L; a ramp lets the "
                       "weights move to flatter regions before the full step",
                       {"warmup": 20}, (), {"restart_lr": base["restart_lr"]}),
        Recommendation("lower_lr", f"cap the restarted lr at {safe_lr(B):g}",
                       f"2/L = {B:.3g}: no step above it can overshoot the valley",
                       {"restart_lr": safe_lr(B)}, (), {"lr_bound": B}),
    ]
    return _fn_scenario("loss_spike", _spike_run, base, recs)


@scenario(
    "stagnation",
    "bfloat16 weights with a small lr: updates fall below half an ulp and training stops",
)
def _stagnation(ws: Path) -> Repro:
    base = RunSpec(precision="bfloat16", scale="standardized", lr=0.01, lam=0.1, epochs=300)
    B = _lr_bound(base)

    def extra(first: RunResult) -> list[Recommendation]:
        ratio = first.trace.metric("update_ratio")
        return [Recommendation(
            "raise_lr", f"raise lr to {round_sig(0.5 * B):g} (half of 2/L)",
            f"the update/weight ratio is {ratio[-1]:.2g}, below half a bfloat16 ulp "
            f"({2.0 ** -9:.2g}); lr {base.lr:g} is {base.lr / B:.2g} of the stability bound "
            f"2/L = {B:.3g}", {"lr": round_sig(0.5 * B)}, (first.run_id,),
            {"update_ratio": float(ratio[-1]), "lr_bound": B})]

    return _spec_scenario("stagnation", base, [("precision", ["bfloat16", "float32"])], extra)


def _underflow_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n, d = 20000, 10
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d) * 3
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w))).astype(np.float64)
    return X, y


def _underflow_run(cfg: dict):
    X, y = _underflow_data()
    fmt = None if cfg["precision"] == "float64" else cfg.get("grad_format")
    out = train_gd(X, y, lr=cfg["lr"], epochs=cfg["epochs"], precision="float32"
                   if cfg["precision"] != "float64" else "float64", grad_format=fmt,
                   loss_scale=cfg.get("loss_scale"))
    tr = _trace("gradient_underflow", cfg, out)
    tr.extras["format"] = {"name": "float16" if fmt else "float64"}
    return tr


@scenario(
    "gradient_underflow",
    "fp16 gradients without loss scaling (20000 samples): dL/dz = (p - y)/n flushes to zero",
)
def _underflow(ws: Path) -> Repro:
    base = {"data": "generated n=20000 d=10", "precision": "float32", "grad_format": "float16",
            "lr": 4.0, "epochs": 60, "loss_scale": 1.0}
    recs = [Recommendation("loss_scale", "scale the loss by 2^12 before the fp16 backward",
                           "(p - y)/n is below the float16 subnormal minimum 6e-8 for most "
                           "samples; 2^12 moves it into the normal range, and unscaling in "
                           "float32 restores the value", {"loss_scale": 4096.0}, (),
                           {"format_subnormal": 2.0 ** -24})]
    return _fn_scenario("gradient_underflow", _underflow_run, base, recs)


def _cancellation_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    n, d = 2000, 5
    Z = rng.standard_normal((n, d))
    offsets = np.array([2e4, 3e4, 5e4, 1e4, 4e4])
    X = offsets + Z * np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    w = np.array([1.5, -2.0, 1.0, 0.5, -1.0])
    y = (rng.random(n) < 1 / (1 + np.exp(-Z @ w))).astype(np.float64)
    return X, y


def _cancellation_run(cfg: dict):
    from stability_lab import numerics
    from stability_lab.numerics import naive

    X, y = _cancellation_data()
    dt = _dtype(cfg["precision"])
    Xd = X.astype(dt)
    if cfg["variance"] == "naive":
        mean, var = naive.mean_and_variance(Xd, 0)
    else:
        mean, var = numerics.mean_and_variance(Xd, 0)
    ref_mean, ref_var = X.mean(0), X.var(0)
    with np.errstate(all="ignore"):
        rel = np.abs(var.astype(np.float64) - ref_var) / ref_var
        Xs = ((Xd - mean.astype(dt)) / np.sqrt(var).astype(dt)).astype(np.float64)
    probes = {"data": {"variance_rel_error": float(np.max(rel)),
                       "negative_variances": int(np.sum(var < 0)),
                       "max_mean_over_std": float(np.max(np.abs(ref_mean) / np.sqrt(ref_var))),
                       "variance_method": "one-pass E[x^2]-E[x]^2" if cfg["variance"] == "naive"
                       else "two-pass", "format": cfg["precision"],
                       "worst_column": int(np.argmax(rel))}}
    if not np.all(np.isfinite(Xs)):
        Xs = np.nan_to_num(Xs, nan=np.nan)  # NaN features: the run goes NaN, as in production
    out = train_gd(Xs, y, lr=cfg["lr"], epochs=cfg["epochs"], precision=cfg["precision"])
    return _trace("catastrophic_cancellation", cfg, out, probes)


@scenario(
    "catastrophic_cancellation",
    "standardizing float32 features with |mean|/std ~ 1e5 by the one-pass variance E[x^2]-E[x]^2",
)
def _cancellation(ws: Path) -> Repro:
    base = {"data": "generated offsets 1e4..5e4, std 0.5..3", "precision": "float32",
            "variance": "naive", "lr": 2.0, "epochs": 200}
    recs = [Recommendation("two_pass_variance", "compute the variance in two passes",
                           "the one-pass formula subtracts two numbers that agree to "
                           "~(mean/std)^2 = 1e10 relative; the two-pass form subtracts the "
                           "mean first", {"variance": "two-pass"}, (), {})]
    return _fn_scenario("catastrophic_cancellation", _cancellation_run, base, recs)


def _onehot_design(intercept: bool = True, drop_reference: bool = False):
    """The one-hot scenario of :mod:`stability_lab.linalg.onehot`, small and dense: 1000 rows
    drawn from 40 distinct category combinations of 3 features x 5 levels."""
    from stability_lab.linalg.onehot import design_from_codes, make_onehot

    data = make_onehot(n_rows=1000, n_features=3, n_levels=5, n_unique=40, seed=11)
    X = design_from_codes(data.codes, data.n_levels, intercept=intercept,
                          drop_reference=drop_reference).toarray()
    return X, data.y, data.codes


_N_SCORE = 50


def _blowup_run(cfg: dict):
    X, y, codes = _onehot_design(drop_reference=cfg["drop_reference"])
    lam = cfg.get("ridge", 0.0)
    if lam > 0:
        b = np.linalg.solve(X.T @ X + lam * len(y) * np.eye(X.shape[1]), X.T @ y)
    else:
        b = np.linalg.pinv(X, rcond=cfg["rcond"]) @ y
    Xr, _, _ = _onehot_design(drop_reference=True)
    b_ref = np.linalg.lstsq(Xr, y, rcond=None)[0]
    resid = X @ b - y
    # a new row: intercept only (a category unseen in training for every feature)
    new_row = np.zeros(X.shape[1])
    new_row[0] = 1.0
    # 50 scoring rows: distinct training combinations (sorted, so the same rows whatever
    # the training rows' order) with one feature set to an unseen category (all-zero block)
    from stability_lab.linalg.onehot import design_from_codes

    rng = np.random.default_rng([11, 1])
    combos = np.unique(codes, axis=0)
    score_codes = combos[rng.integers(0, len(combos), size=_N_SCORE)].copy()
    score_codes[np.arange(_N_SCORE), rng.integers(0, codes.shape[1], size=_N_SCORE)] = -1
    X_score = design_from_codes(score_codes, 5, drop_reference=cfg["drop_reference"]).toarray()
    with np.errstate(all="ignore"):
        score_overflow = int(np.sum(~np.isfinite(np.exp(X_score @ b))))
    s = np.linalg.svd(X, compute_uv=False)
    probes = {"start": {"cond_X": float(s[0] / s[-1]) if s[-1] > 0 else float("inf")},
              "end": {"weight_norm": float(np.linalg.norm(b)),
                      "max_abs_coef": float(np.max(np.abs(b))),
                      "max_abs_prediction": float(abs(new_row @ b)),
                      "score_overflow": score_overflow, "score_rows": _N_SCORE},
              "reference": {"weight_norm": float(np.linalg.norm(b_ref))},
              "design": {"rank": int(np.linalg.matrix_rank(X)), "columns": int(X.shape[1])}}
    metrics = {"loss": np.array([0.5 * np.mean(resid ** 2)]),
               "weight_norm": np.array([np.linalg.norm(b)]),
               "grad_norm": np.array([np.linalg.norm(X.T @ resid) / len(y)])}
    # one direct solve: the verdict reads the solve, the blow-up is a finding
    return _trace("ill_conditioned_blowup", {**cfg, "lam": lam},
                  {"metrics": metrics, "params": b}, probes,
                  {"solve": {"status": "ok", "converged": None}}, step_unit="solve")


@scenario(
    "ill_conditioned_blowup",
    "least squares by pinv with a cutoff below rounding on one-hot data with an intercept "
    "and duplicated rows (dummy-variable trap)",
)
def _blowup(ws: Path) -> Repro:
    base = {"data": "one-hot 1000x16 (40 unique rows x25)", "precision": "float64",
            "rcond": 1e-18, "drop_reference": False, "ridge": 0.0}
    recs = [
        Recommendation("honest_cutoff", "use the default cutoff rcond = max(n, p) eps",
                       "singular values below max(n, p) eps s_max are rounding noise",
                       {"rcond": 1000 * 2.0 ** -52}, (), {}),
        Recommendation("drop_reference", "drop one reference level per feature",
                       "each feature's block of one-hot columns sums to the intercept column",
                       {"drop_reference": True}, (), {}),
        Recommendation("ridge", "add a ridge penalty lambda = 1e-6",
                       "a penalty makes the solution unique", {"ridge": 1e-6}, (), {}),
    ]
    return _fn_scenario("ill_conditioned_blowup", _blowup_run, base, recs)


def _design_probe(trace) -> None:
    """Rank of the design [X, 1] the run saw (for the rank_deficiency detector)."""
    from stability_lab.tasks import datasets

    spec = trace.spec
    if spec.task != "logistic_regression":
        return
    ds = datasets.load(spec.data, spec.target)
    X = datasets.scale_features(ds.X, spec.scale)
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    const = [ds.feature_names[j] for j in range(X.shape[1]) if np.ptp(ds.X[:, j]) == 0]
    dup = [ds.feature_names[j] for j in range(X.shape[1])
           if any(np.array_equal(ds.X[:, j], ds.X[:, i]) for i in range(j))]
    trace.probes["design"] = {"rank": int(np.linalg.matrix_rank(A)), "columns": A.shape[1],
                              "constant_columns": const, "duplicate_columns": dup,
                              "null_space": "constant or duplicated columns with the intercept"}


@scenario(
    "rank_deficiency",
    "breast cancer with a duplicated column and a constant column, lambda = 0",
)
def _rank(ws: Path) -> Repro:
    from stability_lab.tasks import datasets

    ds = datasets.load("breast_cancer")
    Xbad = np.column_stack([ds.X, ds.X[:, 0], np.full(ds.n, 7.0)])
    bad = _write_csv(ws / "breast_cancer_dup_const.csv", Xbad, ds.y,
                     [*ds.feature_names, "mean radius (copy)", "constant"])
    good = _write_csv(ws / "breast_cancer_clean.csv", ds.X, ds.y, ds.feature_names)
    base = RunSpec(data=bad, target="target", scale="standardized", lr=0.3)

    def extra(first: RunResult) -> list[Recommendation]:
        return [
            Recommendation("drop_columns", "drop the duplicated and constant columns",
                           "'mean radius (copy)' duplicates 'mean radius' and 'constant' is "
                           "constant: [X, 1] has rank 31 < 33 columns",
                           {"data": good}, (first.run_id,), {}),
            Recommendation("l2_1e-3", "add L2 lambda = 1e-3",
                           "the penalized problem has a unique minimizer",
                           {"lambda": 1e-3}, (first.run_id,), {}),
        ]

    return _spec_scenario("rank_deficiency", base, [], extra, post=_design_probe)


@scenario(
    "silent_digit_loss",
    "bfloat16 logistic regression that converges, with weights agreeing with float64 to ~1 digit",
)
def _silent(ws: Path) -> Repro:
    base = RunSpec(precision="bfloat16", scale="standardized", lr=0.2, lam=0.1, epochs=600)

    def extra(first: RunResult) -> list[Recommendation]:
        return [Recommendation("higher_precision", "compute in float32",
                               "float32 carries 7.2 digits", {"precision": "float32"},
                               (first.run_id,), {})]

    return _spec_scenario("silent_digit_loss", base, [], extra)


def _nondet_run(cfg: dict):
    import dataclasses

    import torch

    from stability_lab.diagnosis.signatures import attach_determinism
    from stability_lab.run import engine
    from stability_lab.tasks.logistic import LogisticRegression, predicted_digits

    task = LogisticRegression()
    spec = RunSpec(precision=cfg["precision"], scale="standardized", lam=cfg["lam"],
                   lr=cfg["lr"], epochs=cfg["epochs"])
    prep = task.prepare(spec)
    traces = []
    old = torch.get_num_threads()
    try:
        for order, threads in ((0, 1), (1, 1), (2, 2), (3, 2)):
            torch.set_num_threads(threads)
            perm = np.random.default_rng(order).permutation(prep.X.shape[0]) if order else \
                np.arange(prep.X.shape[0])
            p2 = dataclasses.replace(prep, X=prep.X[perm], y64=prep.y64[perm])
            traces.append(engine.run_one(task, spec, p2))
    finally:
        torch.set_num_threads(old)
    first = traces[0]
    attach_determinism(traces, ["row order", "thread count (1, 2)"], predicted_digits(first))
    first.spec = _spec_for("nondeterminism", cfg)
    return first


@scenario(
    "nondeterminism",
    "float32 full-batch GD at 10x 2/L: permuting the rows (a different summation order) "
    "changes the result in the first digit",
)
def _nondet(ws: Path) -> Repro:
    B = _lr_bound(RunSpec(scale="standardized", lam=0.1))
    base = {"data": "breast_cancer standardized", "precision": "float32", "lam": 0.1,
            "lr": round_sig(10 * B), "epochs": 200}
    recs = [Recommendation("lower_lr", f"lower lr to {safe_lr(B):g}",
                           f"lr {base['lr']:g} is {base['lr'] / B:.3g}x 2/L = {B:.3g}",
                           {"lr": safe_lr(B)}, (), {"lr_bound": B})]
    return _fn_scenario("nondeterminism", _nondet_run, base, recs)


def _saturation_run(cfg: dict):
    X, y = _breast_cancer(cfg["scale"])
    n = X.shape[0]
    A = np.hstack([X, np.ones((n, 1))])
    L = float(np.linalg.eigvalsh(A.T @ A / n)[-1]) / 4.0
    lr = cfg["lr_factor"] * 2.0 / L
    out = train_gd(X, y, lr=lr, epochs=cfg["epochs"], precision=cfg["precision"],
                   loss=cfg["loss"], init_scale=cfg["init_scale"], seed=cfg["seed"])
    tr = _trace("saturation", {**cfg, "lr": lr}, out, {"start": {"lr_bound": 2.0 / L}})
    return tr


@scenario(
    "saturation",
    "a sigmoid classifier trained with squared error on raw features: wrong-side outputs "
    "saturate at exactly 0 or 1 and stop learning",
)
def _saturation(ws: Path) -> Repro:
    base = {"data": "breast_cancer raw", "precision": "float32", "loss": "mse", "scale": "raw",
            "lr_factor": 0.5, "epochs": 200, "init_scale": 0.3, "seed": 0}
    recs = [
        Recommendation("logloss", "train with the log-loss (BCE with logits)",
                       "its gradient p - y stays +-1 for saturated wrong-side samples",
                       {"loss": "logloss"}, (), {}),
        Recommendation("scale_features", "standardize the features",
                       "logits start near 0, far from saturation", {"scale": "standardized"},
                       (), {}),
    ]
    return _fn_scenario("saturation", _saturation_run, base, recs)


#: the run function of each scenario on this module's own trainer, by name: a stored
#: run of task ``catalogue:NAME`` is re-run by ``RUNNERS[NAME](config)`` (``portability``)
RUNNERS: dict[str, Callable[[dict], Any]] = {
    "loss_spike": _spike_run, "gradient_underflow": _underflow_run,
    "catastrophic_cancellation": _cancellation_run, "ill_conditioned_blowup": _blowup_run,
    "nondeterminism": _nondet_run, "saturation": _saturation_run,
}


def evidence_line(f: Finding) -> str:
    onset = "" if f.onset is None else f" (onset {f.onset})"
    return f"{f.signature}{onset}: {f.message}"
