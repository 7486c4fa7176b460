"""LRWarmup: linear warmup, then constant, cosine, linear or inverse-square-root decay."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from artrainer.callbacks.base import Callback
from artrainer.validation import require_choice, require_int, require_real

DECAYS = ("constant", "cosine", "linear", "inverse_sqrt")


class LRWarmup(Callback):
    """Scales every update by a warmup-then-decay factor, inside the compiled step.

    The factor multiplies whatever the optimizer computes (``optax.scale_by_schedule``
    chained after it), so it works with any optax transform and its step counter is
    saved with the optimizer state. Update ``s`` (0-based) is scaled by
    ``(s + 1) / warmup_steps`` during warmup (the first update is not wasted at zero;
    ``warmup_steps=0`` is no warmup, the decay alone),
    then by the decay: ``constant`` 1; ``cosine`` / ``linear`` from 1 down to
    ``min_ratio`` at ``decay_steps`` (default: the Trainer's ``max_steps``);
    ``inverse_sqrt`` ``sqrt(warmup_steps / (s + 1))``, the Transformer schedule
    normalised to peak at 1.
    """

    uses_module = False

    def __init__(self, warmup_steps: int, *, decay: str = "constant", decay_steps: int | None = None,
                 min_ratio: float = 0.0):
        warmup_steps = require_int("warmup_steps", warmup_steps, minimum=0)
        decay = require_choice("decay", decay, DECAYS)
        if decay == "inverse_sqrt" and warmup_steps == 0:
            raise ValueError("decay='inverse_sqrt' peaks at the end of warmup: it needs warmup_steps >= 1")
        decay_steps = require_int("decay_steps", decay_steps, minimum=warmup_steps + 1, optional=True,
                                  why=f"more than warmup_steps={warmup_steps}")
        min_ratio = require_real("min_ratio", min_ratio, minimum=0, maximum=1)
        self.warmup_steps, self.decay, self.decay_steps, self.min_ratio = warmup_steps, decay, decay_steps, min_ratio

    @property
    def state_key(self) -> str:
        return self._generate_state_key(warmup_steps=self.warmup_steps, decay=self.decay)

    def configure_optimizer(self, trainer, module, tx):
        if self.decay in ("cosine", "linear") and self.decay_steps is None:
            if trainer.max_steps is None or trainer.max_steps <= self.warmup_steps:
                raise ValueError(f"LRWarmup(decay={self.decay!r}) needs decay_steps, or a Trainer "
                                 f"max_steps > warmup_steps={self.warmup_steps}; got max_steps={trainer.max_steps}")
            self.decay_steps = trainer.max_steps
        return optax.chain(tx, optax.scale_by_schedule(self.lr_scale))

    def lr_scale(self, step):
        """The factor applied to update ``step`` (0-based).

        Traced arrays (inside the compiled step) use jnp; a host int uses numpy, so the
        Trainer can report the rate every step without touching the device.
        """
        xp = np if isinstance(step, (int, np.integer)) else jnp
        step = xp.asarray(step, xp.float32)
        warmup = (step + 1.0) / max(self.warmup_steps, 1)
        if self.decay == "constant":
            after = xp.ones_like(step)
        elif self.decay == "inverse_sqrt":
            after = xp.sqrt(self.warmup_steps / (step + 1.0))
        else:
            progress = xp.clip((step + 1.0 - self.warmup_steps) / (self.decay_steps - self.warmup_steps), 0.0, 1.0)
            shape = 0.5 * (1.0 + xp.cos(xp.pi * progress)) if self.decay == "cosine" else 1.0 - progress
            after = self.min_ratio + (1.0 - self.min_ratio) * shape
        return xp.where(step + 1.0 < self.warmup_steps, warmup, after)
