"""Find the largest batch size whose training step fits in device memory.

Like Lightning's batch-size finder in "power" mode: try ``init_batch_size``, then
double it. Each size compiles the Trainer's own train step for that batch shape,
asks XLA how much memory the executable needs, and, when that fits the limit, runs
it on copies of the weights, since the estimate can miss allocator overheads and an
out-of-memory at run time is the final word. The user's module and the Trainer are
only read: nothing compiled or trained here stays behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from artrainer import step as compiled_step
from artrainer.data.loader import DataLoader
from artrainer.device_manager import DeviceManager
from artrainer.module import ARModule
from artrainer.trainer import Trainer
from artrainer.validation import require_int

logger = logging.getLogger("artrainer")

# Substrings by which XLA's runtime errors say that the device ran out of memory.
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory")


def scale_batch_size(trainer: Trainer, module: ARModule, data: Mapping[str, Any] | DataLoader, *,
                     init_batch_size: int = 2, max_batch_size: int | None = None, max_trials: int = 25,
                     memory_limit_bytes: int | None = None, steps_per_trial: int = 1) -> int:
    """The largest of ``init_batch_size * 2**k`` whose training step fits; see the module docstring.

    ``data`` is a dict of equal-length arrays (batches are its first rows) or a
    DataLoader (its next batch, rows repeated to each size). The search stops at the
    first size that does not fit, after ``max_trials`` sizes, or at ``max_batch_size``
    or the number of rows in ``data``, whichever is smaller; that cap is itself tried
    when doubling overshoots it. ``memory_limit_bytes`` defaults to the device's
    (``DeviceManager().memory_limit_bytes()``); where neither is known (the CPU) only
    running the step decides. Each fitting size runs ``steps_per_trial`` steps.
    Raises ValueError if ``init_batch_size`` itself does not fit.
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be an artrainer.Trainer; got {type(trainer).__name__}")
    if not isinstance(module, ARModule):
        raise TypeError(f"module must be an artrainer.ARModule; got {type(module).__name__}")
    init_batch_size = require_int("init_batch_size", init_batch_size, minimum=1)
    max_batch_size = require_int("max_batch_size", max_batch_size, minimum=1, optional=True)
    if max_batch_size is not None and max_batch_size < init_batch_size:
        raise ValueError(f"max_batch_size={max_batch_size} is below init_batch_size={init_batch_size}")
    max_trials = require_int("max_trials", max_trials, minimum=1)
    memory_limit_bytes = require_int("memory_limit_bytes", memory_limit_bytes, minimum=1, optional=True)
    steps_per_trial = require_int("steps_per_trial", steps_per_trial, minimum=1)
    rows, available = _rows_of(data, module.input_key)
    if init_batch_size > available:
        raise ValueError(f"init_batch_size={init_batch_size} exceeds the {available} rows of data")
    cap = available if max_batch_size is None else min(available, max_batch_size)
    limit = memory_limit_bytes if memory_limit_bytes is not None else DeviceManager().memory_limit_bytes()

    probe = _StepProbe(trainer, module)
    fitted: _Trial | None = None
    size = init_batch_size
    for _ in range(max_trials):
        trial = probe.trial(size, _take(rows, size), limit, steps_per_trial)
        if trial.failure is not None:
            if fitted is None:
                raise ValueError(f"scale_batch_size: init_batch_size={init_batch_size} does not fit: "
                                 f"{trial.failure}")
            stop = f"{size} does not ({trial.failure})"
            break
        fitted = trial
        if size == cap:
            stop = (f"stopped at max_batch_size={max_batch_size}" if cap == max_batch_size
                    else f"stopped at the {available} rows of data")
            break
        size = min(2 * size, cap)
    else:
        stop = f"stopped after max_trials={max_trials}"
    report = f"scale_batch_size: {fitted.size} fits ({fitted.usage}); {stop}"
    logger.info(report)
    print(report)
    return fitted.size


def step_memory_bytes(trainer: Trainer, module: ARModule, batch: Mapping[str, Any]) -> int | None:
    """XLA's estimate of the device bytes ``trainer``'s step needs for ``batch`` (a batch
    as ``train_data`` yields it), or None where the backend gives no estimate."""
    return _needed_bytes(_StepProbe(trainer, module).compile(dict(batch)))


