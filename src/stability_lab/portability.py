"""How portable is a stored run? Re-run it under other BLAS kernels, thread counts and
row orders, and say how many digits survive.

:func:`portability` re-runs one stored run (same spec: data, initial weights, seed) in
subprocesses, one per (OpenBLAS kernel, thread count):

- **kernels**: every ``OPENBLAS_CORETYPE`` in :data:`CANDIDATE_KERNELS` (and the one
  OpenBLAS picks by itself). :func:`probe_kernels` starts a subprocess per setting, runs
  a small matrix product and asks ``threadpoolctl`` which kernel OpenBLAS really
  selected: a name OpenBLAS does not know falls back to the default pick, a kernel the
  CPU cannot execute (SkylakeX on a CPU without AVX-512) dies with SIGILL and is
  reported as rejected, and settings that select the same kernel are kept once;
- **threads**: 1, 2 and all cores (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS`` and ``STABILITY_LAB_TORCH_THREADS`` set alike; duplicates dropped);
- **row order**: the training rows as stored, and one fixed permutation of them
  (:data:`PERMUTATION_SEED`), everything else the same.

Per variant it reports the verdict, the final loss, and the digits of agreement (LRE,
capped at 15) of the final loss and of the coefficients with the stored run and with
the run re-done in float64 (the reference), plus ``cond * u`` (the probe's condition
number times the unit roundoff of the run's format): ``-log10(cond * u)`` is about the
number of digits a perturbation of the data at the rounding level leaves, which is what
different summation orders amount to. A verdict that differs from the stored one is a
*verdict change*.

The subprocess side is ``python -m stability_lab.portability`` (JSON in on stdin, JSON
out on the last line of stdout). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stability_lab.errors import UsageError

__all__ = ["CANDIDATE_KERNELS", "PERMUTATION_SEED", "probe_kernels", "thread_counts",
           "portability", "format_portability"]

#: ``OPENBLAS_CORETYPE`` values tried ("" = unset: OpenBLAS's own pick for this CPU).
CANDIDATE_KERNELS: tuple[str, ...] = ("", "Haswell", "SkylakeX", "Zen", "Sandybridge",
                                      "Nehalem", "Prescott")
#: seed of the fixed row permutation of the "permuted" variants
PERMUTATION_SEED = 20240611
#: seconds one re-run subprocess may take
WORKER_TIMEOUT_S = 900

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "STABILITY_LAB_TORCH_THREADS")

_PROBE_CODE = r"""
import json, numpy as np, scipy.linalg
a = np.arange(1.0, 65.0).reshape(8, 8) + np.eye(8)
b = (a @ a.T).astype(np.float32) @ a.astype(np.float32).T
c = scipy.linalg.lstsq(a, a[:, 0])[0]
from threadpoolctl import threadpool_info
arch = sorted({i.get("architecture") or "?" for i in threadpool_info()
               if i.get("internal_api") == "openblas"})
