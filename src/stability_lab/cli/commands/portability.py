"""``stability-lab portability RUN_ID``: how much of a stored run survives another machine.

Re-runs the stored run in subprocesses under each OpenBLAS kernel this machine can
execute (what ``OPENBLAS_CORETYPE`` really selects, duplicates dropped), 1, 2 and all
threads, and the training rows in their stored order and permuted; prints per variant
the verdict, the final loss, the digits of agreement with the stored run and with the
float64 reference, and the ``cond * u`` that explains the spread. See
:mod:`stability_lab.portability`.
"""

from __future__ import annotations

import argparse
import json
import sys

from stability_lab.errors import UsageError

HELP = ("re-run a stored run under every OpenBLAS kernel, thread count and a row "
        "permutation; report the digits that survive and any verdict that changes")


def _threads(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or any(t < 1 for t in out):
        raise UsageError(f"--threads takes positive integers separated by commas, e.g. "
                         f"1,2; got {text!r}.")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID", help="a stored run's id (or a unique prefix)")
    p.add_argument("--out", default="lab-runs", metavar="DIR", help="folder of the run store")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--kernels", metavar="LIST",
                   help="OPENBLAS_CORETYPE values to try, comma-separated ('unset' = "
                        "OpenBLAS's own pick; default: unset,Haswell,SkylakeX,Zen,"
                        "Sandybridge,Nehalem,Prescott)")
    p.add_argument("--threads", metavar="LIST", help="thread counts (default: 1, 2 and all)")
    p.add_argument("--no-permute", action="store_true",
                   help="skip the permuted-rows variants")


def main(args: argparse.Namespace) -> int:
    threads = _threads(args.threads) if args.threads else None
    kernels = None
    if args.kernels:
        kernels = ["" if k.strip().lower() in ("unset", "default", "") else k.strip()
                   for k in args.kernels.split(",")]
    from stability_lab.portability import format_portability, portability
    from stability_lab.progress import Progress

    # a bar on a terminal only (nothing in a pipe or with --json), as the sweep's
    progress = Progress(unit="variants", plain=False) if not args.json else None
    try:
        doc = portability(args.run_id, args.out, kernels=kernels, threads=threads,
                          permute=not args.no_permute, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_portability(doc))
    return 0
