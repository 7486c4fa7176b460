"""Timing shared by the benchmarks: medians of timed runs after a compiling warm-up, and a
wall-time budget for training runs."""

from __future__ import annotations

import statistics
import time

import jax

from artrainer import Callback


def timed(fn, repeats: int):
    """``(median seconds, last result)`` of ``fn()`` over ``repeats`` runs after one warm-up."""
    result = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class TimeBudget(Callback):
    """Stop training once ``seconds`` of wall time have passed since training started."""

    uses_module = False

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if time.perf_counter() - self.start >= self.seconds:
            trainer.should_stop = True
