"""GradientClipping: by global norm or by value, inside the compiled step."""

from __future__ import annotations

import optax

from artrainer.callbacks.base import Callback
from artrainer.validation import require_real


class GradientClipping(Callback):
    """Clip gradients before the optimizer sees them: ``max_norm`` (global) or ``max_value``.

    The logged ``grad_norm`` is measured before clipping, so it shows how often it bites.
    """

    uses_module = False

    def __init__(self, max_norm: float | None = None, *, max_value: float | None = None):
        if (max_norm is None) == (max_value is None):
            raise ValueError("GradientClipping needs exactly one of max_norm or max_value; got "
                             f"max_norm={max_norm!r}, max_value={max_value!r}")
        max_norm = require_real("max_norm", max_norm, minimum=0, min_open=True, optional=True)
        max_value = require_real("max_value", max_value, minimum=0, min_open=True, optional=True)
        self.max_norm, self.max_value = max_norm, max_value

    def configure_optimizer(self, trainer, module, tx):
        clip = (optax.clip_by_global_norm(self.max_norm) if self.max_norm is not None
                else optax.clip(self.max_value))
        return optax.chain(clip, tx)
