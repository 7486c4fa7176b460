"""TerminateOnNaN: stop a diverging run with an error naming the step and metric."""

from __future__ import annotations

from artrainer.callbacks.base import Callback


class TerminateOnNaN(Callback):
    """Raise ``artrainer.DivergenceError`` once the loss or gradient norm is NaN/Inf.

    The compiled step records the first bad step on the device for free; this callback
    reads that flag when the Trainer syncs metrics anyway (every ``log_every_n_steps``)
    and at the end of training, or every ``check_every_n_steps`` steps if given (each
    check waits for the step to finish). ModelCheckpoint checks the same flag before
    every save, so a diverged state is never written. The Trainer adds one by default.
    """

    uses_module = False

    def __init__(self, check_every_n_steps: int | None = None):
        if check_every_n_steps is not None and (not isinstance(check_every_n_steps, int) or check_every_n_steps < 1):
            raise ValueError(f"check_every_n_steps={check_every_n_steps!r} must be None or an int >= 1")
        self.check_every_n_steps = check_every_n_steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        every = self.check_every_n_steps
        if trainer.is_log_step if every is None else trainer.global_step % every == 0:
            trainer.check_finite()

    def on_train_end(self, trainer, module):
        trainer.check_finite()
