"""``stability-lab evaluate``: score the lab's judgments on the labeled corpus.

Runs every scenario of ``benchmarks/diagnosis_corpus`` (or ``--corpus DIR``) the way
``stability-lab run`` would (verification included when it is small), and prints the
scores per split (verdict accuracy, signature precision/recall, action
precision/recall, false alarms on healthy cases), the verdict confusion table and one
line per scenario. ``--fast`` runs the quick subset CI runs; exit code 1 when the
targets (verdict accuracy >= 95%, action recall >= 90%, no false alarm) are missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stability_lab.errors import UsageError

HELP = "score verdicts, findings and recommendations on the labeled diagnosis corpus"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="folder with scenarios.json (default: benchmarks/diagnosis_corpus)")
    p.add_argument("--fast", action="store_true", help="only the quick subset (seconds)")
    p.add_argument("--split", default="all", choices=("all", "dev", "held_out"),
                   help="score one split only")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help="only this scenario (repeatable)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N scenarios at a time in separate processes")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")


def main(args: argparse.Namespace) -> int:
    from stability_lab.evaluate import DEFAULT_CORPUS, evaluate, format_report, load

    corpus = Path(args.corpus) if args.corpus else DEFAULT_CORPUS
    if not (corpus / "scenarios.json").is_file():
        raise UsageError(f"No corpus at {str(corpus)!r} (it needs scenarios.json); pass "
                         "--corpus DIR or run from a checkout of the repository.")
    known = {s["name"] for s in load(corpus)}
    for name in args.scenario:
        if name not in known:
            raise UsageError(f"Unknown scenario {name!r}; the corpus has: "
                             f"{', '.join(sorted(known))}.")

    def progress(i, n, score):
        if not args.json:
            sys.stderr.write(f"[{i}/{n}] {score.name}: {score.verdict}\n")

    if args.jobs < 1:
        raise UsageError(f"--jobs N needs N >= 1. Got {args.jobs}.")
    rep = evaluate(corpus, fast=args.fast, split=args.split, names=args.scenario or None,
                   progress=progress, jobs=args.jobs)
    if args.json:
        json.dump(rep, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(rep) + "\n")
    return 0 if rep["meets_targets"] else 1
