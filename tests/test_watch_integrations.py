"""The Lightning and Hugging Face callbacks: tiny models built in the test (no weights
downloaded), each run with an injected float16 overflow whose creator module is named."""

from __future__ import annotations

import os

import pytest
import torch
from _watch_models import Net, batches, cross_entropy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def test_lightning_callback_names_the_creator(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from stability_lab.integrations.lightning import StabilityCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def training_step(self, batch, i):
            x, y = batch
            with torch.autocast("cpu", dtype=torch.float16):
                return cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    cb = StabilityCallback(out=str(tmp_path), verbose=False, replay=2, checkpoint_every=4)
    trainer = L.Trainer(max_epochs=1, callbacks=[cb], accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    data = torch.utils.data.DataLoader(batches(10, outlier_at=6, size=8), batch_size=None)
    trainer.fit(Module(), train_dataloaders=data)
    rep = cb.report
    assert rep["steps"] == 10 and rep["verdict"] == "nan"
    assert rep["first_creator"]["module"] == "net.amp"
    assert rep["first_creator"]["pass"] == "forward"
    from stability_lab.store import Store

    with Store(tmp_path, create=False) as store:
        assert store.load_run(cb.run_id)["task"] == "watched"
    rows = {r["mitigation"]: r for r in rep["replay"]["rows"]}
    assert rep["replay"]["reproduced"] and rows["upcast_module"]["fixed"]


def test_transformers_callback_names_the_creator(tmp_path):
    tr = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from stability_lab.integrations.transformers import StabilityCallback

    torch.manual_seed(0)
    cfg = tr.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = tr.GPT2LMHeadModel(cfg)
    # one float16 layer: its inputs are cast to float16 and its output back to float32
    layer = model.transformer.h[1].mlp.c_fc
    layer.half()
    with torch.no_grad():
        layer.weight.normal_(0, 1e4).clamp_(-6e4, 6e4)  # finite in float16
    layer.register_forward_pre_hook(lambda m, a: tuple(t.half() for t in a))
    layer.register_forward_hook(lambda m, a, out: out.float())

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    cb = StabilityCallback(out=str(tmp_path), verbose=False)
    args = tr.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=4,
                                max_steps=2, use_cpu=True, report_to=[], save_strategy="no",
                                logging_strategy="no", disable_tqdm=True)
    tr.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    rep = cb.report
    assert rep["steps"] == 2
    assert rep["first_creator"]["module"] == "transformer.h.1.mlp.c_fc"
    assert rep["first_creator"]["pass"] == "forward"
    from stability_lab.store import Store

    with Store(tmp_path, create=False) as store:
        assert store.load_run(cb.run_id)["task"] == "watched"
