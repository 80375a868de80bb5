"""The end of a watched run: diagnose, verify fixes by replay, store, report.

Kept apart from :mod:`stability_lab.watcher` (the hooks) so that the judgement of a
watched run is the lab's: ``diagnosis.diagnose`` (verdict + the catalogue's detectors +
the deep-net findings), ``diagnosis.phases``, ``recommend.Recommendation`` rows, the
store's ``runs``/``metrics``/``verifications`` tables. The watcher imports this module,
never the other way round: :func:`finish` reads the watcher it is given by its
attributes and returns a :class:`WatchReport`.
"""

from __future__ import annotations

import math
from typing import Any


class WatchReport(dict):
    """The watched run's verdict, findings, recommendations (a mapping; ``to_dict()``)."""

    def to_dict(self) -> dict[str, Any]:
        from stability_lab.formatting import jsonable

        return jsonable(dict(self))

    def __str__(self) -> str:
        lines = [f"Watched run {self.get('run_id')}: {self.get('verdict_text')}"]
        for f in self.get("findings", []):
            where = f" in {f['location']}" if f.get("location") else ""
            onset = f" at step {f['onset']}" if f.get("onset") else ""
            lines.append(f"Finding: {f['signature']}{onset}{where}: {f['message']}")
        c = self.get("first_creator")
        if c:
            lines.append(f"Creator: {c['module']} ({c['pass']} pass, step {c['step']}): "
                         f"{c['detail']}")
        for r in self.get("recommendations", []):
            tag = {True: "verified by replay", False: "did not fix it on replay",
                   None: "not verified (watch with replay=K to verify)"}[r.get("verified")]
            lines.append(f"Recommendation: {r['text']} ({tag})")
        rep = self.get("replay")
        if rep and rep.get("rows"):
            from stability_lab.remedies.replay import format_rows

            lines.append(format_rows(rep))
        elif rep and rep.get("note"):
            lines.append(f"Replay: {rep['note']}")
        return "\n".join(lines)


def _gather_ranks(w, trace) -> None:
    """DDP: every rank's per-step loss, gradient norm and non-finite counts, on rank 0."""
    if w.world <= 1:
        return
    import torch.distributed as dist

    mine = {"rank": w.rank, "loss": w.rec["loss"], "grad_norm": w.rec["grad_norm"],
            "nonfinite_grads": w.rec["nonfinite_grads"],
            "creators": [c for c in w.creators if c["kind"] == "created"][:5]}
    gathered: list[Any] = [None] * w.world
    dist.all_gather_object(gathered, mine)
    trace.extras["ranks"] = gathered
    import numpy as np

    n = min(len(g["loss"]) for g in gathered)
    losses = np.array([g["loss"][:n] for g in gathered], dtype=np.float64)
    with np.errstate(all="ignore"):
        trace.metrics["loss_rank_spread"] = losses.max(0) - losses.min(0)
        trace.metrics["loss"] = losses.mean(0)
    if not (trace.extras.get("attribution") or {}).get("first_creator"):
        for g in gathered:  # a creator another rank found
            if g["creators"]:
                c = g["creators"][0]
                trace.extras["attribution"]["creators"] = g["creators"]
                trace.extras["attribution"]["first_creator"] = {
                    k: c[k] for k in ("step", "pass", "module", "detail")}
                trace.extras["attribution"]["first_creator_rank"] = g["rank"]
                break


