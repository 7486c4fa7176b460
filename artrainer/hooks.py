"""Which callbacks a fit runs, in which order, and how a hook reaches them.

A callback declares what it does for the Trainer through its ``role`` (see
:class:`~artrainer.callbacks.base.Callback`); the Trainer never asks for a type. For each
built-in role no given callback fills, a default one is added. Callbacks then run in the
order given, except that monitors (``is_monitor``) come after everything else, so they
see what the others logged, and the checkpoint writer comes last of all, so the state it
saves includes every other monitor's decision at that step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from artrainer.callbacks.base import HOOKS, Callback


def default_callbacks(*, logger: bool, progress_bar: bool) -> dict[str, Callable[[], Callback]]:
    """The built-in roles a fit needs, and the callback that fills each by default."""
    from artrainer.callbacks import MetricsLogger, ProgressBar, TerminateOnNaN

    roles = {"nonfinite_guard": TerminateOnNaN}
    if logger:
        roles["metrics_logger"] = MetricsLogger
    if progress_bar:
        roles["progress_bar"] = ProgressBar
    return roles


def with_defaults(callbacks: list[Callback], defaults: dict[str, Callable[[], Callback]]) -> list[Callback]:
    """``callbacks`` plus a default for each unfilled role, in dispatch order."""
    present = {cb.role for cb in callbacks}
    ordered = callbacks + [make() for role, make in defaults.items() if role not in present]
    keys = [cb.state_key for cb in ordered]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"callbacks share the state_key(s) {duplicated}; give each instance a "
                         "distinct state_key so their checkpoint states cannot collide")

    def rank(cb: Callback) -> int:
        return 2 if cb.role == "checkpoints" else int(cb.is_monitor)

    return sorted(ordered, key=rank)  # stable: the given order within each rank


def with_role(callbacks: Iterable[Callback], role: str) -> Callback | None:
    """The first callback filling ``role``, else None."""
    return next((cb for cb in callbacks if cb.role == role), None)


class Hooks:
    """Calls a hook on every callback that overrides it, syncing the module first for the
    callbacks that read it (``uses_module``)."""

    def __init__(self, callbacks: list[Callback], sync_module: Callable[[], None]):
        self._sync_module = sync_module
        self._table = {}
        for hook in HOOKS:
            base = getattr(Callback, hook)
            self._table[hook] = [(getattr(cb, hook), cb.uses_module) for cb in callbacks
                                 if getattr(type(cb), hook, base) is not base]

    def __call__(self, hook: str, trainer, module, *args: Any) -> None:
        for fn, uses_module in self._table[hook]:
            if uses_module:
                self._sync_module()
            fn(trainer, module, *args)
