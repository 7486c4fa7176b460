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
import sys
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax import lax

from artrainer.step import init_health

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

    def restore(self, step: int, target: Any, *, partial: bool = False) -> tuple[Any, dict[str, Any]]:
        """Read checkpoint ``step`` into arrays shaped (and sharded) like ``target``; returns
        ``(state, meta)``. ``partial`` reads only the parts of the stored state that
        ``target`` names (e.g. just the model). Raises :class:`IncompatibleCheckpointError`
        when its shapes differ from ``target``'s and :class:`CorruptCheckpointError` when it
        cannot be read or reads back other bytes than were saved, both naming the checkpoint."""
        self._check_shapes(step, target)
        if partial:
            state_args = ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)
        else:
            state_args = ocp.args.StandardRestore(target)
        restored = self._read(step, ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        self._check_fingerprints(step, restored["state"], meta)
        return restored["state"], meta

    def stored_keys(self, step: int, *path: str) -> set[str]:
        """The keys of the stored state's subtree at ``path`` (empty if there is none)."""
        tree = self._metadata(step)
        for key in path:
            tree = tree.get(key) if isinstance(tree, Mapping) else None
        return set(tree) if isinstance(tree, Mapping) else set()

    def _metadata(self, step: int) -> Any:
        """The stored state's tree of array metadata (shapes, dtypes)."""
        try:
            return ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.step_path(step)) / "state").tree
        except Exception as exc:
            raise CorruptCheckpointError(f"checkpoint {self.step_path(step)} has no readable metadata: "
                                         f"{type(exc).__name__}: {str(exc)[:300]}") from exc

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
        stored = _shapes(self._metadata(step))
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
        restored, _ = store.restore(step, {"model": nnx.state(module)}, partial=True)
    finally:
        store.close()
    nnx.update(module, restored["model"])
    return step


# ------------------------------------------------------------------ a Trainer's run
def checkpoint_owner(trainer) -> tuple[Any, str]:
    """``(the callback whose role is "checkpoints", or None; the directory checkpoints live in)``."""
    owner = next((cb for cb in trainer.callbacks if cb.role == "checkpoints"), None)
    return owner, owner.dirpath_for(trainer) if owner is not None else trainer.default_checkpoint_dir()


def restore_run(trainer, loop, ckpt_path: str | os.PathLike) -> tuple[int, bool]:
    """Load a checkpoint into ``trainer``'s run: state, counters, sums, callback states.

    ``ckpt_path``: ``"last"`` / ``"best"`` in the checkpoint directory (a missing one starts
    fresh with a warning), or a checkpoint root or step directory. ``"last"`` falls back past
    damaged checkpoints to the newest good one, warning about each. Returns ``(batches
    already consumed this epoch, whether the epoch's batches are all consumed)``.
    """
    ckpt_path = os.fspath(ckpt_path)
    if ckpt_path in ("last", "best"):
        owner, directory = checkpoint_owner(trainer)
        mode = owner.mode if owner is not None else "min"
        if not os.path.isdir(directory):
            warnings.warn(f"ckpt_path={ckpt_path!r}: no checkpoints in {directory}; starting from scratch",
                          stacklevel=4)
            return 0, False
        step = None
    else:
        directory, step = split_step_path(ckpt_path)
        mode = "min"
    store = CheckpointStore(directory, read_only=True, mode=mode)
    try:
        if step is None:
            step = store.best_step() if ckpt_path == "best" else store.latest_step()
        if step is None and ckpt_path == "best" and store.steps():
            raise FileNotFoundError(f"ckpt_path='best': the checkpoints in {directory} carry no monitored "
                                    "score (ModelCheckpoint had no monitor); use 'last' or a step directory")
        if step is None:
            warnings.warn(f"ckpt_path={ckpt_path!r}: {directory} holds no complete checkpoint; "
                          "starting from scratch", stacklevel=4)
            return 0, False
        if step not in store.steps():
            raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no complete checkpoint for step {step} "
                                    f"in {directory} (found {store.steps()})")
        older = sorted((s for s in store.steps() if s < step), reverse=True) if ckpt_path == "last" else []
        state, meta, used_step = _restore_newest_good(trainer, store, [step, *older])
    finally:
        store.close()
    return _resume_from(trainer, loop, state, meta, store.step_path(used_step))


