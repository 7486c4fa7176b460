"""Checkpoint storage on orbax's CheckpointManager.

One checkpoint is one step directory ``<dir>/<step>/`` holding two items:
``state`` (the model and optimizer arrays, RNG keys included, plus the Trainer's
device-side metric sums) and ``meta`` (JSON: counters, data-loader position,
callback states). Orbax writes each step into a temporary directory and renames it
only once complete, so a crash mid-save never leaves a half checkpoint that
``latest_step`` would pick.

What a crash cannot do, a disk can: ``meta`` also holds a 32-bit fingerprint of every
array, computed on the device at save time, and :meth:`CheckpointStore.restore` checks
the arrays it read against them, so flipped bytes are an error naming the checkpoint
and the array, never silently wrong weights. Before reading, the stored shapes are
compared with the model's, so a checkpoint of another configuration is refused with
the shapes that differ. Nothing here unpickles: arrays are tensorstore files, the
rest is JSON.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax import lax

_policies = ocp.checkpoint_managers
FINGERPRINTS = "fingerprints"


class _QuietReadOnlyNotice(logging.Filter):
    """Drop orbax's warnings that a manager is read only ('Given directory is read only',
    'read_only=True, setting save_interval_steps=0'): a read-only manager is how this module
    reads checkpoints, not a problem with the directory."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not ("read only" in message or "read_only=True" in message)


logging.getLogger("absl").addFilter(_QuietReadOnlyNotice())


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files are missing or damaged."""


class IncompatibleCheckpointError(ValueError):
    """A checkpoint of another model configuration: its array shapes differ."""


class CheckpointStore:
    """Save and restore Trainer checkpoints in one directory.

    ``keep_last`` keeps that many newest checkpoints (0: none); ``top_k`` keeps the k best by the score
    passed to :meth:`save` (lower is better with ``mode='min'``); ``top_k=-1`` keeps
    everything. ``scored=False`` (no monitored metric) turns scoring off altogether. Saves are asynchronous when ``async_save``: ``save`` returns once the
    arrays are copied and the files are written in the background.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_last: int = 1, top_k: int = 1,
                 mode: str = "min", scored: bool = True, async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        policies = []  # none at all (top_k=-1) keeps every checkpoint
        if top_k != -1:
            if keep_last:
                policies.append(_policies.LatestN(n=int(keep_last)))
            if top_k > 0:
                policies.append(_policies.BestN(
                    get_metric_fn=lambda metrics: metrics["score"], reverse=(mode == "min"),
                    n=top_k, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_policies.AnyPreservationPolicy(policies) if policies else None,
            best_fn=(lambda metrics: metrics["score"]) if scored else None, best_mode=mode,
            enable_async_checkpointing=async_save, read_only=read_only, create=not read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: Mapping[str, Any], score: float | None = None) -> None:
        """Write ``state`` (a pytree of arrays) and ``meta`` (JSON) as checkpoint ``step``."""
        # Copy first: the Trainer donates its buffers to the next step while the
        # asynchronous write may still be reading them. The JSON is frozen now too, so
        # later changes to callback state cannot leak into this checkpoint.
        state = jax.tree.map(lambda x: x.copy(), state)
        meta = {**_frozen_json(meta), FINGERPRINTS: fingerprints(state)}
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)),
            metrics=None if score is None else {"score": float(score)}, force=True)

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """Read checkpoint ``step`` into arrays shaped (and sharded) like ``target``; returns
        ``(state, meta)``. Raises :class:`IncompatibleCheckpointError` when its shapes differ
        from ``target``'s and :class:`CorruptCheckpointError` when it cannot be read or reads
        back other bytes than were saved, both naming the checkpoint."""
        self._check_shapes(step, target)
        restored = self._read(step, ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                       meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        self._check_fingerprints(step, restored["state"], meta)
        return restored["state"], meta

    def restore_subtree(self, step: int, target: Mapping[str, Any]) -> dict[str, Any]:
        """Read only the parts of checkpoint ``step``'s state named in ``target`` (e.g. the
        model), checked like :meth:`restore`."""
        target = dict(target)
        self._check_shapes(step, target)
        restored = self._read(step, ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                         partial_restore=True),
            meta=ocp.args.JsonRestore()))
        self._check_fingerprints(step, restored["state"], dict(restored["meta"]))
        return restored["state"]

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _read(self, step: int, args):
        try:
            return self._manager.restore(step, args=args)
        except Exception as exc:  # orbax/tensorstore raise many kinds for damaged files
            raise CorruptCheckpointError(f"checkpoint {self.step_path(step)} cannot be read (missing or damaged "
                                         f"files?): {type(exc).__name__}: {str(exc)[:300]}") from exc

    def _check_shapes(self, step: int, target: Any) -> None:
        """Refuse a checkpoint whose arrays have other shapes than ``target``'s, listing them."""
        try:
            metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.step_path(step)) / "state")
            stored = _shapes(metadata.tree)
        except Exception as exc:
            raise CorruptCheckpointError(f"checkpoint {self.step_path(step)} has no readable metadata: "
                                         f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        wanted = _shapes(target)
        differ = [f"{path}: checkpoint {stored[path]} vs model {shape}"
                  for path, shape in wanted.items() if path in stored and stored[path] != shape]
        missing = sorted(set(wanted) - set(stored))
        if differ or missing:
            lines = differ[:10] + [f"{path}: not in the checkpoint" for path in missing[:10]]
            raise IncompatibleCheckpointError(
                f"checkpoint {self.step_path(step)} does not fit this model (a different configuration?); "
                f"{len(differ)} array(s) differ in shape, {len(missing)} are missing:\n  " + "\n  ".join(lines))

    def _check_fingerprints(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        saved = meta.get(FINGERPRINTS)
        if saved is None:  # written before fingerprints existed
            return
        read = fingerprints(state)
        bad = [path for path, value in read.items() if path in saved and saved[path] != value]
        if bad:
            raise CorruptCheckpointError(f"checkpoint {self.step_path(step)} is corrupt: {len(bad)} array(s) read "
                                         f"back differ from what was saved, e.g. {bad[0]!r}")

    def steps(self) -> list[int]:
        """The complete checkpoints. Orbax deletes a superseded step in place, so a crash
        during that delete leaves a directory it would still list: both items must be there."""
        return [step for step in self._manager.all_steps() if self._complete(step)]

    def latest_step(self) -> int | None:
        steps = self.steps()
        return max(steps) if steps else None

    def _complete(self, step: int) -> bool:
        path = self.step_path(step)
        return all(os.path.exists(os.path.join(path, item)) for item in ("state/_METADATA", "meta/metadata"))

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def wait(self) -> None:
        """Block until every asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def fingerprints(tree: Any) -> dict[str, int]:
    """``{path: 32-bit fingerprint}`` of every array in ``tree``, computed on its devices.

    The fingerprint is the sum, modulo 2**32, of the array's bits (as unsigned ints)
    times odd position weights, so any change of a single element changes it.
    """
    flat = _flat_paths(tree)
    values = _fingerprint_arrays(tuple(flat.values()))
    return dict(zip(flat, (int(v) for v in jax.device_get(values))))


@jax.jit
def _fingerprint_arrays(arrays):
    return [_fingerprint(x) for x in arrays]


def _fingerprint(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()
    weights = (jnp.arange(bits.size, dtype=jnp.uint32) % 65521) * 2 + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)


def _flat_paths(tree: Any) -> dict[str, Any]:
    """``{'model/blocks/0/kernel/value': leaf}``: the same path strings for live states and
    for orbax's stored metadata, whose keys are all strings."""
    def name(key):
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): leaf for path, leaf in leaves}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {path: tuple(getattr(leaf, "shape", np.shape(leaf))) for path, leaf in _flat_paths(tree).items()}


