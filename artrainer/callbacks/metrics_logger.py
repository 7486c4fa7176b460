"""MetricsLogger: send the Trainer's metrics to its logger."""

from __future__ import annotations

from artrainer.callbacks.base import Callback


class MetricsLogger(Callback):
    """Log ``train/*``, ``grad_norm``, ``lr`` and ``throughput/*`` at every log step and
    ``val/*`` after every validation, under the same names as ``callback_metrics``.

    Each point is written once, at the step it was computed (``trainer.fresh_metrics()``):
    metrics callbacks put into ``callback_metrics`` themselves are theirs to log. It never
    forces a host sync. The Trainer adds one whenever it has a logger.
    """

    uses_module = False
    role = "metrics_logger"

    def on_train_start(self, trainer, module):
        # Keys another callback logs itself (LearningRateMonitor's 'lr'): writing them here too
        # would duplicate points.
        self._skip = set().union(*(cb.logged_metrics for cb in trainer.callbacks))
        if trainer.logger is not None:
            trainer.logger.log_hyperparams(trainer.hparams(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.logger is not None and trainer.is_log_step:
            trainer.logger.log_metrics(
                {k: v for k, v in trainer.fresh_metrics().items() if not k.startswith("val/") and k not in self._skip},
                trainer.global_step)

    def on_validation_end(self, trainer, module):
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {k: v for k, v in trainer.fresh_metrics().items() if k.startswith("val/")},
                trainer.global_step)

    def on_train_end(self, trainer, module):
        if trainer.logger is not None:
            trainer.logger.flush()
