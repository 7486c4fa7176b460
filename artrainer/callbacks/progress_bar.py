"""ProgressBar: a tqdm bar with loss, perplexity or bits/dim, and items per second."""

from __future__ import annotations

from tqdm.auto import tqdm

from artrainer.callbacks.base import Callback
from artrainer.validation import require_bool


class ProgressBar(Callback):
    """One tqdm bar over the run's steps; the numbers refresh at each log step."""

    uses_module = False
    role = "progress_bar"

    def __init__(self, *, leave: bool = True):
        self.leave = require_bool("leave", leave)
        self.bar = None

    def on_train_start(self, trainer, module):
        total = trainer.max_steps
        if trainer.max_epochs is not None and trainer.num_training_batches is not None:
            per_epoch = trainer.num_training_batches // trainer.accumulate_grad_batches
            by_epochs = trainer.max_epochs * per_epoch
            total = by_epochs if total is None else min(total, by_epochs)
        self.bar = tqdm(total=total, initial=trainer.global_step, desc="train", unit="step",
                        leave=self.leave, dynamic_ncols=True)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.bar.update(1)
        if trainer.is_log_step:
            self.bar.set_postfix(self._postfix(trainer), refresh=False)

    def on_validation_end(self, trainer, module):
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(trainer), refresh=True)

    @staticmethod
    def _postfix(trainer):
        """Loss, then perplexity for token streams or bits/dim for images and audio."""
        metrics = trainer.callback_metrics
        quality = (("train/perplexity", "ppl", ".2f") if trainer.module.input_key == "sequences"
                   else ("train/bits_per_dim", "bpd", ".3f"))
        return {label: format(metrics[key], fmt) for key, label, fmt in (
            ("train/loss", "loss", ".4f"), quality, ("val/loss", "val_loss", ".4f"),
            ("throughput/items_per_sec", "items/s", ".1f")) if key in metrics}

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer, module):
        self._close()

    def on_exception(self, trainer, module, exception):
        self._close()
