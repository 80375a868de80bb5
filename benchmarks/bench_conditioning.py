"""Benchmark of stability_lab.linalg.conditioning: time, peak memory, estimate vs exact.

Run: ``python benchmarks/bench_conditioning.py`` (add ``--skip-big`` to leave out the
1,000,000 x 10,000 cases). Each big case runs in a fresh child process, first, while this
parent is small, and reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; a forked child also counts the parent's
pages resident at exec, hence the big cases first). Prints the BLAS library, thread
count and OPENBLAS_CORETYPE with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np
from _settings import settings


def big_case(kind: str) -> dict:
    from stability_lab.linalg.conditioning import condition_info
    from stability_lab.linalg.onehot import make_onehot

    t0 = time.perf_counter()
    d = make_onehot(1_000_000, 10, 1000, n_unique=50_000, seed=0,
                    drop_reference=(kind == "drop_reference"))
    t_gen = time.perf_counter() - t0
    info = condition_info(d.X)
    return {"case": kind, "shape": list(d.X.shape), "nnz": int(d.X.nnz),
            "generate_s": round(t_gen, 2), "condition_s": round(info.time_s, 2),
            "kappa": info.kappa, "kappa_effective": info.kappa_effective,
            "rank_deficiency": info.rank_deficiency, "method": info.method,
            "relative_error_bound": info.relative_error_bound,
            "estimator": info.estimator,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def small_cases() -> list[dict]:
    from stability_lab.linalg.conditioning import condition_info
    from stability_lab.linalg.onehot import make_onehot

    rows = []
    for m, nf, nl, drop in [(20_000, 5, 40, True), (20_000, 5, 40, False),
                            (100_000, 10, 100, True), (100_000, 10, 100, False)]:
        d = make_onehot(m, nf, nl, n_unique=m // 10, seed=1, drop_reference=drop)
        t0 = time.perf_counter()
        est = condition_info(d.X, method="gram")
        t_est = time.perf_counter() - t0
        t0 = time.perf_counter()
        ex = condition_info(d.X.toarray(), method="svd")
        t_ex = time.perf_counter() - t0
        ratio = (est.kappa / ex.kappa if math.isfinite(ex.kappa)
                 else est.kappa_effective / ex.kappa_effective)
        rows.append({"case": f"one-hot {m}x{d.X.shape[1]} "
                             f"({'reference dropped' if drop else 'intercept+full'})",
                     "estimate": est.kappa, "exact": ex.kappa,
                     "rank_def_est": est.rank_deficiency, "rank_def_exact": ex.rank_deficiency,
                     "ratio": ratio, "t_estimate_s": round(t_est, 2),
                     "t_exact_s": round(t_ex, 2)})
    rng = np.random.default_rng(0)
    for kappa in (1e2, 1e4, 1e6):
        m, n = 20_000, 500
        U, _ = np.linalg.qr(rng.standard_normal((m, n)))
        V, _ = np.linalg.qr(rng.standard_normal((n, n)))
        A = (U * np.logspace(0, -math.log10(kappa), n)) @ V.T
        t0 = time.perf_counter()
        est = condition_info(A, method="gram")
        t_est = time.perf_counter() - t0
        rows.append({"case": f"dense U diag(s) V^T {m}x{n}", "estimate": est.kappa,
                     "exact": kappa, "rank_def_est": est.rank_deficiency, "rank_def_exact": 0,
                     "ratio": est.kappa / kappa, "t_estimate_s": round(t_est, 2),
                     "t_exact_s": None})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--child", choices=["drop_reference", "full"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(big_case(args.child)))
        return 0
    print(settings())
    if not args.skip_big:
        print("\n1,000,000 x 10,000 one-hot designs (10 features x 1000 levels, 50,000 "
              "distinct rows), each in a fresh process:")
        for kind in ("drop_reference", "full"):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", kind],
                                 capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            r = json.loads(out.stdout)
            print(f"  {kind}: shape {r['shape']}, nnz {r['nnz']}, generate {r['generate_s']} s,"
                  f" condition_number {r['condition_s']} s (process wall {wall:.1f} s), peak "
                  f"RSS {r['peak_rss_gib']:.2f} GiB; kappa {r['kappa']}, rank deficiency "
                  f"{r['rank_deficiency']}, kappa_effective {r['kappa_effective']:.6g}, "
                  f"relative error bound {r['relative_error_bound']}")
    print("\nestimate (method='gram') vs exact (dense LAPACK SVD):")
    print(f"{'case':<48} {'estimate':>12} {'exact':>12} {'ratio':>10} {'rankdef':>8} "
          f"{'t_est':>6} {'t_exact':>7}")
    for r in small_cases():
        rd = f"{r['rank_def_est']}/{r['rank_def_exact']}"
        te = "" if r["t_exact_s"] is None else f"{r['t_exact_s']:7.2f}"
        print(f"{r['case']:<48} {r['estimate']:12.6g} {r['exact']:12.6g} "
              f"{r['ratio']:10.7f} {rd:>8} {r['t_estimate_s']:6.2f} {te}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
