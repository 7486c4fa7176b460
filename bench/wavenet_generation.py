"""WaveNet generation: fast per-layer queues against full recomputation of the receptive field.

One randomly initialised WaveNet of 2 stacks × 10 layers (dilations 1 … 512, receptive
field 2,048 samples) generates --length samples both ways with the same key:
``method='naive'`` reruns the network over the whole receptive field for every sample,
``method='fast'`` (the default) advances each layer's queue by one position. Both are one
compiled ``lax.scan``; their outputs are checked identical (sampled at temperature 1).

    python bench/wavenet_generation.py [--length 8000] [--n-samples 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import numpy as np
from flax import nnx

from timing import timed  # bench/timing.py (bench/ is on sys.path when run as a script)

from artrainer.models import WaveNet

CONFIG = dict(num_layers=20, num_stacks=2, residual_channels=32, dilation_channels=32, skip_channels=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8000)
    parser.add_argument("--n-samples", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    model = WaveNet(**CONFIG, rngs=nnx.Rngs(0))
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"WaveNet {CONFIG}, receptive field {model.receptive_field}; "
          f"{args.n_samples} x {args.length} samples at temperature 1")

    def run(method):
        return model.generate(args.n_samples, args.length, 1.0, rngs=jax.random.key(0), method=method)

    naive_time, naive = timed(lambda: run("naive"), args.repeats)
    fast_time, fast = timed(lambda: run("fast"), args.repeats)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(naive))
    print(f"naive {naive_time:.2f} s ({naive_time / args.length * 1e3:.3f} ms/sample), "
          f"fast {fast_time:.2f} s ({fast_time / args.length * 1e3:.3f} ms/sample), "
          f"speedup {naive_time / fast_time:.1f}x; samples identical")


if __name__ == "__main__":
    main()