def _frozen_json(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-only copy of ``meta``; a non-JSON value is an error naming its key."""
    def check(value, path):
        if isinstance(value, Mapping):
            return {str(k): check(v, f"{path}/{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [check(v, f"{path}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"checkpoint metadata {path!r} holds a {type(value).__name__}; callback "
                        "state_dict() values must be JSON (numbers, strings, lists, dicts)")
    return check(meta, "")


def split_step_path(path: str | os.PathLike) -> tuple[str, int | None]:
    """``'<dir>/<step>'`` -> ``(dir, step)``; a checkpoint root -> ``(root, None)`` (its latest)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"ckpt_path={path!r} does not exist or is not a directory")
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    return path, None


def load_weights(module, ckpt_path: str | os.PathLike) -> int:
    """Load the model weights of a Trainer checkpoint into ``module`` (optimizer state and
    counters are skipped); ``ckpt_path`` is a step directory or a checkpoint root (its
    latest step). Returns the step loaded. For inference, e.g. a recipe's generate mode."""
    from flax import nnx

    directory, step = split_step_path(ckpt_path)
    store = CheckpointStore(directory, read_only=True)
    try:
        step = store.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"ckpt_path={os.fspath(ckpt_path)!r} holds no complete checkpoint")
        restored = store.restore_subtree(step, {"model": nnx.state(module)})
    finally:
        store.close()
    nnx.update(module, restored["model"])
    return step
