"""``stability-lab run``: the main job.

Runs a sweep of matched runs, prints one ``Run ...: verdict`` line per run, the
condition numbers, the recommendations with their numbers, and a table; stores every
run in SQLite under ``--out``. ``--json`` prints one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from stability_lab.errors import UsageError
from stability_lab.spec.axes import AXES, axis, parse_sweep_arg

HELP = "run a task under a sweep of matched configurations and diagnose every run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="logistic_regression",
                   help="logistic_regression (default), linear_regression, mlp, attention, "
                        "or your own model as path/to/file.py:build or package.module:build "
                        "(this imports that file or module and calls build(), i.e. RUNS ITS "
                        "CODE with your permissions: only pass files you trust)")
    p.add_argument("--data", default=None,
                   help="breast_cancer (default), digits, "
                        "synthetic:n=2000,d=20,kappa=1e8,seed=0, or a CSV path (with --target)")
    p.add_argument("--target", default=None, help="label column of a CSV data file")
    p.add_argument("--sweep", action="append", default=[], metavar="AXES",
                   help="axes with their default values (precision,lr,lambda) or one axis "
                        "with values (lr=1e-3,0.1,1); repeatable; Cartesian product")
    group = p.add_argument_group("base settings (any sweep axis, for every run)")
    for ax in AXES.values():
        flag = "--" + ax.name.replace("_", "-")
        group.add_argument(flag, dest=f"axis_{ax.name}", default=None, metavar="VALUE",
                           help=f"{ax.help} (sweep defaults: {','.join(ax.defaults)})")
    p.add_argument("--out", default="lab-runs", metavar="DIR",
                   help="folder of the run store lab.sqlite (default: ./lab-runs)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument("--html", metavar="FILE", help="also write an HTML report with plots")
    p.add_argument("--verify", action="store_true", default=None,
                   help="re-run each failing run with each recommended fix alone and all "
                        "together (same seed) and report before/after; on by default when "
                        "that takes at most 200 re-runs")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip verification (recommendations are then marked not verified)")
    p.add_argument("--attribute", nargs="?", const=1, type=int, metavar="K", default=None,
                   help="deep nets: per-layer statistics every K steps (default 1)")
    p.add_argument("--rerun", action="store_true",
                   help="run again even if the store already holds a run with the same spec")
    p.add_argument("--no-cohorts", action="store_true",
                   help="run specs one at a time instead of in lockstep cohorts")
    p.add_argument("--no-progress", action="store_true",
                   help="no estimate line and no progress bar on stderr")
    p.add_argument("--force", action="store_true",
                   help="run even when the sweep's estimated peak memory is over 80%% of the "
                        "memory available (such a sweep is refused before it starts)")
    dist = p.add_argument_group("parallel sweeps on Dask (cohorts run on workers; only this "
                                "process writes the store)")
    dist.add_argument("--workers", default=None, metavar="N",
                      help="start a local cluster of N worker processes for the sweep")
    dist.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                      help="run the sweep on an existing Dask cluster")
    add_view_arguments(p)


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    """How the terminal report is laid out (shared with ``stability-lab report``)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true",
                   help="print the header only (answer, condition numbers, recommendation)")
    g.add_argument("--verbose", action="store_true",
                   help="also print the full run table and every layer of deep nets")
    p.add_argument("--map", metavar="X,Y", default=None,
                   help="the stability map's axes: two swept axes, columns then rows "
                        "(default lr,precision)")


def view_options(args: argparse.Namespace, axes) -> dict:
    """Keyword arguments of report.terminal.print_sweep from the view options."""
    from stability_lab.report.maps import parse_map_arg

    xy = parse_map_arg(args.map, axes) if getattr(args, "map", None) else None
    return {"quiet": bool(getattr(args, "quiet", False)),
            "verbose": bool(getattr(args, "verbose", False)), "map_axes": xy}


