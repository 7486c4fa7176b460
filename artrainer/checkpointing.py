"""Checkpoint storage on orbax's CheckpointManager.

One checkpoint is one step directory ``<dir>/<step>/`` holding two items:
``state`` (the model and optimizer arrays, RNG keys included, plus the Trainer's
device-side metric sums) and ``meta`` (JSON: counters, data-loader position,
callback states). Orbax writes each step into a temporary directory and renames it
only once complete, so a crash mid-save never leaves a half checkpoint that
``latest_step`` would pick.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

_policies = ocp.checkpoint_managers


class CheckpointStore:
    """Save and restore Trainer checkpoints in one directory.

    ``keep_last`` keeps the newest checkpoint; ``top_k`` keeps the k best by the score
    passed to :meth:`save` (lower is better with ``mode='min'``); ``top_k=-1`` keeps
    everything. ``scored=False`` (no monitored metric) turns scoring off altogether. Saves are asynchronous when ``async_save``: ``save`` returns once the
    arrays are copied and the files are written in the background.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_last: bool = True, top_k: int = 1,
                 mode: str = "min", scored: bool = True, async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        policies = []  # none at all (top_k=-1) keeps every checkpoint
        if top_k != -1:
            if keep_last:
                policies.append(_policies.LatestN(n=1))
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
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(_frozen_json(meta))),
            metrics=None if score is None else {"score": float(score)}, force=True)

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """Read checkpoint ``step`` into arrays shaped like ``target``; returns ``(state, meta)``."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def restore_subtree(self, step: int, target: Mapping[str, Any]) -> dict[str, Any]:
        """Read only the parts of checkpoint ``step``'s state named in ``target`` (e.g. the model)."""
        target = dict(target)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))
        return restored["state"]

    def steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def wait(self) -> None:
        """Block until every asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


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