def finish(w) -> WatchReport:
    """Close the watched run of the watcher ``w``: its trace diagnosed, fixes verified by
    replay from its checkpoint ring (when it failed), the run stored; its report."""
    from stability_lab.diagnosis import diagnose
    from stability_lab.diagnosis.phases import phase_dicts
    from stability_lab.diagnosis.record import RunResult
    from stability_lab.remedies.rules import Recommendation

    trace = w.build_trace()
    _gather_ranks(w, trace)
    verdict, findings = diagnose(trace)
    first = (trace.extras.get("attribution") or {}).get("first_creator")
    culprit = first["module"] if first else None
    replay = None
    recs: list[Recommendation] = []
    if verdict.failed:
        from stability_lab.remedies import replay as R

        onset_row = verdict.onset or len(w.steps)
        onset = w.steps[onset_row - 1] if 0 < onset_row <= len(w.steps) else w.step_no
        cands = R.candidates(trace, culprit, w.scaler is not None)
        if w.ring is not None and w.rank == 0 and w.world == 1:
            ck = w.ring.before(onset)
            if ck is None:
                replay = {"rows": [], "note": f"no checkpoint before the onset (step "
                          f"{onset}); the ring keeps {w.replay_k} taken every "
                          f"{w.checkpoint_every} steps"}
            else:
                try:
                    replay = R.verify(w.inner, w.optimizer_seen(), w.scaler,
                                      w.ring.load(ck), w.ring.steps, trace, onset, culprit,
                                      loss_fn=w.loss_fn, step_fn=getattr(w, "step_fn", None))
                except (ValueError, RuntimeError, TypeError) as exc:
                    replay = {"rows": [], "note": f"replay failed: {str(exc).splitlines()[0]}"}
                replay["onset"] = onset
                replay["_ck"] = ck
        elif w.world > 1:
            replay = {"rows": [], "note": "replay is not run under DDP (it would re-run "
                      "collectives on one rank)"}
        rows = {r["mitigation"]: r for r in (replay or {}).get("rows", []) if "fixed" in r}
        for c in cands:
            row = rows.get(c["mitigation"])
            verified = None if row is None else bool(row["fixed"])
            delta = {"mitigation": c["mitigation"], **{k: c[k] for k in ("module", "clip")
                                                       if k in c}}
            recs.append(Recommendation(
                c["mitigation"], c["text"],
                c["reason"] + ({True: "; verified: the replay from the checkpoint no "
                               "longer fails", False: "; the replay still fails with it",
                               None: "; not verified"}[verified]),
                delta, (trace.run_id,), {"verified": verified,
                                         **({"replay": {k: row[k] for k in row
                                                        if k not in ("text", "reason")}}
                                            if row else {})}))
    result = RunResult(trace.spec, trace, verdict, findings)
    w.trace, w.result = trace, result
    w.run_id = trace.run_id
    if replay is not None:
        trace.extras["replay"] = {k: v for k, v in replay.items() if k != "_ck"}
    if w.out is not None and w.rank == 0:
        _store(w, result, recs, replay)
    report = WatchReport(
        run_id=w.run_id, store=str(w.out / "lab.sqlite") if w.out is not None else None,
        verdict=verdict.status, verdict_text=str(verdict),
        onset_step=(w.steps[verdict.onset - 1] if verdict.onset and
                    verdict.onset <= len(w.steps) else verdict.onset),
        steps=w.step_no, recorded_steps=len(w.steps),
        findings=[f.to_dict() for f in findings], phases=phase_dicts(trace),
        first_creator=first, creators=[c for c in w.creators if c["kind"] == "created"],
        recommendations=[{**r.to_dict(), "verified": r.evidence.get("verified")}
                         for r in recs],
        replay=trace.extras.get("replay"), printed=list(w.printed))
    return report


def _store(w, result, recs, replay) -> None:
    from stability_lab.diagnosis.record import record_of
    from stability_lab.store import Store

    rec = record_of(result)
    with Store(w.out) as store:
        sweep_id = store.begin_sweep(f"watch({w.name})", "watched", [], result.spec)
        store.save_run(rec, result.trace.metrics, sweep_id, 0)
        for row in (replay or {}).get("rows", []):
            if "fixed" in row:
                base = replay["rows"][0].get("final_loss")
                store.save_verification(result.run_id, row["mitigation"], None,
                                        verification_row(result, row, base))
        store.finish_sweep(sweep_id, {}, [r.to_dict() for r in recs])
    if replay and replay.get("_ck") is not None and w.ring is not None:
        from stability_lab.remedies.replay import save_for_cli

        try:
            save_for_cli(w.out / "checkpoints" / f"{result.run_id}.pt", w.inner,
                         w.optimizer_seen(), w.scaler, w.ring.load(replay["_ck"]),
                         w.ring.steps, replay.get("onset"),
                         (result.trace.extras.get("attribution") or {}).get(
                             "first_creator", {}).get("module"), w.loss_fn,
                         getattr(w, "step_fn", None))
        except Exception as exc:  # noqa: BLE001 (pickling raises many kinds)
            # unpicklable (a lambda loss, a class defined in __main__...): say so
            result.trace.extras.setdefault("replay", {})["cli_note"] = (
                f"checkpoint not saved for 'stability-lab replay': {exc}")


def verification_row(result, row: dict[str, Any], base_loss: Any = math.nan
                     ) -> dict[str, Any]:
    """A replay row in the shape of ``verify.py``'s rows (report/verification.py prints
    both): before = the replay as recorded, after = the replay with the mitigation."""
    delta = {k: row[k] for k in ("module", "clip") if k in row}

    def side(failed: bool, loss: Any) -> dict[str, Any]:
        return {"verdict": "failed" if failed else "no failure", "final_loss": loss,
                "epochs_to_converge": None, "digits": None, "findings": []}

    return {"run_id": result.run_id, "label": f"replay {result.run_id[:8]}",
            "mitigation": row["mitigation"], "text": row.get("text"), "delta": delta,
            "before": side(True, base_loss), "after": side(not row["fixed"],
                                                        row.get("final_loss")),
            "fixed": bool(row["fixed"]), "replay": {k: row.get(k) for k in (
                "steps", "nonfinite_losses", "skipped", "first_nonfinite_step",
                "nonfinite_weights_at", "error")}}
