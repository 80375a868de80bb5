"""A small transformer on a generated sequence task: attention-logit growth.

Task: reverse a sequence. Each example is ``seq_len`` tokens drawn uniformly from a
vocabulary of 16; the target at position t is the token at position ``seq_len-1-t``.
Solving it needs sharp, position-driven attention, so the attention logits
``q.k / sqrt(d_head)`` have a reason to grow. Batches (64 sequences) are generated from
the seed, one fresh batch per step (an ``epoch`` here is one step): every policy of a
sweep sees the same batches; a fixed held-out set (seed 10^6) gives the accuracy.

Model: token and learned position embeddings of ``width``; ``depth`` pre-LayerNorm
blocks ``blocks.<i>`` of multi-head self-attention (``heads``; non-causal) and a 4x MLP;
a final LayerNorm and the linear ``head``. ``qk_layernorm`` adds a LayerNorm over each
head's queries and keys (``blocks.<i>.attn.q_norm``/``k_norm``) before their product;
``z_loss`` adds ``z * logsumexp(logits)^2`` to the cross-entropy. Optimizer: Adam.

Why it fails at high lr in low precision (Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities"): with a large learning rate the query
and key weights grow quickly, |q.k| grows quadratically with them, and the softmax
saturates (attention entropy collapse). In float16 the score GEMM ``q @ k^T`` overflows
65504 to inf and the softmax turns it into NaN; the attribution names the attention
module as the creator. qk-layernorm bounds |q.k| by the LayerNorm gains; the z-loss
keeps the output logits' log-partition near 0.

Per-step metric ``attn_logit_max``: the largest |q.k|/sqrt(d_head) over all blocks,
heads and positions (NaN once non-finite).
"""

from __future__ import annotations

from typing import Any

from stability_lab.tasks.deep import DeepTask
from stability_lab.errors import UsageError
from stability_lab.spec import RunSpec

DEFAULTS = {"depth": 1, "width": 32, "heads": 2, "seq_len": 16, "qk_layernorm": False,
            "z_loss": 0.0}
VOCAB = 16
BATCH = 64
EVAL_SEED = 10 ** 6


def _p(spec: RunSpec, name: str) -> Any:
    value = spec.param(name)
    return DEFAULTS[name] if value is None else value


class AttentionTask(DeepTask):
    name = "attention"

    def validate(self, spec: RunSpec) -> None:
        super().validate(spec)
        width, heads = int(_p(spec, "width")), int(_p(spec, "heads"))
        if width % heads:
            raise UsageError(f"The 'width' ({width}) must be a multiple of 'heads' ({heads}); "
                             "pass e.g. --width 32 --heads 2.")

    def data_key(self, spec: RunSpec):
        return ("reverse", _p(spec, "seq_len"))

    def prepare(self, spec: RunSpec):
        return {"seq_len": int(_p(spec, "seq_len")), "vocab": VOCAB}

    def problem(self, spec: RunSpec, prepared):
        import torch

        from stability_lab.tasks.base import Problem
        from stability_lab.tasks.mlp import ce_with_z_loss

        T = prepared["seq_len"]
        bs = spec.batch_size or BATCH

        def sequences(gen, n):
            x = torch.randint(0, VOCAB, (n, T), generator=gen)
            return x, x.flip(1)

        gen = torch.Generator().manual_seed(int(spec.seed) + 7919)
        cache: list = []

        def batch_at(i: int):
            while len(cache) <= i:
                cache.append(sequences(gen, bs))
            return cache[i]

        xe, ye = sequences(torch.Generator().manual_seed(EVAL_SEED), 512)
        z = float(_p(spec, "z_loss"))

        def loss_fn(logits, targets):
            return ce_with_z_loss(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), z)

        def eval_fn(model, forward):
            logits = forward(xe).float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ye.reshape(-1))
            acc = (logits.argmax(-1) == ye).double().mean()
            return {"accuracy": float(acc), "eval_loss": float(loss)}

        def step_metrics(model):
            vals = [b.attn.last_logit_max for b in model.blocks]
            vals = [float(v) for v in vals if v is not None]
            return {"attn_logit_max": max(vals) if vals else float("nan")}

        return Problem(lambda: build_transformer(spec, T), batch_at, spec.epochs, loss_fn,
                       eval_fn, step_metrics, optimizer="adam",
                       meta={"data": f"reverse {T} tokens (vocab {VOCAB}), {bs} sequences "
                                     "per step, generated from the seed", "classes": VOCAB})


def build_transformer(spec: RunSpec, seq_len: int):
    import torch
    from torch import nn

    width, heads, depth = int(_p(spec, "width")), int(_p(spec, "heads")), int(_p(spec, "depth"))
    qk_ln = bool(_p(spec, "qk_layernorm"))
    F = nn.functional

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads, self.d_head = heads, width // heads
            self.q = nn.Linear(width, width)
            self.k = nn.Linear(width, width)
            self.v = nn.Linear(width, width)
            self.proj = nn.Linear(width, width)
            if qk_ln:
                self.q_norm = nn.LayerNorm(self.d_head)
                self.k_norm = nn.LayerNorm(self.d_head)
            self.last_logit_max = None

        def forward(self, x):
            B, T, _ = x.shape

            def split(t):
                return t.reshape(B, T, self.heads, self.d_head).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            if qk_ln:
                q, k = self.q_norm(q), self.k_norm(k)
            # the score GEMM: in float16 this is where |q.k| > 65504 becomes inf
            scores = (q @ k.transpose(-1, -2)) * (self.d_head ** -0.5)
            with torch.no_grad():
                self.last_logit_max = scores.detach().abs().amax().float()
            att = F.softmax(scores, dim=-1)
            out = (att @ v).transpose(1, 2).reshape(B, T, width)
            return self.proj(out)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.attn = SelfAttention()
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                     nn.Linear(4 * width, width))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class Transformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(VOCAB, width)
            self.pos = nn.Embedding(seq_len, width)
            self.blocks = nn.ModuleList([Block() for _ in range(depth)])
            self.ln_f = nn.LayerNorm(width)
            self.head = nn.Linear(width, VOCAB)

        def forward(self, idx):
            pos = torch.arange(idx.shape[1])
            x = self.tok(idx) + self.pos(pos)
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    return Transformer()
