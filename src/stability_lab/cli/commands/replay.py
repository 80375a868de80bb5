"""``stability-lab replay RUN_ID``: verify fixes of a watched run after the fact.

Loads the checkpoint a watched run (``watch(..., replay=K)``) saved before its onset
(``OUT/checkpoints/RUN_ID.pt``: the model, the optimizer's class, settings, parameter
groups and state, the GradScaler's state, the RNG state and the recorded batches), re-runs
the batches as recorded and once per mitigation (``stability_lab.remedies.replay``), prints which
remove the failure and stores the rows beside the run (``show`` prints them).
"""

from __future__ import annotations

import argparse
import sys

from stability_lab.errors import UsageError

HELP = "re-run a failed watched run from its stored checkpoint, once per mitigation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID", help="a watched run's id (or a unique prefix)")
    p.add_argument("--out", default="lab-runs", metavar="DIR", help="folder of the run store")
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="a folder to import the model's and loss's code from (repeatable)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stability_lab.diagnosis.record import diagnose_trace, trace_from_record
    from stability_lab.store import Store

    with Store(args.out, create=False) as store:
        rec = store.load_run(args.run_id)
    if rec is None:
        raise UsageError(f"No run {args.run_id!r} in {args.out}/lab.sqlite; pass the id "
                         "'stability_lab.watch' reported (w.run_id) or the right --out.")
    if rec["task"] != "watched":
        raise UsageError(f"Run {rec['id']} is a '{rec['task']}' run; 'replay' re-runs "
                         "watched runs (use 'stability-lab run --verify' for lab runs).")
    path = Path(args.out) / "checkpoints" / f"{rec['id']}.pt"
    if not path.exists():
        note = ((rec.get("extras") or {}).get("replay") or {}).get("cli_note")
        raise UsageError(f"No checkpoint for run {rec['id']} at {path}: "
                         + (note or "the run was watched without replay=K, or did not "
                            "fail after a checkpoint.") + " Watch with replay=K.")
    sys.path[:0] = [str(Path(d).resolve()) for d in args.path]
    import torch

    from stability_lab.remedies import replay as R
    from stability_lab.watch_report import verification_row

    try:
        saved = torch.load(path, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise UsageError(f"Cannot load the checkpoint {path}: {exc}. The model and loss "
                         "are stored by reference; pass --path DIR where their code is "
                         "importable.") from None
    model = saved["model"]
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in g]} for g in saved["groups"]]
    opt = saved["optimizer_class"](groups, **saved["optimizer_defaults"])
    scaler = None
    if saved["checkpoint"].get("scaler") is not None:
        scaler = torch.amp.GradScaler("cpu")
    trace = trace_from_record(rec)
    result = diagnose_trace(trace)
    rep = R.verify(model, opt, scaler, saved["checkpoint"], saved["steps"], trace,
                   saved["onset"], saved["culprit"], loss_fn=saved["loss_fn"],
                   step_fn=saved["step_fn"])
    sys.stdout.write(R.format_rows(rep) + "\n")
    if rep.get("note"):
        sys.stdout.write(f"Note: {rep['note']}\n")
    base = rep["rows"][0].get("final_loss") if rep["rows"] else None
    with Store(args.out) as store:
        for row in rep["rows"]:
            if "fixed" in row:
                store.save_verification(rec["id"], row["mitigation"], None,
                                        verification_row(result, row, base))
    return 0
