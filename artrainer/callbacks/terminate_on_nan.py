"""TerminateOnNaN: stop a diverging run with an error naming the step and metric."""

from __future__ import annotations

from artrainer.callbacks.base import Callback
from artrainer.validation import require_bool, require_int


class TerminateOnNaN(Callback):
    """Raise ``artrainer.DivergenceError`` once the loss or gradient norm is NaN/Inf.

    The compiled step records the first bad step on the device for free; this callback
    reads that flag when the Trainer syncs metrics anyway (every ``log_every_n_steps``)
    and at the end of training, or every ``check_every_n_steps`` steps if given (each
    check waits for the step to finish). ModelCheckpoint checks the same flag before
    every save, so a diverged state is never written. The Trainer adds one by default.

    ``skip_bad_steps=True`` makes the compiled step keep the previous weights and
    optimizer state instead of applying an update whose loss or gradients are not
    finite; the run goes on, ``trainer.skipped_steps`` counts them (logged as
    ``skipped_steps``), and it stops only after ``max_consecutive_bad_steps`` in a row.
    """

    uses_module = False
    role = "nonfinite_guard"

    def __init__(self, check_every_n_steps: int | None = None, *, skip_bad_steps: bool = False,
                 max_consecutive_bad_steps: int = 10):
        self.check_every_n_steps = require_int("check_every_n_steps", check_every_n_steps, minimum=1, optional=True)
        self.skip_bad_steps = require_bool("skip_bad_steps", skip_bad_steps)
        self.max_consecutive_bad_steps = require_int("max_consecutive_bad_steps", max_consecutive_bad_steps, minimum=1)

    @property
    def skip_nonfinite_steps(self) -> int:
        return self.max_consecutive_bad_steps if self.skip_bad_steps else 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        every = self.check_every_n_steps
        if trainer.is_log_step if every is None else trainer.global_step % every == 0:
            trainer.check_finite()
            if self.skip_bad_steps and trainer.is_log_step:
                trainer.set_metrics({"skipped_steps": trainer.skipped_steps})  # logged at this step

    def on_train_end(self, trainer, module):
        trainer.check_finite()