def _restore_newest_good(trainer, store: CheckpointStore, steps: list[int]):
    """Restore the first of ``steps`` that reads back intact, warning about each damaged
    one passed over; with none left, the error of the first."""
    first_error = None
    for step in steps:
        try:
            target, partial = _restore_target(trainer, store, step)
            return (*store.restore(step, target, partial=partial), step)
        except CorruptCheckpointError as error:
            first_error = first_error or error
            if step != steps[-1]:
                warnings.warn(f"{error}; falling back to the previous checkpoint", stacklevel=5)
    raise first_error


def _restore_target(trainer, store: CheckpointStore, step: int) -> tuple[dict[str, Any], bool]:
    """What to read of checkpoint ``step``: the run's state plus the array state of each
    present callback the checkpoint holds; partial when it holds more than that."""
    target = dict(trainer.train_state)
    stored = store.stored_keys(step, "callbacks")
    arrays = {key: value for key, value in _callback_arrays(trainer).items() if key in stored}
    if arrays:
        target["callbacks"] = arrays
    return target, stored != set(arrays)


def _callback_arrays(trainer) -> dict[str, Any]:
    """``{state_key: arrays}`` of the callbacks that keep array state in checkpoints."""
    arrays = {cb.state_key: cb.checkpoint_arrays(trainer) for cb in trainer.callbacks}
    return {key: value for key, value in arrays.items() if value is not None}


def run_arrays(trainer) -> dict[str, Any]:
    """The arrays one checkpoint of ``trainer``'s run stores: model, optimizer, callbacks' arrays."""
    arrays = dict(trainer.train_state)
    callback_arrays = _callback_arrays(trainer)
    if callback_arrays:
        arrays["callbacks"] = callback_arrays
    return arrays


def _resume_from(trainer, loop, state, meta, path: str) -> tuple[int, bool]:
    callback_arrays = state.pop("callbacks", {})
    trainer.set_train_state(state)
    trainer.global_step = trainer.resumed_step = int(meta["global_step"])
    if jax.process_index() == 0:
        print(f"resumed from step {trainer.global_step} ({path})", file=sys.stderr)
    trainer.current_epoch = int(meta["next_epoch"])
    loop.restored_sums = meta.get("train_sums")
    # Checkpoints written before the skip counters existed lack them.
    health = {**jax.device_get(init_health()), "steps": trainer.global_step, **meta["health"]}
    loop.health = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), health)
    trainer.call_hook("on_load_checkpoint", meta)
    states = meta.get("callbacks", {})
    for cb in trainer.callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])
        if cb.state_key in callback_arrays:
            cb.load_checkpoint_arrays(trainer, callback_arrays[cb.state_key])
    unused = sorted(set(states) - {cb.state_key for cb in trainer.callbacks})
    if unused:
        warnings.warn(f"checkpoint holds state for callbacks not present now: {unused}", stacklevel=4)
    next_batch = int(meta["next_batch"])
    epoch_body_done = trainer.num_training_batches is not None and next_batch >= trainer.num_training_batches
    if meta.get("loader") is not None and hasattr(trainer.train_data, "load_state_dict"):
        trainer.train_data.load_state_dict(meta["loader"])
    return next_batch, epoch_body_done


def save_interrupted_run(trainer) -> str:
    """Make sure the step an interrupted run reached is on disk (the checkpoint callback's
    save at train end, or one written here) and return its directory."""
    owner, directory = checkpoint_owner(trainer)
    path = os.path.join(directory, str(trainer.global_step))
    if trainer.global_step in (trainer.resumed_step, owner.last_saved_step if owner is not None else None):
        return path
    store = CheckpointStore(directory, top_k=-1, scored=False, async_save=False)
    try:
        arrays, meta = trainer.checkpoint()
        store.save(trainer.global_step, arrays, meta)
        store.wait()
    finally:
        store.close()
    return path