@dataclass
class _Trial:
    size: int
    usage: str  # the memory it needs, for the report
    failure: str | None  # why it does not fit; None when it does


class _StepProbe:
    """The step ``fit`` would run for ``module`` (:meth:`Trainer.build_train_step`: the real
    optimizer state, placement and sharding), compiled per batch shape."""

    def __init__(self, trainer: Trainer, module: ARModule):
        plan = trainer.build_train_step(module)
        self._trainer, self._model_def, self._state, self._step = trainer, plan.model_def, plan.state, plan.step
        self._accumulate, self._precision, self._seed = (
            trainer.accumulate_grad_batches, trainer.precision, trainer.seed)
        self._metric_keys = None

    def compile(self, batch):
        return self._step.lower(*self._inputs(self._state, batch)).compile()

    def trial(self, size: int, batch, limit: int | None, steps: int) -> _Trial:
        try:
            compiled = self.compile(batch)
            needed = _needed_bytes(compiled)
            usage = _usage(needed, limit)
            if limit is not None and needed is not None and needed > limit:
                return _Trial(size, usage, usage)
            # Copies: the step donates its inputs, and these arrays are the user's module's.
            _run_steps(compiled, self._inputs(jax.tree.map(jnp.copy, self._state), batch), steps)
        except jax.errors.JaxRuntimeError as error:
            if not any(marker in str(error) for marker in _OOM_MARKERS):
                raise
            return _Trial(size, "", "out of memory: " + str(error).split("\n", 1)[0][:200])
        return _Trial(size, usage, None)

    def _inputs(self, state, batch):
        """``(state, sums, health, step batch)`` as ``Trainer._run_step`` passes them."""
        if self._metric_keys is None:
            self._metric_keys = compiled_step.metric_shapes(self._model_def, state["model"], batch,
                                                            self._precision, self._seed)
        if self._accumulate > 1:
            batch = {k: np.stack([v] * self._accumulate) for k, v in batch.items()}
        batch = self._trainer.place_batch(batch, self._accumulate)
        return state, compiled_step.init_train_sums(self._metric_keys), compiled_step.init_health(), batch


def _run_steps(compiled, inputs, steps: int) -> None:
    """Run ``steps`` steps, each on the last one's outputs, and wait, so errors surface here."""
    state, sums, health, batch = inputs
    for _ in range(steps):
        state, sums, health, outputs = compiled(state, sums, health, batch)
    jax.block_until_ready((state, outputs))


def _needed_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries, less the outputs that reuse donated arguments."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)


def _rows_of(data, input_key: str) -> tuple[dict[str, np.ndarray], int]:
    """Rows to cut batches from, and how many rows ``data`` really has."""
    if isinstance(data, DataLoader):
        position = data.state_dict()  # take the next batch without moving the loader
        batches = iter(data)
        try:
            rows = next(batches)
        finally:
            batches.close()
            data.load_state_dict(position)
        available = data.num_examples
    elif isinstance(data, Mapping):
        rows, available = {k: np.asarray(v) for k, v in data.items()}, None
    else:
        raise TypeError(f"data must be a dict of equal-length arrays or an artrainer.data.DataLoader; "
                        f"got {type(data).__name__}")
    if input_key not in rows:
        raise ValueError(f"data lacks the module's input_key {input_key!r}; it has keys {sorted(rows)}")
    if available is not None:
        return rows, available
    lengths = {k: (v.shape[0] if v.ndim else None) for k, v in rows.items()}
    if None in lengths.values() or len(set(lengths.values())) > 1:
        raise ValueError(f"data must hold arrays with one leading row axis of equal length; "
                         f"got leading lengths {lengths} (None: a scalar)")
    return rows, lengths[input_key]


def _take(rows: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The first ``size`` rows, repeating them when there are fewer (shapes are what count)."""
    index = np.arange(size) % len(next(iter(rows.values())))
    return {k: v[index] for k, v in rows.items()}


def _usage(needed: int | None, limit: int | None) -> str:
    if needed is None:
        return "no memory estimate from this backend"
    if limit is None:
        return f"estimated {_format_bytes(needed)}, no memory limit known"
    return f"estimated {_format_bytes(needed)} of {_format_bytes(limit)}"


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
