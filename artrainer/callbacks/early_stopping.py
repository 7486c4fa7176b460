"""EarlyStopping: stop when a monitored metric stops improving."""

from __future__ import annotations

import math

from artrainer.callbacks.base import Callback
from artrainer.validation import require_bool, require_choice, require_int, require_real


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` after ``patience`` validations without improvement.

    Improvement means beating the best value by more than ``min_delta`` in the direction
    of ``mode``. ``stopping_threshold`` stops once the metric is that good;
    ``divergence_threshold`` once it is that bad; ``check_finite`` stops on NaN/Inf.
    With ``strict``, a monitored metric that was never logged is an error.
    """

    is_monitor = True
    uses_module = False

    def __init__(self, monitor: str = "val/loss", *, min_delta: float = 0.0, patience: int = 3,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None):
        mode = require_choice("mode", mode, ("min", "max"))
        patience = require_int("patience", patience, minimum=0)
        min_delta = require_real("min_delta", min_delta, minimum=0)
        strict, check_finite = require_bool("strict", strict), require_bool("check_finite", check_finite)
        stopping_threshold = require_real("stopping_threshold", stopping_threshold, optional=True)
        divergence_threshold = require_real("divergence_threshold", divergence_threshold, optional=True)
        self.monitor, self.min_delta, self.patience, self.mode = monitor, min_delta, patience, mode
        self.strict, self.check_finite = strict, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.wait_count = 0
        self.best_score: float | None = None
        self.stopped_step: int | None = None
        self.stopping_reason: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def state_dict(self):
        return {"wait_count": self.wait_count, "best_score": self.best_score,
                "stopped_step": self.stopped_step, "stopping_reason": self.stopping_reason}

    def load_state_dict(self, state):
        self.wait_count = int(state["wait_count"])
        self.best_score = state["best_score"]
        self.stopped_step, self.stopping_reason = state["stopped_step"], state["stopping_reason"]

    def setup(self, trainer, module, stage):
        self.wait_count, self.best_score, self.stopped_step, self.stopping_reason = 0, None, None, None

    def _better(self, value: float, reference: float, margin: float = 0.0) -> bool:
        return value < reference - margin if self.mode == "min" else value > reference + margin

    def on_validation_end(self, trainer, module):
        if self.monitor not in trainer.callback_metrics:
            if self.strict:
                raise ValueError(f"EarlyStopping(monitor={self.monitor!r}) found no such metric; "
                                 f"available: {sorted(trainer.callback_metrics)}")
            return
        value = float(trainer.callback_metrics[self.monitor])
        reason = None
        if self.check_finite and not math.isfinite(value):
            reason = f"{self.monitor}={value} is not finite"
        elif self.stopping_threshold is not None and self._better(value, self.stopping_threshold, -1e-12):
            reason = f"{self.monitor}={value:.6g} reached stopping_threshold={self.stopping_threshold}"
        elif self.divergence_threshold is not None and self._better(self.divergence_threshold, value):
            reason = f"{self.monitor}={value:.6g} is worse than divergence_threshold={self.divergence_threshold}"
        elif self.best_score is None or self._better(value, self.best_score, self.min_delta):
            self.best_score, self.wait_count = value, 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                reason = (f"{self.monitor} did not improve by more than {self.min_delta} for "
                          f"{self.wait_count} validations; best {self.best_score:.6g}")
        if reason is not None:
            self.stopping_reason, self.stopped_step = reason, trainer.global_step
            trainer.should_stop = True