print(json.dumps({"architecture": arch, "ok": bool(np.isfinite(b).all() and np.isfinite(c).all())}))
"""


def _clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", *_THREAD_VARS)}
    env.update({k: v for k, v in overrides.items() if v != ""})
    return env


@dataclass
class Kernel:
    """One ``OPENBLAS_CORETYPE`` setting and what OpenBLAS made of it."""

    requested: str  # "" = unset
    selected: str | None  # the kernel threadpoolctl reports, None when rejected
    note: str = ""
    aliases: list[str] = field(default_factory=list)  # other settings selecting it

    @property
    def label(self) -> str:
        return self.requested or "unset"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.label, "selected": self.selected, "note": self.note,
                "same_as": [a or "unset" for a in self.aliases]}


def probe_kernels(candidates: tuple[str, ...] | list[str] = CANDIDATE_KERNELS,
                  ) -> tuple[list[Kernel], list[Kernel]]:
    """(distinct usable kernels, rejected settings), each probed in a subprocess."""
    usable: dict[str, Kernel] = {}
    rejected: list[Kernel] = []
    for name in candidates:
        try:
            out = subprocess.run([sys.executable, "-c", _PROBE_CODE], capture_output=True,
                                 text=True, timeout=120,
                                 env=_clean_env(OPENBLAS_CORETYPE=name,
                                                OPENBLAS_NUM_THREADS="1"))
        except subprocess.TimeoutExpired:
            rejected.append(Kernel(name, None, "probe timed out"))
            continue
        if out.returncode != 0:
            why = (f"killed by signal {-out.returncode}"
                   + (" (illegal instruction: this CPU lacks the kernel's instruction set)"
                      if out.returncode == -4 else "")
                   if out.returncode < 0 else f"exit code {out.returncode}")
            rejected.append(Kernel(name, None, why))
            continue
        info = json.loads(out.stdout.strip().splitlines()[-1])
        arch = "+".join(info["architecture"]) or "not OpenBLAS"
        if arch in usable:
            usable[arch].aliases.append(name)
            continue
        note = "" if not name or name.lower() == arch.lower() else f"{name} selects {arch}"
        usable[arch] = Kernel(name, arch, note)
    return list(usable.values()), rejected


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_counts(cpus: int | None = None) -> list[int]:
    """1, 2 and all cores, without duplicates."""
    n = cpus or os.cpu_count() or 1
    return sorted({1, min(2, n), n})


# ------------------------------------------------------------------ the re-run (worker)


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(PERMUTATION_SEED).permutation(n)


def _install_row_permutation(task: str) -> bool:
    """Patch the loaders ``task`` reads its rows from so they come permuted; False when
    the task's rows cannot be permuted from outside (deep nets, user models)."""
    from stability_lab.tasks import datasets

    def permuted(ds):
        idx = _permutation(ds.n)
        return datasets.Dataset(ds.name, ds.X[idx], ds.y[idx], ds.feature_names,
                                ds.target_name, ds.classes)

    if task == "logistic_regression":
        real_load = datasets.load
        datasets.load = lambda *a, **k: permuted(real_load(*a, **k))
        return True
    if task == "linear_regression":
        from stability_lab.tasks import linear_regression as L

        real = L._load

        def load(spec):
            name, X, y, certified, problem = real(spec)
            idx = _permutation(X.shape[0])
            return name, X[idx], y[idx], certified, problem

        L._load = load
        return True
    if task == "catalogue:ill_conditioned_blowup":
        from stability_lab.catalogue import ill_conditioned_blowup as C

        real_design = C.onehot_design

        def design(*a, **k):
            X, y, codes = real_design(*a, **k)
            idx = _permutation(X.shape[0])
            return X[idx], y[idx], codes[idx]

        C.onehot_design = design
        return True
    return False


def _run_spec(spec_dict: dict[str, Any], run_id: str | None = None):
    """Run one spec as ``stability-lab run`` would (no cohort) and diagnose it."""
    from stability_lab.diagnosis.record import diagnose_trace
    from stability_lab.spec import RunSpec

    spec = RunSpec.from_dict(spec_dict)
    if spec.task.startswith("catalogue:"):
        from stability_lab import catalogue

        name = spec.task.partition(":")[2]
        runner = catalogue.RUNNERS.get(name)
        if runner is None:
            raise UsageError(f"Run of the catalogue scenario {name!r} cannot be re-run on its "
                             "own; re-run its lab-task runs instead.")
        cfg = {**dict(spec.params), "precision": spec.precision, "lr": spec.lr,
               "lam": spec.lam, "seed": spec.seed}
        trace = runner(cfg)
    else:
        from stability_lab.run import engine

        trace = engine.run_specs([spec], cohorts=False)[0]
    if run_id is not None and trace.spec.run_id != run_id:
        raise UsageError(f"Re-running run {run_id} gave a different spec "
                         f"({trace.spec.run_id}); it cannot be reproduced by this version.")
    return diagnose_trace(trace)


