"""Fixed-shape, exactly resumable numpy batches for the trainer."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from artrainer.validation import require_bool, require_choice, require_int

if TYPE_CHECKING:
    import datasets

Batch = dict[str, np.ndarray]
Gather = Callable[[np.ndarray], Batch]

_LAST_BATCH_MODES = ("drop", "pad")
_MASK_KEY = "example_mask"
_STATE_KEYS = ("epoch", "batches_yielded", "seed")
_END = object()  # Sentinel the prefetch worker enqueues after its last batch.


class DataLoader:
    """Fixed-shape numpy batches from in-memory arrays or a Hugging Face `datasets.Dataset`, resumable.

    Every batch has exactly `batch_size` rows so a jitted step never recompiles. With
    `last_batch="pad"` the ragged tail is padded and every batch carries a float32
    `'example_mask'` (1.0 real, 0.0 padding) so the batch pytree is the same all run long.

    One `for batch in loader` is one epoch. The loader remembers how many batches it has
    handed out, so a new iterator (or a fresh loader given `load_state_dict`) continues
    exactly where the last one stopped. Use one live iterator per loader at a time: they
    share that position.

    Multi-host: every process builds the same loader with ``num_shards=jax.process_count()``
    and ``shard_index=jax.process_index()``; ``batch_size`` stays the global batch, and each
    process gets its contiguous ``batch_size / num_shards`` rows of every global batch.
    """

    def __init__(
        self,
        source: Mapping[str, ArrayLike] | datasets.Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        last_batch: str = "drop",
        prefetch: int = 2,
        columns: Sequence[str] | None = None,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        self.batch_size = require_int("batch_size", batch_size, minimum=1)
        self.num_shards = require_int("num_shards", num_shards, minimum=1)
        self.shard_index = require_int("shard_index", shard_index, minimum=0)
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index={shard_index} must be < num_shards={num_shards}")
        if self.batch_size % self.num_shards:
            raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by "
                             f"num_shards={num_shards}, so every shard gets the same number of rows")
        self.seed = require_int("seed", seed, minimum=0)
        self.prefetch = require_int("prefetch", prefetch, minimum=0)
        self.last_batch = require_choice("last_batch", last_batch, _LAST_BATCH_MODES)
        self.shuffle = require_bool("shuffle", shuffle)

        self._num_examples, self.columns, self._gather = _open_source(source, columns)
        if last_batch == "pad" and _MASK_KEY in self.columns:
            raise ValueError(
                f"columns contain {_MASK_KEY!r}, which last_batch='pad' adds itself; "
                "rename that column or select other columns"
            )
        if last_batch == "drop" and self.batch_size > self._num_examples:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds num_examples={self._num_examples} with "
                "last_batch='drop', so an epoch would be empty; use a batch_size <= "
                f"{self._num_examples} or last_batch='pad'"
            )
        full, ragged = divmod(self._num_examples, self.batch_size)
        self._num_batches = full + (ragged > 0 and last_batch == "pad")

        self._epoch = 0
        self._batches_yielded = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._num_batches

    @property
    def num_examples(self) -> int:
        return self._num_examples

    def __iter__(self) -> Iterator[Batch]:
        """Yields the rest of the current epoch, then moves the position to the next one.

        The position advances as each batch is handed over, never for batches the
        prefetch thread has only assembled, so abandoning the iterator loses nothing.
        The last batch of an epoch already rolls the position to (epoch + 1, 0): a
        checkpoint taken right after it resumes at the next epoch, not into an empty one.
        """
        epoch, start = self._epoch, self._batches_yielded
        order = self._epoch_order(epoch)
        batches = (self._assemble(order, b) for b in range(start, self._num_batches))
        if self.prefetch:
            batches = _prefetched(batches, self.prefetch)
        with contextlib.closing(batches):
            for b, batch in enumerate(batches, start):
                if b + 1 == self._num_batches:
                    self._epoch, self._batches_yielded = epoch + 1, 0
                else:
                    self._batches_yielded = b + 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches_yielded": self._batches_yielded, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping with keys {_STATE_KEYS}, got {type(state).__name__}")
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state is missing keys {missing}; expected keys {_STATE_KEYS}")
        epoch, batches_yielded, seed = (
            require_int(f"state[{key!r}]", state[key], minimum=0) for key in _STATE_KEYS
        )
        if seed != self.seed:
            raise ValueError(
                f"state['seed']={seed} does not match this loader's seed={self.seed}; "
                "resuming would replay a different order"
            )
        if batches_yielded >= self._num_batches:
            raise ValueError(
                f"state['batches_yielded']={batches_yielded} must be < {self._num_batches}, "
                "the batches per epoch of this loader; was it saved with another batch_size or source?"
            )
        self._epoch, self._batches_yielded = epoch, batches_yielded

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Example order of `epoch`: a pure function of (seed, epoch), which is what makes resume exact."""
        if not self.shuffle:
            return np.arange(self._num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self._num_examples)

    def _assemble(self, order: np.ndarray, b: int) -> Batch:
        indices = order[b * self.batch_size : (b + 1) * self.batch_size]
        num_real = len(indices)
        indices = np.pad(indices, (0, self.batch_size - num_real), constant_values=indices[0])
        mask = (np.arange(self.batch_size) < num_real).astype(np.float32)
        rows = self.batch_size // self.num_shards
        shard = slice(self.shard_index * rows, (self.shard_index + 1) * rows)
        batch = self._gather(indices[shard])
        if self.last_batch == "pad":
            batch[_MASK_KEY] = mask[shard]
        return batch


