"""PixelCNN on MNIST within a fixed CPU time budget: the bits/dim it reaches.

Trains on 9,000 MNIST test-set images and evaluates exactly on the other 1,000
(../shared/data/mnist), stopping after --minutes of training wall time (compilation
included), then reports validation bits/dim. The long-run anchor (≈0.81 bits/dim,
a small gated PixelCNN after long GPU training) is in ../shared/data/README.md.

    python bench/pixelcnn_mnist.py [--minutes 15] [--gated]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
from flax import nnx

from timing import TimeBudget  # bench/timing.py (bench/ is on sys.path when run as a script)

from artrainer import Trainer
from artrainer.callbacks import LRWarmup
from artrainer.data import DataLoader
from artrainer.data.images import load_mnist, split_train_val
from artrainer.models import PixelCNN

MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "mnist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--gated", action="store_true")
    parser.add_argument("--hidden-channels", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=5)
    parser.add_argument("--num-residual-blocks", type=int, default=2)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if not os.path.isdir(MNIST):
        sys.exit(f"MNIST not found at {MNIST}")
    train, val = split_train_val(load_mnist(MNIST), 9000, 1000, seed=0)
    model = PixelCNN((28, 28, 1), num_layers=args.num_layers, hidden_channels=args.hidden_channels,
                     num_residual_blocks=args.num_residual_blocks, kernel_size=args.kernel_size, gated=args.gated,
                     rngs=nnx.Rngs(0))
    model.learning_rate = args.lr
    budget = TimeBudget(args.minutes * 60)
    trainer = Trainer(max_epochs=1000, callbacks=[budget, LRWarmup(200)], logger=False,
                      enable_progress_bar=False, log_every_n_steps=100)
    start = time.perf_counter()
    trainer.fit(model, DataLoader({"images": train["images"]}, args.batch_size, seed=0))
    elapsed = time.perf_counter() - start
    metrics = trainer.validate(model, DataLoader({"images": val["images"]}, 100, shuffle=False, last_batch="pad"))
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"PixelCNN gated={args.gated} hidden={args.hidden_channels} layers={args.num_layers} "
          f"residual={args.num_residual_blocks} kernel={args.kernel_size}, batch {args.batch_size}, lr {args.lr}")
    print(f"trained {trainer.global_step} steps ({trainer.global_step * args.batch_size / 9000:.2f} epochs) "
          f"in {elapsed / 60:.1f} min; train bits/dim {trainer.callback_metrics.get('train/bits_per_dim', float('nan')):.4f}; "
          f"val bits/dim {metrics['val/bits_per_dim']:.4f} (exact, 1,000 held-out images)")


if __name__ == "__main__":
    main()
