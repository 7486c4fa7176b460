"""ARModule: the base class every model the Trainer runs derives from."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax
from flax import nnx


class ARModule(nnx.Module):
    """An autoregressive model with Lightning-style hooks.

    Subclasses implement ``__call__(x, *, rngs=None, training=False)`` returning a dict
    with ``'logits'``, ``loss_fn(batch, outputs, *, rngs=None)`` and, to be sampled
    from, ``generate(n_samples, ..., rngs=...)``; the defaults below turn those into
    training and validation steps. Every step hook is traced inside the Trainer's
    compiled step, so it must be pure JAX: no host syncs, no per-step side effects.

    ``loss_fn`` returns a dict with ``'loss'`` (what is minimised) and per-element
    means such as ``'nll_loss'``, ``'perplexity'``, ``'accuracy'`` and
    ``'bits_per_dim'``, plus ``'weight'``: the number of predicted elements the means
    were taken over, which lets the Trainer aggregate metrics exactly.
    """

    #: The batch key holding the model input: 'sequences', 'images' or 'waveform'.
    input_key: str = "sequences"
    #: Which variables the optimizer updates (an nnx filter). Everything else, frozen
    #: weights included, is carried through the step unchanged; prefix tuning and
    #: fine-tuning narrow it to a Variable subclass of their own.
    trainable: Any = nnx.Param
    #: Defaults used by :meth:`configure_optimizers`; set them per instance to change.
    learning_rate: float = 3e-4
    weight_decay: float = 0.01

    @property
    def input_value_limit(self) -> int | None:
        """Exclusive upper bound of the integer values in ``batch[input_key]``, which the Trainer
        checks on the host for every batch (the compiled step cannot read them): ``vocab_size``
        for token ids, 256 for 8-bit pixel values, ``quantization_channels`` for mu-law codes.
        None leaves the values unchecked; override it where the bound lives elsewhere."""
        if self.input_key == "images":
            return 256
        if self.input_key == "waveform":
            return getattr(self, "quantization_channels", None)
        return getattr(self, "vocab_size", None)

    def training_step(self, batch: Mapping[str, jax.Array],
                      rngs: nnx.Rngs) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One forward pass in training mode; returns ``(loss, metrics)``."""
        outputs = self(batch[self.input_key], rngs=rngs, training=True, **self.forward_kwargs(batch))
        metrics = self.loss_fn(batch, outputs, rngs=rngs)
        return metrics["loss"], metrics

    def validation_step(self, batch: Mapping[str, jax.Array],
                        rngs: nnx.Rngs) -> dict[str, jax.Array]:
        """One forward pass in evaluation mode; returns the metrics dict."""
        outputs = self(batch[self.input_key], rngs=rngs, training=False, **self.forward_kwargs(batch))
        return self.loss_fn(batch, outputs, rngs=rngs)

    def forward_kwargs(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Keyword arguments of ``__call__`` the steps take from the batch besides the input:
        none here; class-conditional models pass ``labels``."""
        return {}

    def configure_optimizers(self) -> optax.GradientTransformation:
        """AdamW at ``learning_rate`` / ``weight_decay``; callbacks may wrap it further."""
        return optax.adamw(self.learning_rate, weight_decay=self.weight_decay)

    def log_samples(self, samples: jax.Array, logger: Any, step: int) -> None:
        """Write samples to the logger; the default logs the token ids as text."""
        logger.log_text("samples", "\n".join(" ".join(map(str, row)) for row in jax.device_get(samples).tolist()), step)
