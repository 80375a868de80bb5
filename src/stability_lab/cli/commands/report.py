"""``stability-lab report SWEEP_ID``: a stored sweep's report, rebuilt from the store.

Prints the terminal report (header, stability map, run lines, ...) as the sweep printed
it when it ran, or ``--json`` the same document ``run --json`` prints, and writes
``--html FILE``. Everything comes from ``--out DIR/lab.sqlite`` (report/stored.py), so a
sweep run earlier, or on another machine whose store was copied here, renders the same.
torch is not imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from stability_lab.errors import UsageError

HELP = "print (or --html FILE write) the report of a stored sweep, rebuilt from the store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from stability_lab.cli.commands.run import add_view_arguments

    p.add_argument("sweep_id", metavar="SWEEP_ID",
                   help="a sweep number as 'stability-lab run' prints it, or 'last'")
    p.add_argument("--out", default="lab-runs", metavar="DIR", help="folder of the run store")
    p.add_argument("--html", metavar="FILE", help="write the HTML report to FILE")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    add_view_arguments(p)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stability_lab.report.stored import load_result, parse_sweep_id
    from stability_lab.store import Store
    from stability_lab.cli.commands.run import view_options

    if args.html and not Path(args.html).parent.is_dir():
        raise UsageError(f"Cannot write the HTML report to {args.html!r}: folder "
                         f"{str(Path(args.html).parent)!r} does not exist; create it or pick "
                         "another path.")
    with Store(args.out, create=False) as store:
        sweep_id = parse_sweep_id(args.sweep_id, store)
        result = load_result(store, sweep_id)
    view = view_options(args, result.sweep.axis_names)
    note = getattr(result, "note", None)
    if args.html:
        from stability_lab.report.html import write_html

        write_html(result, args.html, map_axes=view["map_axes"])
    if args.json:
        doc = result.to_dict()
        if note:
            doc["sweep"]["note"] = note
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from stability_lab.report.terminal import print_sweep

        print_sweep(result, note=note, **view)
        if args.html:
            sys.stdout.write(f"HTML report: {args.html}\n")
    return 0
