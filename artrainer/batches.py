"""What the Trainer checks of the batches it is given, and how it groups them into steps.

Every batch must match the first one (same keys, shapes, dtypes: one compilation), and the
module's integer inputs must lie in ``[0, input_value_limit)``, which the compiled step
cannot check. With gradient accumulation a step's input is that many batches, stacked.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np


def check_batches(name: str, data: Any) -> None:
    """``data`` must be an iterable of batch dicts (not None, a dict or a str)."""
    if isinstance(data, (Mapping, str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"{name} must be an iterable of batch dicts (e.g. a list or an "
                        f"artrainer.data.DataLoader); got {type(data).__name__}")


def step_inputs(batches: Iterator, accumulate: int, checker: "BatchChecker") -> Iterator:
    """One step's input at a time: a checked batch, or ``accumulate`` of them stacked.
    Trailing batches that do not fill a step are dropped with a warning."""
    while True:
        group = list(itertools.islice(batches, accumulate))
        if len(group) < accumulate:
            if group:
                warnings.warn(f"dropping {len(group)} trailing batch(es) that do not fill "
                              f"accumulate_grad_batches={accumulate}", stacklevel=5)
            return
        for batch in group:
            checker.check(batch)
        yield group[0] if accumulate == 1 else stack(group)


def stack(batches: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Batches with equal keys and shapes as one batch with a leading axis of ``len(batches)``."""
    return {key: np.stack([np.asarray(batch[key]) for batch in batches]) for key in batches[0]}


class BatchChecker:
    """Checks each batch against the first: same keys, shapes and dtypes (one compile), and
    the integer values of the module's input in ``[0, value_limit)`` (a host-side min / max;
    the compiled step cannot read them)."""

    def __init__(self, name: str, input_key: str, value_limit: int | None = None):
        self.name, self.input_key, self.value_limit = name, input_key, value_limit
        self.spec: dict[str, tuple] | None = None

    def check(self, batch) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"{self.name} must yield dicts of arrays; got {type(batch).__name__}")
        if self.spec is None:
            self._check_first(batch)
        else:
            self._check_like_first(batch)
        self._check_input_values(batch[self.input_key])

    def _check_first(self, batch) -> None:
        if self.input_key not in batch:
            raise ValueError(f"{self.name} batches lack the module's input_key {self.input_key!r}; "
                             f"they have keys {sorted(batch)}")
        for key, value in batch.items():
            if np.ndim(value) and np.shape(value)[0] == 0:
                raise ValueError(f"{self.name} batch[{key!r}] has shape {np.shape(value)}: a batch needs "
                                 "at least one row")
        self.spec = {k: (np.shape(v), np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype)
                     for k, v in batch.items()}

    def _check_like_first(self, batch) -> None:
        if batch.keys() != self.spec.keys():
            raise ValueError(f"{self.name} batch keys changed from {sorted(self.spec)} to {sorted(batch)}")
        for key, (shape, dtype) in self.spec.items():
            value = batch[key]
            if np.shape(value) != shape or getattr(value, "dtype", dtype) != dtype:
                raise ValueError(
                    f"{self.name} batch[{key!r}] has shape {np.shape(value)} dtype "
                    f"{getattr(value, 'dtype', '?')}, but the first batch had {shape} {dtype}; batch "
                    "shapes must stay fixed (use artrainer.data.DataLoader with last_batch='drop' or 'pad')")

    def _check_input_values(self, value) -> None:
        """Integer ids / pixel values / codes in ``[0, value_limit)``, for host (numpy) batches:
        a batch already on the device is not read back, which would sync every step."""
        dtype = self.spec[self.input_key][1]
        if (self.value_limit is None or isinstance(value, jax.Array) or not np.issubdtype(dtype, np.integer)
                or not np.size(value)):
            return
        low, high = np.min(value), np.max(value)
        if low < 0 or high >= self.value_limit:
            raise ValueError(f"{self.name} batch[{self.input_key!r}] must hold token ids / input values in "
                             f"[0, {self.value_limit}) (the module's input_value_limit); got "
                             f"{low if low < 0 else high}")
