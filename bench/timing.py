"""Timing shared by the benchmarks: a compiling warm-up, then the median of timed runs."""

from __future__ import annotations

import statistics
import time

import jax


def timed(fn, repeats: int):
    """``(median seconds, last result)`` of ``fn()`` over ``repeats`` runs after one warm-up."""
    result = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
