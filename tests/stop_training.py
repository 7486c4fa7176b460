"""Callbacks that stop a fit at the edge of training, for tests of what is checked before it.

Used through public seams only: passed in ``Trainer(callbacks=...)`` or a recipe's
``--callback tests/stop_training.py:StopBeforeTraining``.
"""

from flax import nnx

from artrainer import Callback, step


class TrainingStarted(Exception):
    """fit() got as far as its first training hook: every check before training passed."""


class ReachedTrainStep(Exception):
    """fit() got as far as running the compiled train step."""


class StopBeforeTraining(Callback):
    """Raise :class:`TrainingStarted` at ``on_train_start``, so nothing compiles or trains."""

    def on_train_start(self, trainer, module):
        raise TrainingStarted()


class TraceThenStop(Callback):
    """Before the first step runs, trace it abstractly (so every trace-time check of the
    batch runs, nothing compiles), then raise :class:`ReachedTrainStep`."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        micro = batch if trainer.accumulate_grad_batches == 1 else {k: v[0] for k, v in batch.items()}
        step.metric_shapes(nnx.graphdef(module), trainer.model_state, micro, trainer.precision, trainer.seed)
        raise ReachedTrainStep()