def _open_source(source: Any, columns: Sequence[str] | None) -> tuple[int, tuple[str, ...], Gather]:
    """Validates `source` and returns (num_examples, column names, row gatherer)."""
    if isinstance(columns, str):
        raise TypeError(f"columns must be a sequence of column names, not the str {columns!r}")
    if columns is not None and not isinstance(columns, Sequence):
        raise TypeError(f"columns must be None or a sequence of column names, got {columns!r} "
                        f"of type {type(columns).__name__}")
    if columns is not None and not columns:
        raise ValueError("columns must name at least one column, got an empty sequence")

    # A Dataset instance implies `datasets` is imported; looking it up avoids paying its
    # import time for array sources.
    hf = sys.modules.get("datasets")
    if hf is not None and isinstance(source, hf.Dataset):
        available = tuple(source.column_names)
        names = _select(available, columns)
        table = source.select_columns(list(names)).with_format("numpy")
        return _check_num_examples(len(table)), names, lambda indices: dict(table[indices])

    if not isinstance(source, Mapping):
        raise TypeError(
            "source must be a dict of equal-length arrays or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )
    if not source:
        raise ValueError("source is empty: it must have at least one column")
    names = _select(tuple(source), columns)
    arrays = {name: _column_array(name, source[name]) for name in names}
    scalars = [name for name, array in arrays.items() if array.ndim == 0]
    if scalars:
        raise ValueError(f"source columns {scalars} are scalars; every column needs a leading example axis")
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"source columns must all have the same length, got lengths {lengths}")
    num_examples = _check_num_examples(next(iter(lengths.values())))
    return num_examples, names, lambda indices: {name: array[indices] for name, array in arrays.items()}


def _column_array(name: str, column: ArrayLike) -> np.ndarray:
    """``column`` as a numpy array of numbers or bools (a view where it already is one)."""
    try:
        array = np.asarray(column)
    except ValueError as error:  # a ragged nested list
        raise ValueError(f"source column {name!r} is ragged: its rows must all have the same shape "
                         f"({error})") from None
    if array.dtype.kind not in "biufc":
        raise TypeError(f"source column {name!r} has dtype {array.dtype}; columns must hold numbers or "
                        "bools (bool, int, uint, float or complex arrays), which a compiled step can take")
    return array


def _select(available: tuple[str, ...], requested: Sequence[str] | None) -> tuple[str, ...]:
    if requested is None:
        return available
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(f"columns has unknown names {unknown}; available columns are {list(available)}")
    return tuple(requested)


def _check_num_examples(num_examples: int) -> int:
    if num_examples == 0:
        raise ValueError("source is empty: it has 0 examples")
    return num_examples


def _prefetched(batches: Iterator[Batch], size: int) -> Iterator[Batch]:
    """Runs `batches` in a daemon thread at most `size` ahead; closing this generator joins it.

    The worker checks `stop` after every put and the consumer drains the queue after
    setting it, so a worker blocked on a full queue always wakes up and exits.
    """
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def work() -> None:
        try:
            for batch in batches:
                ready.put(batch)
                if stop.is_set():
                    return
        except BaseException as error:  # Anything, so the consumer never waits on a dead worker.
            ready.put(error)
        else:
            ready.put(_END)

    worker = threading.Thread(target=work, name="artrainer-data-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                ready.get_nowait()
        worker.join()
