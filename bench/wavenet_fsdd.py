"""WaveNet on the Free Spoken Digit Dataset within a fixed CPU time budget: held-out bits/dim.

Trains on the recordings of five speakers (8 kHz, mu-law, one --window-sample window per
recording, padding masked out of the loss) and evaluates exactly on every recording of
the held-out speaker(s), after --minutes of training wall time (compilation included).
For scale: 8 bits/sample is a uniform guess over the 256 codes.

    python bench/wavenet_fsdd.py [--minutes 15] [--val-speakers theo]
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
from artrainer.data.audio import load_fsdd, split_by_speaker
from artrainer.models import WaveNet

FSDD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "fsdd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--val-speakers", default="theo")
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--num-layers", type=int, default=20)
    parser.add_argument("--num-stacks", type=int, default=2)
    parser.add_argument("--residual-channels", type=int, default=32)
    parser.add_argument("--dilation-channels", type=int, default=32)
    parser.add_argument("--skip-channels", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    if not os.path.isdir(FSDD):
        sys.exit(f"FSDD not found at {FSDD}")
    train, val = split_by_speaker(load_fsdd(FSDD, length=args.window), args.val_speakers.split(","))
    columns = ("waveform", "mask")
    model = WaveNet(num_layers=args.num_layers, num_stacks=args.num_stacks,
                    residual_channels=args.residual_channels, dilation_channels=args.dilation_channels,
                    skip_channels=args.skip_channels, sample_rate=8000, rngs=nnx.Rngs(0))
    model.learning_rate = args.lr
    trainer = Trainer(max_epochs=1000, callbacks=[TimeBudget(args.minutes * 60), LRWarmup(100)], logger=False,
                      enable_progress_bar=False, log_every_n_steps=50)
    start = time.perf_counter()
    trainer.fit(model, DataLoader({k: train[k] for k in columns}, args.batch_size, seed=0))
    elapsed = time.perf_counter() - start
    metrics = trainer.validate(model, DataLoader({k: val[k] for k in columns}, 50, shuffle=False,
                                                 last_batch="pad"))
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"WaveNet layers={args.num_layers} stacks={args.num_stacks} residual={args.residual_channels} "
          f"dilation={args.dilation_channels} skip={args.skip_channels} (receptive field "
          f"{model.receptive_field}), window {args.window}, batch {args.batch_size}, lr {args.lr}")
    print(f"trained {trainer.global_step} steps ({trainer.global_step * args.batch_size / len(train['waveform']):.2f} "
          f"epochs over {len(train['waveform'])} recordings) in {elapsed / 60:.1f} min; train bits/dim "
          f"{trainer.callback_metrics.get('train/bits_per_dim', float('nan')):.4f}; held-out "
          f"({args.val_speakers}, {len(val['waveform'])} recordings, {int(val['mask'].sum())} samples) "
          f"bits/dim {metrics['val/bits_per_dim']:.4f}")


if __name__ == "__main__":
    main()
