"""LearningRateMonitor: log the learning rate every step or every epoch."""

from __future__ import annotations

from artrainer.callbacks.base import Callback
from artrainer.validation import require_choice


class LearningRateMonitor(Callback):
    """Log ``lr`` (tag ``lr``) at every step (``'step'``) or each epoch end (``'epoch'``).

    The rate is computed on the host from ``module.learning_rate`` and the schedule
    callbacks (``lr_scale``), so logging it every step costs no device sync.
    """

    uses_module = False
    logged_metrics = frozenset({"lr"})

    def __init__(self, logging_interval: str = "step"):
        self.logging_interval = require_choice("logging_interval", logging_interval, ("step", "epoch"))

    def _log(self, trainer):
        lr = trainer.current_lr()
        if trainer.logger is not None and lr is not None:
            trainer.logger.log_metrics({"lr": lr}, trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.logging_interval == "step":
            self._log(trainer)

    def on_train_epoch_end(self, trainer, module):
        if self.logging_interval == "epoch":
            self._log(trainer)
