"""Validation: one pass over the validation data with a compiled, cached eval step.

Metrics are element-weighted sums accumulated on the device (exact whatever the batch
split) and read once at the end. The eval step is compiled once per module, so once per
fit, however often validation runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from flax import nnx

from artrainer import step
from artrainer.batches import BatchChecker
from artrainer.metrics import MetricSums


class Evaluator:
    """Runs validation passes for one Trainer (its precision, seed, limit and device placement)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self._module = None
        self._eval_step = None
        self._metric_keys = None

    def batch_limit(self, val_data) -> int | None:
        """``limit_val_batches`` as a number of batches (None: the whole pass)."""
        limit = self.trainer.limit_val_batches
        if isinstance(limit, float):
            limit = max(1, int(limit * len(val_data))) if limit > 0 else 0
        return limit

    def run(self, module, model_def, model_state, val_data: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """``val/*`` metrics of ``model_state`` over ``val_data`` (at most ``limit_val_batches``).

        A resumable loader is put back where it was, so every validation sees the same
        batches, whether it stopped early at the limit or ran a whole pass.
        """
        trainer = self.trainer
        limit = self.batch_limit(val_data)
        if limit == 0:
            return {}
        trainer.call_hook("on_validation_start")
        self._compile_for(module, model_def)
        position = val_data.state_dict() if hasattr(val_data, "load_state_dict") else None
        checker = BatchChecker("val_data", module.input_key, module.input_value_limit)
        sums = None
        batches = iter(val_data)
        try:
            for index, batch in zip(range(limit) if limit is not None else itertools.count(), batches):
                checker.check(batch)
                if sums is None:
                    if self._metric_keys is None:
                        self._metric_keys = tuple(step.eval_metric_shapes(model_def, model_state, batch, trainer.seed))
                    sums = MetricSums.zeros(self._metric_keys)
                sums = self._eval_step(model_state, sums, trainer.place_batch(batch), index)
        finally:
            if hasattr(batches, "close"):
                batches.close()
            if position is not None:
                val_data.load_state_dict(position)
        if sums is None:
            raise ValueError("val_data yielded no batches; is it an empty list or an exhausted iterator? "
                             "Pass a re-iterable with at least one batch (a list, a DataLoader)")
        metrics = {f"val/{k}": v for k, v in MetricSums.compute(sums).items()}
        trainer.set_metrics(metrics)
        trainer.call_hook("on_validation_end")
        return metrics

    def _compile_for(self, module, model_def: nnx.GraphDef) -> None:
        if self._module is not module:
            self._module = module
            self._eval_step = step.make_eval_step(model_def, seed=self.trainer.seed, precision=self.trainer.precision)
            self._metric_keys = None
