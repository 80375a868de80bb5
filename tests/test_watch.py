"""stability_lab.watch on a plain PyTorch loop: metrics, the creator of an injected
float16 overflow named by its qualified module name, the stored run (show, --json,
--html), fixes verified by replay (in the run and by `stability-lab replay`), autocast
bf16, GradScaler, gradient accumulation, param groups + lr scheduler, torch.compile."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _watch_models import Net, batches, cross_entropy

import stability_lab
from stability_lab.cli import main
from stability_lab.errors import UsageError


def _train(w, model, opt, data, *, dtype=torch.float16, scaler=None, accum=1, sched=None):
    with w:
        for i, (x, y) in enumerate(data):
            with torch.autocast("cpu", dtype=dtype):
                loss = cross_entropy(model(x), y) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if (i + 1) % accum == 0:
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if sched is not None:
                    sched.step()
                opt.zero_grad()
            w.step(loss, targets=y)
    return w.report()


@pytest.fixture(scope="module")
def overflow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = stability_lab.watch(model, opt, out=out, replay=2, checkpoint_every=5,
                            loss_fn=cross_entropy, verbose=False)
    rep = _train(w, model, opt, batches(16, outlier_at=12, size=16))
    return out, w, rep, model


def test_plain_loop_names_the_creator_and_stores_the_run(overflow_run):
    out, w, rep, _ = overflow_run
    assert rep["verdict"] == "nan" and rep["onset_step"] == 13
    assert rep["first_creator"]["module"] == "amp"
    assert rep["first_creator"]["pass"] == "forward"
    sigs = {f["signature"]: f for f in rep["findings"]}
    assert sigs["nonfinite_created"]["location"] == "amp"
    # the online line: onset and culprit module
    assert any("step 13" in line and "amp" in line for line in rep["printed"])
    doc = rep.to_dict()
    json.dumps(doc)
    assert doc["run_id"] == w.run_id
    from stability_lab.store import Store

    with Store(out, create=False) as store:
        rec = store.load_run(w.run_id)
    assert rec["task"] == "watched" and rec["verdict"] == "nan"
    for name in ("loss", "grad_norm", "update_norm", "weight_norm", "update_ratio",
                 "nonfinite_grads", "nonfinite_weights", "grad_headroom", "logit_headroom",
                 "lr"):
        assert len(rec["metrics"][name]) == 16, name
    m = rec["metrics"]
    assert math.isfinite(m["grad_norm"][0]) and m["grad_norm"][0] > 0
    assert abs(m["update_norm"][0] - 0.05 * m["grad_norm"][0]) < 1e-4 * m["grad_norm"][0]
    assert m["nonfinite_weights"][12] > 0 and m["nonfinite_weights"][11] == 0


def test_replay_verifies_the_fix(overflow_run):
    out, w, rep, model = overflow_run
    rows = {r["mitigation"]: r for r in rep["replay"]["rows"]}
    assert rep["replay"]["reproduced"] and rows["none (as recorded)"]["failed"]
    assert rows["upcast_module"]["module"] == "amp" and rows["upcast_module"]["fixed"]
    assert not rows["lower_lr"]["fixed"] and not rows["clip"]["fixed"]
    verified = {r["action"] for r in rep["recommendations"] if r["verified"]}
    assert "upcast_module" in verified and "lower_lr" not in verified
    # the user's model is as the run left it (NaN weights), not as the replays left it
    assert not torch.isfinite(model.amp.weight).all() or not torch.isfinite(
        model.inp.weight).all()
    assert model.amp.weight.dtype == torch.float32


def test_show_json_and_html_work_on_a_watched_run(overflow_run, tmp_path, capsys):
    out, w, _, _ = overflow_run
    assert main(["show", w.run_id, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "task=watched" in text and "nonfinite_created" in text
    assert "upcast_module: failed -> no failure (fixed: True)" in text
    assert main(["show", w.run_id[:6], "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["extras"]["attribution"]["first_creator"]["module"] == "amp"
    page = tmp_path / "w.html"
    assert main(["show", w.run_id, "--out", str(out), "--html", str(page)]) == 0
    html = page.read_text()
    assert "Verification" in html and "run amp in float32" in html


def test_replay_command_after_the_fact(overflow_run, capsys):
    out, w, _, _ = overflow_run
    assert main(["replay", w.run_id, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "run amp in float32" in text and "FIXED" in text
    assert main(["replay", "nosuchrun", "--out", str(out)]) == 2


def test_healthy_bf16_run_has_no_findings(tmp_path):
    torch.manual_seed(0)
    model = Net(gain=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    w = stability_lab.watch(model, opt, out=tmp_path, attribute=True, verbose=False)
    rep = _train(w, model, opt, batches(30, size=16), dtype=torch.bfloat16)
    assert rep["verdict"] in ("converged", "not_converged")
    assert not [f for f in rep["findings"] if f["severity"] == "error"]
    assert rep["printed"] == []
    attr = w.trace.extras["attribution"]
    assert attr["enabled"] and {"inp", "amp", "head"} <= set(attr["modules"])
    assert attr["modules"]["amp"]["act_headroom_min"] > 0  # bfloat16's range


def test_gradscaler_accumulation_param_groups_and_scheduler(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD([{"params": model.inp.parameters(), "lr": 0.02},
                           {"params": [p for n, p in model.named_parameters()
                                       if not n.startswith("inp")]}], lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    w = stability_lab.watch(model, opt, out=tmp_path, scaler=scaler, verbose=False)
    rep = _train(w, model, opt, batches(24, outlier_at=13, size=8), scaler=scaler, accum=2,
                 sched=sched)
    m = w.trace.metrics
    assert rep["steps"] == 12  # 24 micro-batches, 2 per optimizer step
    assert list(m["skipped"]).count(1.0) == 1 and m["skipped"][6] == 1.0  # the outlier
    assert m["loss_scale"][0] == 2.0**10 and m["loss_scale"][7] == 2.0**9
    assert list(m["lr"][:4]) == [0.02, 0.02, 0.02, 0.01]  # group 0, StepLR
    assert rep["first_creator"]["module"] == "amp"  # found on the skipped step
    assert torch.isfinite(model.amp.weight).all()  # the scaler protected the weights


def test_compiled_model(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cm = torch.compile(model, backend="aot_eager")
    w = stability_lab.watch(cm, opt, out=tmp_path, verbose=False)
    rep = _train(w, cm, opt, batches(4, outlier_at=2, size=8))
    assert rep["first_creator"]["module"] == "amp"  # eager replay of _orig_mod
    assert not w.trace.extras["attribution"]["enabled"]  # no per-layer stats compiled


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("STABILITY_LAB_INDUCTOR_TESTS"),
                    reason="inductor compiles C++ for a minute or more: set "
                           "STABILITY_LAB_INDUCTOR_TESTS=1 to run it")
def test_compiled_model_inductor(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cm = torch.compile(model)
    w = stability_lab.watch(cm, opt, out=tmp_path, verbose=False)
    rep = _train(w, cm, opt, batches(8, outlier_at=5))
    assert rep["first_creator"]["module"] == "amp"


def test_bad_arguments():
    model = Net()
    for kw, frag in (({"every": 0}, "'every' must be a positive integer"),
                     ({"attribute": "yes"}, "'attribute' must be"),
                     ({"replay": -1}, "'replay' must be"),
                     ({"replay_storage": "tape"}, "'replay_storage'")):
        with pytest.raises(UsageError, match=frag):
            stability_lab.watch(model, **kw)
    with pytest.raises(UsageError, match="torch.nn.Module"):
        stability_lab.watch(object())


def test_a_watched_step_leaves_no_reference_cycle_holding_its_graph():
    # the output-gradient hook must not close over what holds the output: such a cycle
    # keeps every step's autograd graph alive until the cyclic GC runs (it cost the
    # benchmark's mlp 0.2-0.3 ms a step)
    import gc
    import weakref

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    w = stability_lab.watch(model, opt, out=None, verbose=False, every=10, attribute="auto")
    refs = []
    gc.disable()
    try:
        for _ in range(3):
            out = model(x)
            refs.append(weakref.ref(out))
            loss = torch.nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.step(loss)
            del out, loss
        # the last step's output is still the watcher's current micro-batch until the
        # next forward; the earlier ones must be gone without the cyclic collector
        assert refs[0]() is None and refs[1]() is None
    finally:
        gc.enable()
        w.close()
