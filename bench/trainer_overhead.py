"""Trainer.fit throughput against a hand-written split + jax.jit loop, same model and data.

Both sides train the same small GPT-shaped TransformerAR (AdamW, batches from the
same DataLoader) and read the loss on the host every 50 steps. The Trainer runs with
its defaults: TensorBoard logging, progress bar, divergence check. Each round times
steady-state steps (after warm-up and compilation) on both, alternating which goes
first; the ratio is Trainer steps/s over hand-loop steps/s (1.0 = no overhead).

    python bench/trainer_overhead.py [--rounds 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import tempfile
import time

import jax
import optax
from flax import nnx

from artrainer import Callback, Trainer
from artrainer.data import DataLoader
from artrainer.data.text import ByteTokenizer, stdlib_corpus, token_windows
from artrainer.loggers import TensorBoardLogger
from artrainer.models import TransformerAR

CONFIG = dict(vocab_size=259, sequence_length=64, hidden_dim=128, num_layers=4, num_heads=4)
BATCH, LR, LOG_EVERY, WARMUP = 12, 1e-3, 50, 20


def make_model():
    model = TransformerAR(**CONFIG, rngs=nnx.Rngs(0))
    model.learning_rate = LR
    return model


def make_loader(windows):
    return DataLoader({"sequences": windows}, BATCH, seed=0)


def endless(loader):
    while True:
        yield from loader


def hand_loop(windows, steps: int) -> float:
    """The loop a JAX user writes by hand; returns steady-state steps per second."""
    model = make_model()
    optimizer = nnx.Optimizer(model, optax.adamw(LR, weight_decay=model.weight_decay), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            return model.loss_fn(batch, model(batch["sequences"], training=True))["loss"]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    batches = endless(make_loader(windows))
    for index in range(WARMUP + steps):
        if index == WARMUP:
            jax.block_until_ready(loss)
            start = time.perf_counter()
        state, loss = train_step(state, next(batches))
        if (index + 1) % LOG_EVERY == 0:
            float(loss)
    jax.block_until_ready(state)
    return steps / (time.perf_counter() - start)


class Stopwatch(Callback):
    """Times steps WARMUP+1 .. the end, waiting for the device at both ends."""

    uses_module = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == WARMUP:
            jax.block_until_ready(outputs["loss"])
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        jax.block_until_ready(trainer.model_state)
        self.elapsed = time.perf_counter() - self.start


def trainer_loop(windows, steps: int) -> float:
    watch = Stopwatch()
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(max_steps=WARMUP + steps, log_every_n_steps=LOG_EVERY, callbacks=[watch],
                          logger=TensorBoardLogger(root), default_root_dir=root)
        trainer.fit(make_model(), make_loader(windows))
    return steps / watch.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    tokenizer = ByteTokenizer()
    windows = token_windows(tokenizer.encode(stdlib_corpus(1_000_000)), CONFIG["sequence_length"],
                            bos_token_id=tokenizer.bos_token_id)
    print(f"machine: {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}; model {CONFIG}, batch {BATCH}, {args.steps} timed steps per run")
    ratios = []
    for round_index in range(args.rounds):
        order = (hand_loop, trainer_loop) if round_index % 2 == 0 else (trainer_loop, hand_loop)
        rates = {fn.__name__: fn(windows, args.steps) for fn in order}
        ratio = rates["trainer_loop"] / rates["hand_loop"]
        ratios.append(ratio)
        print(f"round {round_index}: hand loop {rates['hand_loop']:.2f} steps/s, "
              f"Trainer {rates['trainer_loop']:.2f} steps/s, ratio {ratio:.3f}", flush=True)
    print(f"median ratio Trainer / hand loop: {statistics.median(ratios):.3f} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
