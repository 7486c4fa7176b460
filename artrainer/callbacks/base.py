"""The Callback base class: Lightning's hook names, plus one JAX-specific hook."""

from __future__ import annotations

from typing import Any, Mapping

import optax

#: Every hook the Trainer dispatches, in the order a fit reaches them for the first time.
HOOKS = (
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start",
    "on_train_batch_start", "on_train_batch_end", "on_validation_start",
    "on_validation_end", "on_train_epoch_end", "on_train_end", "on_fit_end",
    "on_exception", "teardown", "on_save_checkpoint", "on_load_checkpoint",
)


class Callback:
    """Base class for callbacks; override any hook, each gets ``(trainer, module, ...)``.

    Call order inside one hook: callbacks run in the order given to the Trainer, except
    that monitoring callbacks (``is_monitor = True``: ModelCheckpoint, EarlyStopping)
    run after all others, so they see what the others logged and saved, and the
    checkpoint writer (``role = "checkpoints"``) runs last.

    ``role`` names a duty the Trainer relies on: ``"nonfinite_guard"``,
    ``"metrics_logger"``, ``"progress_bar"`` or ``"checkpoints"`` (whose callback provides
    ``dirpath_for(trainer)``, ``mode`` and ``last_saved_step``). The Trainer adds a
    default callback for each of the first three that no given callback fills, and finds
    the checkpoint directory through the ``"checkpoints"`` one; it never asks for a type.

    The Trainer keeps the model's arrays on the device inside its compiled step and
    writes them back into ``module`` lazily. Before a hook of a callback whose
    ``uses_module`` is True, ``module`` is current; callbacks that only read
    ``trainer`` attributes set it to False and cost no host work per step.

    State returned by ``state_dict`` is stored in every checkpoint under
    ``state_key`` (JSON: plain numbers, strings, lists, dicts) and handed back to
    ``load_state_dict`` on resume.
    """

    is_monitor: bool = False
    uses_module: bool = True
    role: str | None = None
    #: Metric keys this callback writes to the logger itself; MetricsLogger leaves them alone.
    logged_metrics: frozenset[str] = frozenset()

    @property
    def skip_nonfinite_steps(self) -> int:
        """How many non-finite updates in a row the compiled step should skip (keeping the
        previous weights) before the run stops; 0 (the default) skips none."""
        return 0

    @property
    def state_key(self) -> str:
        """Key of this callback's state in checkpoints; make it unique per instance."""
        return type(self).__qualname__

    def _generate_state_key(self, **identity: Any) -> str:
        """A state key that includes the constructor arguments identifying an instance."""
        return f"{type(self).__qualname__}{identity!r}"

    # -- JAX-specific --------------------------------------------------------------
    def configure_optimizer(self, trainer, module, tx: optax.GradientTransformation
                            ) -> optax.GradientTransformation:
        """Wrap the optimizer once, before compilation (clipping, schedules...)."""
        return tx

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def checkpoint_arrays(self, trainer) -> Any:
        """A pytree of arrays stored inside each checkpoint (an EMA of the weights, say: too
        large for the JSON ``state_dict``), or None. On resume the same call gives the
        shapes and shardings to read them into, so it must work before the first step."""
        return None

    def load_checkpoint_arrays(self, trainer, arrays: Any) -> None:
        """Take back the arrays :meth:`checkpoint_arrays` stored, on resume."""

    # -- Lightning hooks -----------------------------------------------------------
    def setup(self, trainer, module, stage: str) -> None: ...

    def teardown(self, trainer, module, stage: str) -> None: ...

    def on_fit_start(self, trainer, module) -> None: ...

    def on_fit_end(self, trainer, module) -> None: ...

    def on_train_start(self, trainer, module) -> None: ...

    def on_train_end(self, trainer, module) -> None: ...

    def on_train_epoch_start(self, trainer, module) -> None: ...

    def on_train_epoch_end(self, trainer, module) -> None: ...

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None: ...

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None: ...

    def on_validation_start(self, trainer, module) -> None: ...

    def on_validation_end(self, trainer, module) -> None: ...

    def on_exception(self, trainer, module, exception: BaseException) -> None: ...

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None: ...

    def on_load_checkpoint(self, trainer, module, checkpoint: Mapping[str, Any]) -> None: ...
