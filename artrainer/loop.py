"""The fit loop: epochs of steps, each step one compiled call, hooks around it.

Read :meth:`FitLoop.run` for what a fit does and :meth:`FitLoop.run_step` for one step.
Everything the step touches (model, optimizer, metric sums, the divergence record)
stays on the device; the host reads the sums every ``log_every_n_steps`` steps.
``progress`` says where in the epoch the loop is, which is what a checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from artrainer import step
from artrainer.batches import BatchChecker, step_inputs
from artrainer.metrics import MetricSums


@dataclasses.dataclass
class Progress:
    """Where the loop is inside the current epoch (``trainer.current_epoch``)."""

    batches: int = 0  # batches consumed this epoch (a step consumes accumulate_grad_batches)
    epoch_done: bool = False  # every full step of this epoch has run


class FitLoop:
    """One fit of ``trainer``: owns the compiled step and the device-side sums and health."""

    def __init__(self, trainer, train_step, model_def):
        self.trainer, self.train_step, self.model_def = trainer, train_step, model_def
        self.progress = Progress()
        self.sums: dict[str, Any] | None = None
        self.restored_sums: dict[str, Any] | None = None  # host sums from a checkpoint
        self.health = step.init_health()
        self.logged_at = -1  # the step whose metrics were last read from the device
        module = trainer.module
        self.checker = BatchChecker("train_data", module.input_key, module.input_value_limit)

    def run(self, train_data, val_data, consumed: int = 0, epoch_body_done: bool = False) -> None:
        """Train until ``max_steps`` / ``max_epochs`` / ``should_stop``; a resumed run starts
        ``consumed`` batches into its epoch (or past its last step, ``epoch_body_done``)."""
        trainer, progress = self.trainer, self.progress
        trainer.call_hook("on_train_start")
        self._last_log = (time.perf_counter(), trainer.global_step)
        while not self.finished():
            progress.batches, progress.epoch_done = consumed, False
            trainer.call_hook("on_train_epoch_start")
            batches = iter(()) if epoch_body_done else self._batches_from(train_data, consumed)
            consumed, epoch_body_done = 0, False
            for batch_idx, batch in enumerate(step_inputs(batches, trainer.accumulate_grad_batches, self.checker)):
                progress.batches += trainer.accumulate_grad_batches
                trainer.call_hook("on_train_batch_start", batch, batch_idx)
                outputs = self.run_step(batch)
                trainer.call_hook("on_train_batch_end", outputs, batch, batch_idx)
                if trainer.validation_due:
                    trainer.run_validation(val_data)
                if trainer.should_stop or self.reached_max_steps():
                    break
            else:
                progress.epoch_done = True
            # Stopping on an epoch's last step still completes that epoch.
            progress.epoch_done = progress.epoch_done or self._epoch_exhausted()
            if progress.epoch_done and val_data is not None and trainer.val_check_interval is None:
                trainer.run_validation(val_data)
            trainer.call_hook("on_train_epoch_end")
            if not progress.epoch_done:
                break
            if progress.batches == 0:
                raise ValueError("train_data yielded no batches in an epoch; is it an exhausted "
                                 "iterator? Pass a re-iterable (a list, a DataLoader)")
            trainer.current_epoch += 1
            progress.batches, progress.epoch_done = 0, False
        trainer.call_hook("on_train_end")

    def run_step(self, batch):
        """One compiled update on ``batch``; every ``log_every_n_steps`` steps, a metric read."""
        trainer = self.trainer
        if self.sums is None:
            self._first_step(batch)
        batch = trainer.place_batch(batch, trainer.accumulate_grad_batches)
        state, self.sums, self.health, outputs = self.train_step(trainer.train_state, self.sums, self.health, batch)
        trainer.set_train_state(state)
        trainer.global_step += 1
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self.read_train_metrics()
        return outputs

    def read_train_metrics(self) -> None:
        """Host sync: turn the device sums into ``train/...`` metrics and reset them."""
        trainer = self.trainer
        sums = jax.device_get(self.sums)
        now = time.perf_counter()
        steps = int(sums["steps"])
        metrics = {f"train/{k}": v for k, v in MetricSums.compute(sums["metrics"]).items()}
        if steps:
            metrics["grad_norm"] = float(sums["grad_norm"]) / steps
            elapsed = max(now - self._last_log[0], 1e-9)
            done = trainer.global_step - self._last_log[1]
            metrics["throughput/items_per_sec"] = done * self._items_per_step / elapsed
            metrics["throughput/tokens_per_sec"] = done * self._elements_per_step / elapsed
        lr = trainer.current_lr()
        if lr is not None:
            metrics["lr"] = lr
        trainer.set_metrics(metrics)
        self.sums = jax.tree.map(jnp.zeros_like, self.sums)
        self._last_log = (now, trainer.global_step)
        self.logged_at = trainer.global_step

    def finished(self) -> bool:
        trainer = self.trainer
        if trainer.should_stop or self.reached_max_steps():
            return True
        return trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs

    def reached_max_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.global_step >= self.trainer.max_steps

    def _batches_from(self, train_data, consumed: int):
        """This epoch's batches, past the ``consumed`` ones of a resumed epoch (a resumable
        loader has put itself there already; any other iterable is fast-forwarded)."""
        batches = iter(train_data)
        if consumed and not hasattr(train_data, "load_state_dict"):
            if next(itertools.islice(batches, consumed - 1, None), None) is None:
                raise ValueError(f"cannot resume: train_data has fewer than {consumed} batches "
                                 "this epoch, but the checkpoint was taken after that many")
        return batches

    def _epoch_exhausted(self) -> bool:
        """Whether this epoch has no full step left (known only for sized train_data)."""
        total = self.trainer.num_training_batches
        return total is not None and total - self.progress.batches < self.trainer.accumulate_grad_batches

    def _first_step(self, batch) -> None:
        """Shape the metric sums from an abstract trace, print the run summary, count units."""
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches
        micro = batch if accumulate == 1 else {k: v[0] for k, v in batch.items()}
        shapes = step.metric_shapes(self.model_def, trainer.model_state, micro, trainer.precision, trainer.seed)
        sums = step.init_train_sums(shapes)
        if self.restored_sums is not None:
            sums = jax.tree.map(lambda zero, saved: jnp.asarray(saved, zero.dtype), sums, self.restored_sums)
        self.sums = sums
        if trainer.enable_model_summary:
            from artrainer.loggers import code_block
            from artrainer.summary import run_summary
            summary = run_summary(trainer, trainer.module, batch)
            print(summary, file=sys.stderr)
            if trainer.logger is not None and hasattr(trainer.logger, "log_text"):
                trainer.logger.log_text("run/summary", code_block(summary), trainer.global_step)
        shape = self.checker.spec[trainer.module.input_key][0]
        self._items_per_step = shape[0] * accumulate * jax.process_count()
        self._elements_per_step = math.prod(shape) * accumulate * jax.process_count()
