"""nanoGPT's CPU "baby GPT" on tiny Shakespeare: artrainer against the same run in PyTorch.

The reference (../shared/data/README.md): character level, 90/10 split, 4 layers x 4
heads x 128 wide, block 64, batch 12, no dropout, 2000 steps of AdamW (lr 1e-3, betas
(0.9, 0.99), weight decay 0.1 on 2-D weights only), gradient clipping at 1.0, 100
warmup steps then cosine decay to 1e-4 at step 2000; nanoGPT reaches val loss 1.88
nats/char with it.

Both sides train the same model from the same initial weights (the TransformerAR
init, copied into the torch model), on the same shuffled batches of 65-token windows
(one DataLoader seed), with the same LR factor per step (LRWarmup.lr_scale), and are
scored alike: the exact mean NLL of every val character but the first. The timed span
is the whole training run: Trainer.fit for artrainer, compilation included (the first
step, compilation and all, is also shown on its own), the eager loop for PyTorch.

Where it differs from nanoGPT: Linear layers start from flax's LeCun-normal init,
not normal(0.02); windows start every --stride characters and are shuffled per epoch
instead of drawn at random; the warmup factor is (s + 1) / 100, not (s + 1) / 101;
the val loss is exact, not a 200-batch estimate. The Trainer feeds all 65 tokens and
drops the last position's logits (1.5% extra work) where the torch loop feeds 64.

    python bench/shakespeare_baby_gpt.py [--iters 2000] [--stride 1] [--skip-torch] [--torch-threads N]

Run it on an otherwise idle machine: with another process on the cores, PyTorch's
OpenMP threads spin against it and its steps/s collapse far more than XLA's.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view

from artrainer import Callback, Trainer
from artrainer.callbacks import GradientClipping, LRWarmup
from artrainer.data import DataLoader
from artrainer.data.text import CharTokenizer
from artrainer.models import TransformerAR

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
BLOCK, BATCH, VAL_BATCH = 64, 12, 64
LAYERS, HEADS, WIDTH = 4, 4, 128
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.99), 0.1, 1.0
WARMUP, DECAY_STEPS, MIN_RATIO = 100, 2000, 0.1        # min lr = 1e-4
REFERENCE_VAL_LOSS = 1.88


@dataclasses.dataclass
class Run:
    val_loss: float
    wall_s: float        # the whole training run
    first_step_s: float  # from the start to the end of update 1 (setup and compilation included)
    steps: int

    @property
    def steady_steps_per_s(self) -> float:
        return (self.steps - 1) / (self.wall_s - self.first_step_s)


def load_splits(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Char ids of the first 90% and the last 10% of the text, and the vocabulary size."""
    if not path.is_file():
        sys.exit(f"tiny Shakespeare not found at {path}; put karpathy/char-rnn's "
                 "data/tinyshakespeare/input.txt there (see ../shared/data/README.md)")
    text = path.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.fit(text)
    ids = np.asarray(tokenizer.encode(text), np.int32)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(tokenizer.chars)  # no BOS/EOS/PAD: raw character windows


def train_windows(ids: np.ndarray, stride: int) -> dict[str, np.ndarray]:
    """Every ``stride``-th window of BLOCK + 1 characters (a view, not a copy)."""
    return {"sequences": sliding_window_view(ids, BLOCK + 1)[::stride]}


