"""KV-cache generation against full recomputation, same model, same tokens.

Both paths are the same compiled ``while_loop`` (``TransformerAR.generate``); the
baseline (``use_cache=False``) recomputes the whole sequence every step, the candidate
feeds one token per step through the KV cache. Greedy decoding makes both produce
identical tokens, which is checked. Medians of ``--repeats`` timed runs after a
compiling warm-up.

    python bench/kv_cache.py [--lengths 256 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform

import jax
import numpy as np
from flax import nnx

from timing import timed  # bench/timing.py (bench/ is on sys.path when run as a script)

from artrainer.models import TransformerAR

CONFIG = dict(vocab_size=259, hidden_dim=128, num_layers=4, num_heads=4)  # nanoGPT's "baby GPT" width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}; model {CONFIG}, {args.n_samples} sample(s), greedy")
    for length in args.lengths:
        model = TransformerAR(sequence_length=length, **CONFIG, rngs=nnx.Rngs(0))
        runs = {}
        for use_cache in (False, True):
            runs[use_cache] = timed(lambda: model.generate(args.n_samples, length, temperature=0.0,
                                                           rngs=nnx.Rngs(0), use_cache=use_cache), args.repeats)
        np.testing.assert_array_equal(runs[True][1], runs[False][1])
        recompute, cached = runs[False][0], runs[True][0]
        print(f"{length:5d} tokens: full recomputation {recompute:8.3f} s, KV cache {cached:7.3f} s "
              f"({length / cached:8.0f} tokens/s), speedup {recompute / cached:6.1f}x; tokens identical")


if __name__ == "__main__":
    main()
