"""Speculative sampling against target-only sampling, with a 4x smaller draft.

Trains (through the main recipe, so on identical data) a target TransformerAR and a
draft with a quarter of its transformer parameters on tiny Shakespeare, character
level; reuses them if --work already holds both runs. Then times, in one process,
target-only ``generate`` against ``speculative_sampling(target, draft, k=...)`` at
the same temperature and length, and prints the acceptance rate and the speedup.
Medians of --repeats runs after a compiling warm-up.

    python bench/speculative.py [--steps 1500] [--temperature 0 1] [--k 2 3 4 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import sys

import jax
from flax import nnx

from artrainer.checkpointing import load_weights
from timing import timed  # bench/timing.py (bench/ is on sys.path when run as a script)

from artrainer.models import TransformerAR
from artrainer.sampling.speculative import speculative_sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")
SHAPES = {"target": ["--hidden-dim", "128", "--num-layers", "4"],   # nanoGPT's baby GPT
          "draft": ["--hidden-dim", "128", "--num-layers", "1"]}    # a quarter of its block parameters


def train(name: str, work: str, steps: int) -> str:
    out = os.path.join(work, name)
    if not os.path.isdir(os.path.join(out, "checkpoints")):
        recipe = runpy.run_path(os.path.join(ROOT, "recipes", "train_transformer.py"))
        recipe["main"](["--text-files", DATA, "--tokenizer", "char", "--seq-len", "128", "--num-heads", "4",
                        "--batch-size", "12", "--max-steps", str(steps), "--lr", "1e-3", "--warmup-steps", "100",
                        "--clip-norm", "1.0", "--out", out, "--log-every", "100", "--limit-val-batches", "20",
                        "--no-progress-bar", *SHAPES[name]])
    return out


def load(out: str) -> TransformerAR:
    with open(os.path.join(out, "model_config.json")) as file:
        config = json.load(file)
    model = TransformerAR(config["vocab_size"], config["sequence_length"], config["hidden_dim"], config["num_layers"],
                          config["num_heads"], pad_token_id=config["pad_token_id"],
                          bos_token_id=config["bos_token_id"], rngs=nnx.Rngs(0))
    load_weights(model, os.path.join(out, "checkpoints"))
    return model


def block_parameters(model: TransformerAR) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model.blocks, nnx.Param)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "bench_speculative"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--n-samples", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.isfile(DATA):
        sys.exit(f"tiny Shakespeare not found at {DATA}")
    target, draft = load(train("target", args.work, args.steps)), load(train("draft", args.work, args.steps))
    print(f"machine: {platform.machine()} {platform.processor()}, {jax.devices()[0].device_kind}, jax {jax.__version__}; "
          f"target {block_parameters(target)} / draft {block_parameters(draft)} transformer-block parameters "
          f"({block_parameters(target) / block_parameters(draft):.1f}x); {args.n_samples} sample(s) of {args.length} tokens")
    prompt = [target.bos_token_id]
    for temperature in args.temperature:
        baseline, _ = timed(lambda: target.generate(args.n_samples, args.length, temperature=temperature,
                                                    prompt=prompt, rngs=nnx.Rngs(0)), args.repeats)
        print(f"temperature {temperature}: target alone {baseline * 1e3:.1f} ms")
        for k in args.k:
            spent, (_, rate) = timed(lambda: speculative_sampling(
                target, draft, args.n_samples, args.length, k=k, prompt=prompt, temperature=temperature,
                rngs=nnx.Rngs(0)), args.repeats)
            print(f"  k={k}: speculative {spent * 1e3:.1f} ms, acceptance {rate:.3f}, speedup {baseline / spent:.2f}x")


if __name__ == "__main__":
    main()
