"""PixelCNN sampling: the compiled loop against an uncompiled per-pixel Python loop.

Both sample 16 MNIST-sized images (28×28×1) from the same randomly initialised
PixelCNN with greedy decoding, so both must produce identical images (checked).
The baseline is what one writes without a compiled loop: a Python loop over all
784 positions, each running a (jitted) full forward pass on the canvas and writing
one pixel. The candidate is ``PixelCNN.generate``: one ``fori_loop`` under ``jax.jit``.

    python bench/pixelcnn_sampling.py [--n-samples 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from timing import timed  # bench/timing.py (bench/ is on sys.path when run as a script)

from artrainer.models import PixelCNN

CONFIG = dict(num_layers=5, hidden_channels=64, num_residual_blocks=3)


def python_loop(model: PixelCNN, n_samples: int) -> np.ndarray:
    height, width, channels = model.image_shape
    forward = jax.jit(lambda images: model(images)["logits"])
    canvas = jnp.zeros((n_samples, height, width, channels), jnp.int32)
    for row in range(height):
        for col in range(width):
            for channel in range(channels):
                logits = forward(canvas)[:, row, col, channel]
                canvas = canvas.at[:, row, col, channel].set(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    return np.asarray(canvas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = PixelCNN((28, 28, 1), **CONFIG, rngs=nnx.Rngs(0))
    print(f"machine: {platform.machine()} {platform.processor()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}; PixelCNN {CONFIG}, {args.n_samples} samples of 28x28x1, greedy")
    loop_time, loop_images = timed(lambda: python_loop(model, args.n_samples), args.repeats)
    compiled_time, compiled_images = timed(
        lambda: model.generate(args.n_samples, 0.0, rngs=nnx.Rngs(0)), args.repeats)
    np.testing.assert_array_equal(np.asarray(compiled_images), loop_images)
    print(f"per-pixel Python loop {loop_time:.2f} s, compiled loop {compiled_time:.2f} s, "
          f"speedup {loop_time / compiled_time:.2f}x; images identical")


if __name__ == "__main__":
    main()