def val_windows(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Windows of BLOCK + 1 that overlap by one character, the tail zero-padded and masked,
    so every val character after the first is a target exactly once."""
    count = -(-(len(ids) - 1) // BLOCK)
    sequences, mask = np.zeros((2, count * BLOCK + 1), np.int32)
    sequences[:len(ids)], mask[:len(ids)] = ids, 1
    return {name: sliding_window_view(column, BLOCK + 1)[::BLOCK]
            for name, column in (("sequences", sequences), ("mask", mask))}


def train_loader(windows) -> DataLoader:
    return DataLoader(windows, BATCH, seed=0)


def val_loader(windows) -> DataLoader:
    return DataLoader(windows, VAL_BATCH, shuffle=False, last_batch="pad")


def lr_schedule() -> LRWarmup:
    return LRWarmup(WARMUP, decay="cosine", decay_steps=DECAY_STEPS, min_ratio=MIN_RATIO)


def decays(params):
    """nanoGPT's weight-decay rule: matrices and embeddings decay; biases and norms do not."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


class BabyGPT(TransformerAR):
    """TransformerAR with nanoGPT's optimizer; LRWarmup and GradientClipping wrap it."""

    learning_rate = LR

    def configure_optimizers(self) -> optax.GradientTransformation:
        return optax.adamw(self.learning_rate, b1=BETAS[0], b2=BETAS[1], weight_decay=WEIGHT_DECAY,
                           mask=decays)


def initial_weights(model: TransformerAR) -> dict[str, np.ndarray]:
    """The model's weights under torch's names (``blocks.0.attn.qkv.weight``), kernels as [out, in]."""
    renames = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
    weights = {}
    for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.array(param[...])
        weights[".".join(map(str, (*path[:-1], renames[path[-1]])))] = value.T if path[-1] == "kernel" else value
    return weights


class FirstStep(Callback):
    """Records when update 1 has finished, compilation included."""

    uses_module = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            jax.block_until_ready(outputs["loss"])
            self.time = time.perf_counter()


def run_artrainer(model: BabyGPT, train, val, iters: int) -> Run:
    first = FirstStep()
    trainer = Trainer(max_steps=iters, callbacks=[lr_schedule(), GradientClipping(CLIP), first], logger=False,
                      enable_progress_bar=False, log_every_n_steps=100, seed=0)
    start = time.perf_counter()
    trainer.fit(model, train_loader(train))
    jax.block_until_ready(trainer.model_state)
    end = time.perf_counter()
    val_loss = trainer.validate(model, val_loader(val))["val/loss"]
    return Run(val_loss, end - start, first.time - start, iters)


def run_torch(weights: dict[str, np.ndarray], train, val, iters: int, threads: int) -> Run | None:
    """The same model, optimizer, schedule, batches and validation, as an eager PyTorch loop."""
    try:
        import torch
        from torch import nn
        from torch.nn import functional as F
    except ImportError:
        print("pytorch: not installed, skipped (pip install torch)")
        return None
    torch.manual_seed(0)
    torch.set_num_threads(threads)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            batch, length, _ = x.shape
            q, k, v = self.qkv(x).view(batch, length, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(batch, length, WIDTH))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

        def forward(self, x):
            return self.down(F.gelu(self.up(x), approximate="tanh"))  # jax.nn.gelu's default

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm, self.attn = nn.LayerNorm(WIDTH, eps=1e-6), Attention()  # flax's eps
            self.mlp_norm, self.mlp = nn.LayerNorm(WIDTH, eps=1e-6), MLP()

        def forward(self, x):
            x = x + self.attn(self.attn_norm(x))
            return x + self.mlp(self.mlp_norm(x))

    class GPT(nn.Module):
        def __init__(self, vocab_size, positions):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, WIDTH)
            self.position_embedding = nn.Embedding(positions, WIDTH)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.final_norm = nn.LayerNorm(WIDTH, eps=1e-6)
            self.head = nn.Linear(WIDTH, vocab_size, bias=False)

        def forward(self, x):
            h = self.embedding(x) + self.position_embedding(torch.arange(x.shape[1]))
            for block in self.blocks:
                h = block(h)
            return self.head(self.final_norm(h))

    vocab_size, positions = weights["embedding.weight"].shape[0], weights["position_embedding.weight"].shape[0]
    model = GPT(vocab_size, positions)
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(w)) for name, w in weights.items()})
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    factors = np.asarray(lr_schedule().lr_scale(np.arange(iters + 1))).tolist()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors.__getitem__)
    batches = itertools.islice(itertools.chain.from_iterable(itertools.repeat(train_loader(train))), iters)

    model.train()
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        x = torch.from_numpy(batch["sequences"]).long()
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        if step == 0:
            first = time.perf_counter()
    end = time.perf_counter()

    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in val_loader(val):
            x = torch.from_numpy(batch["sequences"]).long()
            counted = torch.from_numpy(batch["mask"][:, 1:] * batch["example_mask"][:, None]).flatten()
            nll = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten(), reduction="none")
            total += float((nll.double() * counted).sum())
            count += float(counted.sum())
    return Run(total / count, end - start, first - start, iters)


def report(name: str, run: Run) -> None:
    print(f"{name:<10} val loss {run.val_loss:.4f}   train {run.wall_s:7.1f} s = {run.steps / run.wall_s:5.2f} steps/s"
          f"   (first step {run.first_step_s:.1f} s, then {run.steady_steps_per_s:5.2f} steps/s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=2000, help="training steps (the LR schedule stays nanoGPT's)")
    parser.add_argument("--stride", type=int, default=1, help="characters between training window starts")
    parser.add_argument("--skip-torch", action="store_true", help="run the artrainer half only")
    parser.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: every CPU this process may use, as XLA does)")
    parser.add_argument("--data", type=Path, default=DATA, help="tiny Shakespeare's input.txt")
    args = parser.parse_args()
    if args.iters < 2 or args.stride < 1 or args.torch_threads < 1:
        parser.error("--iters must be >= 2, --stride and --torch-threads >= 1")

    train_ids, val_ids, vocab_size = load_splits(args.data)
    train, val = train_windows(train_ids, args.stride), val_windows(val_ids)
    model = BabyGPT(vocab_size, BLOCK + 1, WIDTH, LAYERS, HEADS, dropout_rate=0.0, rngs=nnx.Rngs(0))
    weights = initial_weights(model)

    try:
        torch_version = f"torch {metadata.version('torch')} ({args.torch_threads} threads)"
    except metadata.PackageNotFoundError:
        torch_version = "no torch"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}; jax {jax.__version__}, {torch_version}")
    print(f"data: {vocab_size} chars; train {len(train_ids):,} -> {len(train['sequences']):,} windows of "
          f"{BLOCK + 1} (stride {args.stride}); val {len(val_ids):,} -> {len(val['sequences']):,} windows")
    print(f"model: {LAYERS} layers x {HEADS} heads x {WIDTH}, block {BLOCK}, "
          f"{sum(w.size for w in weights.values()):,} params; batch {BATCH}, {args.iters} steps", flush=True)

    ours = run_artrainer(model, train, val, args.iters)
    report("artrainer", ours)
    theirs = None if args.skip_torch else run_torch(weights, train, val, args.iters, args.torch_threads)
    if theirs is not None:
        report("pytorch", theirs)
        print(f"wall-time ratio pytorch / artrainer: {theirs.wall_s / ours.wall_s:.3f} "
              f"(steady state {ours.steady_steps_per_s / theirs.steady_steps_per_s:.3f}); > 1: artrainer faster")
    for name, run in (("artrainer", ours), ("pytorch", theirs)):
        if run is not None:
            verdict = "yes" if run.val_loss <= REFERENCE_VAL_LOSS else "no"
            print(f"{name} val loss <= nanoGPT's {REFERENCE_VAL_LOSS}: {verdict} ({run.val_loss:.4f})")


if __name__ == "__main__":
    main()
