"""EMA: an exponential moving average of the model's weights, used for validation and sampling."""

from __future__ import annotations

import warnings

import jax
import numpy as np
from flax import nnx

from artrainer import Callback
from artrainer.validation import require_bool, require_int, require_real


def _ema_step(ema, params, decay):
    return jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema, params)


class EMA(Callback):
    """Keep ``ema = decay * ema + (1 - decay) * params`` over the ``nnx.Param`` weights.

    The average starts from the weights at fit start and is updated every
    ``every_n_steps`` steps by one jitted, buffer-donating call: it stays on the
    device and costs no host sync. With ``warmup`` the decay of update ``n`` (from 0)
    is ``min(decay, (1 + n) / (10 + n))``, so early averages are not dominated by the
    random initialisation. While fitting, ``trainer.eval_params`` points at the
    average, so validation and SampleGenerator use it; after fit read ``self.ema``.
    Each update donates the previous average's buffers: keep ``self.ema``, not an
    older reference.

    Checkpoints: the average is stored inside each orbax checkpoint, as the callback's
    ``checkpoint_arrays`` (written and pruned with it, fingerprinted like the weights).
    Checkpoints of earlier versions, which kept it in a side ``<root>/ema/<step>.npz``
    named by ``checkpoint['ema_file']``, still restore.
    """

    uses_module = False

    def __init__(self, decay: float = 0.999, *, every_n_steps: int = 1, warmup: bool = True):
        self.decay = require_real("decay", decay, minimum=0, maximum=1, max_open=True)
        self.every_n_steps = require_int("every_n_steps", every_n_steps, minimum=1)
        self.warmup = require_bool("warmup", warmup)
        self.ema: nnx.State | None = None
        self.updates = 0
        self._restored_from: str | None = None  # an old checkpoint's side .npz of the average
        self._update = jax.jit(_ema_step, donate_argnums=0)

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])

    def current_decay(self) -> float:
        """Decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    # -- hooks ------------------------------------------------------------------
    def setup(self, trainer, module, stage):
        self.ema, self.updates, self._restored_from = None, 0, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every_n_steps == 0:
            self.ema = self._update(self.ema, _params(trainer), self.current_decay())
            self.updates += 1
            trainer.eval_params = self.ema

    def teardown(self, trainer, module, stage):
        trainer.eval_params = None

    def checkpoint_arrays(self, trainer):
        # Before fit start (the restore target) the weights give the average's shapes.
        return self.ema if self.ema is not None else _params(trainer)

    def load_checkpoint_arrays(self, trainer, arrays):
        self.ema = arrays

    def on_load_checkpoint(self, trainer, module, checkpoint):
        self._restored_from = checkpoint.get("ema_file")

    def on_fit_start(self, trainer, module):
        if self.ema is None and trainer.resumed_step is not None:
            path = self._restored_from
            if path is not None:  # a checkpoint of an earlier version: the average beside it
                self.ema = _load_like(path, _params(trainer))
            else:
                warnings.warn("checkpoint holds no EMA; the average restarts from the restored weights",
                              stacklevel=2)
        if self.ema is None:  # a copy: the next train step donates the live buffers
            self.ema = jax.tree.map(lambda x: x.copy(), _params(trainer))
        trainer.eval_params = self.ema


def _params(trainer) -> nnx.State:
    return nnx.filter_state(trainer.model_state, nnx.Param)


def _load_like(path: str, like: nnx.State) -> nnx.State:
    """The average saved at ``path``, with the structure, dtypes and devices of ``like``."""
    leaves = []
    with np.load(path) as saved:
        for key, variable in nnx.to_flat_state(like):
            name, ref = "/".join(map(str, key)), variable.get_value()
            if name not in saved:
                raise KeyError(f"EMA file {path} lacks the parameter {name!r}; was it saved for another model?")
            value = saved[name]
            if value.dtype.kind == "V":  # npz keeps bfloat16 as raw 2-byte records
                value = value.view(ref.dtype)
            if value.shape != ref.shape or value.dtype != ref.dtype:
                raise ValueError(f"EMA parameter {name!r} is {value.dtype}{list(value.shape)} in {path}, "
                                 f"but the model's is {ref.dtype}{list(ref.shape)}")
            leaves.append((key, variable.replace(jax.device_put(value, ref.sharding))))
    return nnx.from_flat_state(leaves)