#: task -> (base settings unless given, axes, note) of a deep task run with no sweep: a
#: reference that converges beside a failure, both on configurations the suite runs on
#: every kernel (tests/test_judgments.py, obs 8; tests/test_deep.py's
#: attention-logit-growth test)
DEEP_DEFAULTS = {
    # inputs on the scale of raw counts or prices (1e5): the first layer's outputs pass
    # float16's largest value (65504) and mixed-fp16 is NaN at step 1 (created by fc0);
    # LayerNorm makes the scale harmless where the format has float32's range
    "mlp": ({"lr": 0.1, "norm": "layernorm", "scale": 1e5},
            [("policy", ["float32", "mixed-fp16"])],
            "with no sweep, policy=float32,mixed-fp16 at lr 0.1 on the digits scaled to "
            "1e5 with layernorm: a float32 reference beside a first layer that overflows "
            "float16 (set --policy or --sweep to choose)"),
    # Adam at lr 0.3 in mixed-fp16: the attention logits grow until q.k overflows float16
    # (NaN at step ~17, created by blocks.0.attn); qk-layernorm bounds them
    "attention": ({"lr": 0.3, "policy": "mixed-fp16"}, [("qk_layernorm", [True, False])],
                  "with no sweep, qk_layernorm=true,false at lr 0.3 in mixed-fp16: the "
                  "qk-layernorm reference beside attention logits that overflow float16 "
                  "(set --policy, --qk-layernorm or --sweep to choose)"),
}


def build_sweep(args: argparse.Namespace):
    """Base spec and axes from the arguments; all checks, no heavy imports."""
    from stability_lab.spec import RunSpec, Sweep, merge_axes
    from stability_lab.tasks import DEFAULT_DATA, check_task_name

    task = args.task
    check_task_name(task)
    changes = {}
    for ax in AXES.values():
        text = getattr(args, f"axis_{ax.name}", None)
        if text is not None:
            axis(ax.name, task)
            changes[ax.name] = ax.parse(text)
    if args.attribute is not None:
        if args.attribute < 1:
            raise UsageError(f"--attribute K needs K >= 1. Got {args.attribute}.")
        changes["attribute_every"] = args.attribute
    data = args.data
    if data is None:
        data = DEFAULT_DATA.get(task, "user")
    elif task == "logistic_regression":
        # imports numpy: only when --data is given
        from stability_lab.tasks.datasets import check_source

        check_source(data)
    if args.html:  # output paths are checked before any work starts
        from stability_lab.paths import check_output_file

        check_output_file(args.html, "--html")
    base = RunSpec(task=task, data=data, target=args.target,
                   solver="auto" if task == "linear_regression" else None)
    if changes:
        base = base.replace(**changes)
    axes = []
    for text in args.sweep:
        axes.extend(parse_sweep_arg(text, task))
    axes = merge_axes(axes)
    names = [name for name, _ in axes]
    if "kappa" in names or base.param("kappa") is not None:
        if not base.data.startswith("synthetic"):
            raise UsageError(
                "The 'kappa' axis sets the condition number of synthetic data; pass "
                "--data synthetic:n=2000,d=20,kappa=1e8,seed=0 with it."
            )
    note = None
    if (task in DEEP_DEFAULTS and not axes and not changes.keys() & (
            {"policy", "precision"} | {name for name, _ in DEEP_DEFAULTS[task][1]})):
        # a deep task with no sweep shows both sides: a healthy reference beside a failure
        extra_base, default_axes, why = DEEP_DEFAULTS[task]
        base = base.replace(**{k: v for k, v in extra_base.items() if k not in changes})
        axes = [(name, list(values)) for name, values in default_axes]
        note = why
    if (task == "logistic_regression" and axes and "scale" not in names
            and getattr(args, "axis_scale", None) is None):
        axes.append(("scale", ["raw", "standardized"]))
        note = ("scale=raw,standardized added as a matched control (set --scale or "
                "--sweep scale=... to choose)")
    return Sweep(base, axes), note


def executor_options(args: argparse.Namespace) -> dict | None:
    """``--workers N`` / ``--scheduler ADDR`` checked (no dask import): the keyword
    arguments of :class:`~stability_lab.run.executor.DaskExecutor`, or None."""
    workers = getattr(args, "workers", None)
    scheduler = getattr(args, "scheduler", None)
    if workers is None and scheduler is None:
        return None
    if workers is not None and scheduler is not None:
        raise UsageError("Pass either --workers N (a local cluster) or --scheduler "
                         "tcp://HOST:PORT (an existing one), not both.")
    if workers is not None:
        from stability_lab.spec.axes import int_at_least

        return {"workers": int_at_least("workers", 1)(workers)}
    from stability_lab.run.executor import check_scheduler_address

    return {"scheduler": check_scheduler_address(scheduler)}


