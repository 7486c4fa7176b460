"""SampleGenerator: generate from the model every N steps and log the samples."""

from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx

from artrainer.callbacks.base import Callback
from artrainer.metrics import generation_quality
from artrainer.validation import require_bool, require_int


class SampleGenerator(Callback):
    """Every ``every_n_steps`` steps, call ``module.generate(n_samples, **generate_kwargs)``
    and hand the samples to :meth:`handle_samples` (default: ``module.log_samples``).

    Samples come from the evaluation weights (``trainer.eval_module()``: an EMA callback
    can provide them) and a key derived from the Trainer seed and the step, so they are
    reproducible. Subclass and override ``handle_samples`` to do something else.

    With ``quality_metrics=True`` (token models) it also measures the samples —
    ``distinct_1/2/3`` and ``repetition_rate``, plus ``fluency_perplexity`` under
    ``reference_model`` when one is given — and logs them as ``samples/<name>`` next to
    the samples (they land in ``trainer.callback_metrics`` too).
    """

    uses_module = False  # sample() fetches an up-to-date module itself, only when it samples

    def __init__(self, every_n_steps: int = 500, n_samples: int = 4, *,
                 generate_kwargs: Mapping[str, Any] | None = None, on_train_end: bool = True,
                 quality_metrics: bool = False, reference_model=None):
        self.every_n_steps = require_int("every_n_steps", every_n_steps, minimum=1)
        self.n_samples = require_int("n_samples", n_samples, minimum=1)
        self.generate_kwargs = dict(generate_kwargs or {})
        self.at_train_end = require_bool("on_train_end", on_train_end)
        self.quality_metrics = require_bool("quality_metrics", quality_metrics)
        self.reference_model = reference_model
        self.last_samples = None
        self._last_step = None

    def setup(self, trainer, module, stage):
        if not callable(getattr(module, "generate", None)):
            raise TypeError(f"SampleGenerator needs {type(module).__name__}.generate(n_samples, ..., rngs=)")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every_n_steps == 0:
            self.sample(trainer)

    def on_train_end(self, trainer, module):
        if self.at_train_end and trainer.interrupted is None:  # Ctrl-C means "stop now", not "sample"
            self.sample(trainer)

    def sample(self, trainer):
        step = trainer.global_step
        if step == self._last_step:
            return
        module = trainer.eval_module()
        key = jax.random.fold_in(jax.random.key(trainer.seed), step)
        samples = module.generate(self.n_samples, rngs=nnx.Rngs(sample=key, default=key), **self.generate_kwargs)
        self.last_samples, self._last_step = samples, step
        self.handle_samples(trainer, module, samples, step)

    def handle_samples(self, trainer, module, samples, step: int) -> None:
        if self.quality_metrics:
            quality = generation_quality(
                samples, reference_model=self.reference_model,
                eos_token_id=self.generate_kwargs.get("eos_token_id"),
                pad_token_id=getattr(module, "pad_token_id", None))
            named = {f"samples/{name}": value for name, value in quality.items()}
            trainer.callback_metrics.update(named)
            if trainer.logger is not None:
                trainer.logger.log_metrics(named, step)
        if trainer.logger is not None:
            module.log_samples(samples, trainer.logger, step)