def _result_dict(res) -> dict[str, Any]:
    tr = res.trace
    params = tr.final_params
    end = {k: v for k, v in (tr.probes.get("end") or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"verdict": res.verdict.status, "final_loss": tr.final_loss,
            "coef": None if params is None else [float(v) for v in np.ravel(params)],
            "probes_end": end, "error": tr.error}


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    from threadpoolctl import threadpool_info

    out: dict[str, Any] = {}
    spec = job["spec"]
    if job.get("reference"):
        out["reference"] = _result_dict(_run_spec(job["reference"]))
    out["original"] = _result_dict(_run_spec(spec, job.get("run_id")))
    if job.get("permute"):
        if _install_row_permutation(spec["task"]):
            out["permuted"] = _result_dict(_run_spec(spec))
        else:
            out["permuted"] = None
    infos = threadpool_info()
    out["blas"] = sorted({f"{i.get('internal_api')} {i.get('architecture') or ''}".strip()
                          for i in infos})
    out["blas_threads"] = max((i.get("num_threads") or 0 for i in infos), default=0)
    torch = sys.modules.get("torch")
    out["torch_threads"] = torch.get_num_threads() if torch is not None else None
    return out


# ------------------------------------------------------------------ the driver


def _digits(a: Any, b: Any) -> float | None:
    """Digits of agreement of a with b (normwise LRE, 0..15); None when either is absent."""
    from stability_lab.linalg.records import lre

    if a is None or b is None:
        return None
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return None
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 15.0 if np.array_equal(a, b, equal_nan=True) else 0.0
    if a.size == 1:
        return float(lre(a, b)[0])
    nb = float(np.linalg.norm(b))
    err = float(np.linalg.norm(a - b))
    if err == 0:
        return 15.0
    return float(min(15.0, max(0.0, -math.log10(err / nb) if nb > 0 else -math.log10(err))))


def _cond_u(rec: dict[str, Any]) -> tuple[float | None, str | None, float | None]:
    from stability_lab.precision import FORMATS

    probes = (rec.get("probes") or {}).get("start") or {}
    name = next((k for k in ("cond_XtX", "cond_X", "cond") if k in probes), None)
    fmt = FORMATS.get(rec["spec"].get("precision") or "float64")
    u = fmt.eps / 2 if fmt is not None else None
    if name is None or u is None:
        return None, None, u
    try:
        cond = float(probes[name])
    except (TypeError, ValueError):
        return None, None, u
    return cond, name, u


def _spawn(job: dict[str, Any], kernel: str, threads: int) -> dict[str, Any]:
    t = str(threads)
    env = _clean_env(OPENBLAS_CORETYPE=kernel, **{v: t for v in _THREAD_VARS})
    try:
        out = subprocess.run([sys.executable, "-m", "stability_lab.portability"],
                             input=json.dumps(job), capture_output=True, text=True, env=env,
                             timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {WORKER_TIMEOUT_S} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        err = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return {"failed": err}
    return json.loads(lines[-1])


def portability(run_id: str, out: str = "lab-runs", *, kernels: list[str] | None = None,
                threads: list[int] | None = None, permute: bool = True,
                progress=None) -> dict[str, Any]:
    """Re-run stored run ``run_id`` of the store in ``out`` under each variant (see the
    module docstring) and return the report as a JSON-ready dict."""
    from stability_lab.formatting import jsonable
    from stability_lab.store import Store

    with Store(out, create=False) as store:
        rec = store.load_run(run_id)
    if rec is None:
        raise UsageError(f"No run {run_id!r} in {out}/lab.sqlite; pass an id printed by "
                         "'stability-lab run' or 'repro' (a unique prefix is enough) or the "
                         "right --out.")
    spec = rec["spec"]
    stored_coef = (rec.get("extras") or {}).get("final_params")
    usable, rejected = probe_kernels(tuple(kernels) if kernels else CANDIDATE_KERNELS)
    if not usable:
        raise UsageError("None of the OpenBLAS kernels asked for runs on this machine: "
                         + "; ".join(f"{k.label}: {k.note}" for k in rejected))
    counts = sorted(set(threads)) if threads else thread_counts()
    ref_spec = _reference_spec(spec)
    variants: list[dict[str, Any]] = []
    reference = None
    failures = []
    jobs = [(k, t) for k in usable for t in counts]
    for i, (k, t) in enumerate(jobs):
        if progress:
            progress(i, len(jobs), f"{k.selected} kernel, {t} thread(s)")
        job = {"spec": spec, "run_id": rec["id"], "permute": permute,
               "reference": ref_spec if reference is None and ref_spec is not None else None}
        res = _spawn(job, k.requested, t)
        if "failed" in res:
            failures.append({"kernel": k.selected, "threads": t, "error": res["failed"]})
            continue
        if res.get("reference") is not None:
            reference = res["reference"]
        for order in ("original", "permuted"):
            r = res.get(order)
            if r is None:
                continue
            variants.append({"kernel": k.selected, "requested": k.label, "threads": t,
                             "order": order, "verdict": r["verdict"],
                             "final_loss": r["final_loss"], "coef": r["coef"],
                             "probes_end": r["probes_end"], "error": r["error"],
                             "blas": res.get("blas"), "torch_threads": res.get("torch_threads")})
    if progress:
        progress(len(jobs), len(jobs), "done")
    if not variants:
        raise UsageError(f"Could not re-run run {rec['id']}: "
                         + "; ".join(f["error"] for f in failures))
    ref_coef = reference["coef"] if reference else (
        stored_coef if spec.get("precision") == "float64" else None)
    ref_loss = reference["final_loss"] if reference else None
    for v in variants:
        coef = v.pop("coef")
        v["max_abs_coef"] = (float(np.max(np.abs(coef))) if coef else None)
        v["digits"] = {
            "loss_vs_run": _digits(v["final_loss"], rec.get("final_loss")),
            "coef_vs_run": _digits(coef, stored_coef),
            "loss_vs_float64": _digits(v["final_loss"], ref_loss),
            "coef_vs_float64": _digits(coef, ref_coef),
        }
        v["coef_identical_to_run"] = bool(coef is not None and stored_coef is not None
                                          and np.array_equal(np.asarray(coef),
                                                             np.asarray(stored_coef, float)))
        v["verdict_changed"] = v["verdict"] != rec.get("verdict")
    cond, cond_name, u = _cond_u(rec)
    changes = [{"kernel": v["kernel"], "threads": v["threads"], "order": v["order"],
                "stored": rec.get("verdict"), "got": v["verdict"]}
               for v in variants if v["verdict_changed"]]
    coef_d = [v["digits"]["coef_vs_run"] for v in variants
              if v["digits"]["coef_vs_run"] is not None]
    loss_d = [v["digits"]["loss_vs_run"] for v in variants
              if v["digits"]["loss_vs_run"] is not None]
    predicted = (float(min(15.0, max(0.0, -math.log10(cond * u))))
                 if cond and u and math.isfinite(cond) and cond > 0 else
                 (0.0 if cond is not None and not math.isfinite(cond) else None))
    doc = {
        "run_id": rec["id"], "task": rec["task"], "spec": spec,
        "stored": {"verdict": rec.get("verdict"), "final_loss": rec.get("final_loss"),
                   "environment": rec.get("meta") or {}},
        "kernels": [k.to_dict() for k in usable],
        "rejected_kernels": [k.to_dict() for k in rejected],
        "threads": counts,
        "permuted_rows": permute and any(v["order"] == "permuted" for v in variants),
        "permutation_seed": PERMUTATION_SEED,
        "reference": ({"precision": "float64", "verdict": reference["verdict"],
                       "final_loss": reference["final_loss"]} if reference else None),
        "conditioning": {"name": cond_name, "value": cond, "u": u,
                         "cond_u": cond * u if cond is not None and u else None,
                         "predicted_digits": predicted},
        "spread": {"coef_digits_min": min(coef_d) if coef_d else None,
                   "loss_digits_min": min(loss_d) if loss_d else None,
                   "identical": bool(coef_d) and all(v["coef_identical_to_run"]
                                                     for v in variants)},
        "variants": variants,
        "verdict_changes": changes,
        "failed_variants": failures,
    }
    doc["explanation"] = _explain(doc)
    return jsonable(doc)


def _reference_spec(spec: dict[str, Any]) -> dict[str, Any] | None:
    ref = dict(spec)
    if ref.get("policy"):
        ref["policy"] = "float64"
    ref["precision"] = "float64"
    return ref


def _explain(doc: dict[str, Any]) -> str:
    c = doc["conditioning"]
    s = doc["spread"]
    n = len(doc["variants"])
    if s["identical"]:
        head = f"all {n} variants give the stored coefficients bit for bit"
    elif s["coef_digits_min"] is not None:
        head = (f"the coefficients agree with the stored run to at least "
                f"{s['coef_digits_min']:.1f} digits across {n} variants")
    elif s["loss_digits_min"] is not None:
        head = (f"the final loss agrees with the stored run to at least "
                f"{s['loss_digits_min']:.1f} digits across {n} variants")
    else:
        head = f"{n} variants"
    if c["cond_u"] is not None:
        if math.isfinite(c["value"]):
            why = (f"{c['name']} * u = {c['value']:.2g} * {c['u']:.2g} = {c['cond_u']:.2g}: "
                   f"rounding-level differences (summation order) can leave as few as "
                   f"{c['predicted_digits']:.1f} digits")
        else:
            why = (f"{c['name']} is infinite (rank-deficient): rounding-level differences "
                   "can change the result without bound")
        observed = s["coef_digits_min"] if s["coef_digits_min"] is not None else s[
            "loss_digits_min"]
        if observed is not None and c["predicted_digits"] is not None:
            if observed >= c["predicted_digits"] - 0.5:
                why += " (the spread is within what conditioning explains)"
            else:
                why += (f" ({observed:.1f} digits survive, fewer than conditioning explains: "
                        "a step amplifies rounding beyond cond * u)")
        head += f"; {why}"
    if doc["verdict_changes"]:
        head += f"; VERDICT CHANGES in {len(doc['verdict_changes'])} variant(s)"
    else:
        head += "; the verdict is the same in every variant"
    return head


def format_portability(doc: dict[str, Any]) -> str:
    from stability_lab.formatting import fmt_num
    from stability_lab.report.tables import table

    def d(x):
        return "-" if x is None else f"{x:.1f}"

    lines = [f"Run {doc['run_id']}  task={doc['task']}  stored verdict: "
             f"{doc['stored']['verdict']}  final loss {fmt_num(doc['stored']['final_loss'])}"]
    ks = ", ".join(k["selected"] + (f" (OPENBLAS_CORETYPE={k['requested']}"
                                    + (", also " + ", ".join(k["same_as"]) if k["same_as"]
                                       else "") + ")")
                   for k in doc["kernels"])
    lines.append(f"Kernels: {ks}")
    for k in doc["rejected_kernels"]:
        lines.append(f"Not runnable here: OPENBLAS_CORETYPE={k['requested']}: {k['note']}")
    lines.append(f"Threads: {', '.join(map(str, doc['threads']))}; rows: stored order"
                 + (f" and one fixed permutation (seed {doc['permutation_seed']})"
                    if doc["permuted_rows"] else " only (this task's rows are not permuted)"))
    varying = []
    keys = sorted({k for v in doc["variants"] for k in (v["probes_end"] or {})})
    for key in [k for k in keys if k != "max_abs_coef"]:
        # a column only for a figure that differs at the printed precision
        vals = {fmt_num(v["probes_end"].get(key)) for v in doc["variants"]}
        if len(vals) > 1:
            varying.append(key)
    varying = varying[:3]
    header = ["kernel", "threads", "rows", "verdict", "final loss", "loss digits run/f64",
              "coef digits run/f64", "max|coef|", *varying]
    rows = []
    for v in doc["variants"]:
        dg = v["digits"]
        rows.append([v["kernel"], str(v["threads"]), v["order"],
                     v["verdict"] + (" (CHANGED)" if v["verdict_changed"] else ""),
                     fmt_num(v["final_loss"]),
                     f"{d(dg['loss_vs_run'])} / {d(dg['loss_vs_float64'])}",
                     f"{d(dg['coef_vs_run'])} / {d(dg['coef_vs_float64'])}",
                     fmt_num(v["max_abs_coef"]) if v["max_abs_coef"] is not None else "-",
                     *[fmt_num(v["probes_end"].get(k)) for k in varying]])
    lines += ["", table(header, rows), ""]
    if doc["reference"]:
        lines.append(f"float64 reference: {doc['reference']['verdict']}, final loss "
                     f"{fmt_num(doc['reference']['final_loss'])}")
    for f in doc["failed_variants"]:
        lines.append(f"Failed: {f['kernel']} {f['threads']} thread(s): {f['error']}")
    lines.append("Portability: " + doc["explanation"])
    return "\n".join(lines) + "\n"


def _main() -> int:
    job = json.loads(sys.stdin.read())
    result = _worker(job)
    sys.stdout.write("\n" + json.dumps(result, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