def main(args: argparse.Namespace) -> int:
    sweep, note = build_sweep(args)
    dask_options = executor_options(args)
    view = view_options(args, sweep.axis_names)
    n = sweep.size  # counted from the axes: the product is not expanded here
    if n > 100_000:
        raise UsageError(f"The sweep has {n} runs; the limit is 100000. Sweep fewer values.")
    from stability_lab.lab import run_sweep  # heavy imports start here

    estimate = check_estimate(args, sweep)  # refuses what cannot fit: nothing written yet
    progress = None
    if not args.no_progress:
        from stability_lab.estimate import format_seconds
        from stability_lab.progress import Progress

        after = estimate.time_parts.get("after", 0.0) if estimate else 0.0
        progress = Progress(
            unit="runs", headline=estimate.text() if estimate else "",
            estimate_seconds=estimate.seconds if estimate else None,
            finishing=(f"next: conditioning and advisories, ~{format_seconds(after)}"
                       if after >= 10 else None))
    # the arguments main() parsed (not sys.argv: a library call has its caller's argv)
    command = "stability-lab " + shlex.join(getattr(args, "_argv", None) or sys.argv[1:])
    executor = None
    if dask_options is not None:
        from stability_lab.run.executor import DaskExecutor

        executor = DaskExecutor(**dask_options)
    try:
        result = run_sweep(sweep, out=args.out, command=command, progress=progress,
                           cohorts=not args.no_cohorts, rerun=args.rerun, executor=executor)
    finally:
        if progress is not None:
            progress.close()
        if executor is not None:
            executor.close()
    from stability_lab.lab import verify_and_store
    from stability_lab.remedies.verify import (
        VERIFY_BY_DEFAULT,
        close_recommendations,
        rerun_count,
    )

    reruns = rerun_count(result)
    if args.verify or (args.verify is None and reruns <= VERIFY_BY_DEFAULT):
        verify_and_store(result, out=args.out)
        close_recommendations(result, "verified", reruns)
    else:
        close_recommendations(result, "off" if args.verify is False else "skipped", reruns)
    if result.sweep_id is not None:
        _store_report(result, note, args.out)
    if args.html:
        from stability_lab.report.html import write_html

        try:
            write_html(result, args.html, map_axes=view["map_axes"])
        except OSError as exc:  # checked before the sweep; a disk can still fill up
            from stability_lab.paths import os_fault

            raise os_fault(exc, f"--html {args.html}", "the runs are stored: free space "
                           "and run the same command again (stored runs are reused)") from None
    if args.json:
        doc = result.to_dict()
        if note:
            doc["sweep"]["note"] = note
        doc["sweep"]["reused"] = sum(r.reused for r in result.results)
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from stability_lab.report.terminal import print_sweep

        print_sweep(result, note=note, **view)
        if args.html:
            sys.stdout.write(f"HTML report: {args.html}\n")
    return 0


def _store_report(result, note: str | None, out: str) -> None:
    """Keep what ``stability-lab report SWEEP_ID`` needs besides the runs."""
    from stability_lab.store import Store

    with Store(out) as store:
        store.save_sweep_report(result.sweep_id, report=result.task_report,
                                verification=result.verification, note=note)
        # the recommendations as verification closed them (what the run printed)
        store.finish_sweep(result.sweep_id, result.conditioning,
                           [r.to_dict() for r in result.recommendations])


def check_estimate(args: argparse.Namespace, sweep):
    """The sweep's :class:`~stability_lab.estimate.Estimate` (None when nothing needs
    it: ``--force`` with ``--no-progress``); raises a one-line
    :class:`~stability_lab.errors.ResourceError` when its peak memory does not fit in
    :data:`~stability_lab.estimate.MARGIN` of the memory available, unless ``--force``.
    The time is measured (calibrated) only when the estimate is shown."""
    show = not args.no_progress
    if args.force and not show:
        return None
    from stability_lab.estimate import MARGIN, estimate_sweep, format_bytes

    workers = getattr(args, "workers", None)
    est = estimate_sweep(sweep, cohorts=not args.no_cohorts, calibrate_time=show,
                         workers=int(workers) if workers else None,
                         remote=getattr(args, "scheduler", None) is not None)
    if not args.force and not est.fits:
        from stability_lab.errors import ResourceError

        raise ResourceError(
            f"The sweep does not fit in memory: {est.text()}; it needs "
            f"~{format_bytes(est.extra_bytes)} more, over {MARGIN:.0%} of what is available. "
            "Add --force to run anyway, or reduce the sweep (fewer values per axis), "
            "--epochs or the rows of --data."
        )
    return est
