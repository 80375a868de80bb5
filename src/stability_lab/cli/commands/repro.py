"""``stability-lab repro NAME``: reproduce a failure signature and verify its fixes."""

from __future__ import annotations

import argparse
import json
import sys

from stability_lab.errors import UsageError

HELP = ("reproduce a failure signature (see --list): show its evidence, the "
        "recommendations, and the verified before/after of each fix")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="signature name (see --list)")
    p.add_argument("--list", action="store_true", help="list the signatures, one per line")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument("--out", default="lab-runs", metavar="DIR",
                   help="run store folder (baseline and re-runs are saved there)")


def main(args: argparse.Namespace) -> int:
    from stability_lab import catalogue

    if args.list:
        for sc in catalogue.SCENARIOS.values():
            sys.stdout.write(f"{sc.name}  {sc.description}\n")
        return 0
    if not args.name:
        raise UsageError("repro needs a signature NAME or --list; e.g. stability-lab repro "
                         f"overflow. Valid names: {', '.join(catalogue.names())}.")
    catalogue.get(args.name)  # unknown name: one-line error listing the valid ones
    result = catalogue.repro(args.name, args.out)
    _store(result, args.out)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_repro(result))
    return 0


def _store(result, out: str) -> None:
    from stability_lab.diagnosis.record import record_of
    from stability_lab.store import Store

    with Store(out) as store:
        for res in result.results:
            store.save_run(record_of(res), res.trace.metrics)
        for row in result.verification:
            store.save_verification(row["run_id"], row["mitigation"], row["fixed_run_id"], row)


def format_repro(result) -> str:
    from stability_lab.catalogue import evidence_line, get
    from stability_lab.report.verification import format_verification

    sc = get(result.signature)
    b = result.baseline
    out = [f"Signature: {sc.name}: {sc.description}",
           f"Baseline run {b.run_id}: {b.verdict}"]
    status = "reproduced" if result.reproduced else "NOT reproduced"
    out.append(f"Findings ({sc.name} {status}):")
    for f in result.findings or []:
        out.append(f"  - {evidence_line(f)}")
    if not result.findings:
        out.append("  - none")
    out.append("Recommendations:")
    for rec in result.recommendations:
        out.append(f"  - {rec.text}: {rec.reason}")
    out.append("")
    out.append(format_verification(result.verification))
    return "\n".join(out) + "\n"
