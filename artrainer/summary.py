"""The one-screen summary a run starts with: what is trained, where, on how much data."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

#: How the rows and elements of each input are called: (rows, elements).
UNITS = {"sequences": ("sequences", "tokens"), "images": ("images", "sub-pixels"),
         "waveform": ("clips", "audio samples")}


def run_summary(trainer, module, batch: Mapping) -> str:
    """A few lines: model and parameter counts, devices and strategy, precision, data size
    in the input's own units, steps per epoch. ``batch`` is the first training batch (as
    fed to the step: with accumulation, ``accumulate_grad_batches`` stacked batches)."""
    params = nnx.state(module, nnx.Param)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, module.trainable)))
    rows_name, elements_name = UNITS.get(module.input_key, ("examples", "elements"))
    shape = np.shape(batch[module.input_key])
    if trainer.accumulate_grad_batches > 1:
        shape = shape[1:]
    rows_per_batch, per_row = shape[0], math.prod(shape[1:])
    batches = trainer.num_training_batches
    rows = getattr(trainer.train_data, "num_examples", None)
    if rows is None and batches is not None:
        rows = batches * rows_per_batch
    data = (f"{rows:,} {rows_name} x {per_row:,} = {rows * per_row:,} {elements_name} per epoch"
            if rows is not None else f"an unsized stream of {rows_per_batch}-row batches")
    devices = jax.devices()
    device_kinds = ", ".join(sorted({d.device_kind for d in devices}))
    steps = "unknown" if batches is None else f"{batches // trainer.accumulate_grad_batches:,}"
    lines = [
        f"model      {type(module).__name__}: {total:,} parameters ({trainable:,} trained)",
        f"devices    {len(devices)} x {device_kinds} ({jax.default_backend()}), strategy {trainer.strategy}",
        f"precision  {trainer.precision}",
        f"data       {data}",
        f"batch      {rows_per_batch:,} {rows_name} x {trainer.accumulate_grad_batches} accumulated per step",
        f"schedule   {steps} steps per epoch; max_steps {trainer.max_steps}, max_epochs {trainer.max_epochs}",
    ]
    return "\n".join(lines)
