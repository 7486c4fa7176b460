"""ModelCheckpoint: orbax checkpoints of the whole run, best-k plus last, async and atomic."""

from __future__ import annotations

import math
import os
import warnings

from artrainer.callbacks.base import Callback
from artrainer.checkpointing import CheckpointStore
from artrainer.validation import require_bool, require_choice, require_int


class ModelCheckpoint(Callback):
    """Save model, optimizer, counters, data position and callback states with orbax.

    When it saves: every ``every_n_steps`` training steps if given; else after each
    validation if ``monitor`` is set; else at the end of each epoch; and, with
    ``save_last``, at the end of training. What it keeps: the newest checkpoint
    (``save_last``; the ``keep_last_n`` newest, so that ``ckpt_path='last'`` has a fallback
    should the newest be damaged) and the ``save_top_k`` best by ``monitor`` (``mode='min'``: lower
    is better); ``save_top_k=-1`` keeps all. Saves are asynchronous (``async_save``)
    and atomic; a diverged state is refused, so the last good checkpoint survives.
    Checkpoints land in ``dirpath`` (default ``<default_root_dir>/checkpoints``), one
    directory per step; resume with ``trainer.fit(..., ckpt_path='last' | 'best')``.
    """

    is_monitor = True
    uses_module = False
    role = "checkpoints"

    def __init__(self, dirpath: str | os.PathLike | None = None, *, every_n_steps: int | None = None,
                 monitor: str | None = None, mode: str = "min", save_top_k: int = 1,
                 save_last: bool = True, async_save: bool = True, keep_last_n: int = 1):
        mode = require_choice("mode", mode, ("min", "max"))
        every_n_steps = require_int("every_n_steps", every_n_steps, minimum=1, optional=True)
        save_top_k = require_int("save_top_k", save_top_k, minimum=-1, why="-1 keeps every checkpoint")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"save_top_k={save_top_k} ranks checkpoints, which needs a monitor metric; "
                             "set monitor= (e.g. 'val/loss') or use save_top_k in (-1, 0, 1)")
        keep_last_n = require_int("keep_last_n", keep_last_n, minimum=1)
        save_last, async_save = require_bool("save_last", save_last), require_bool("async_save", async_save)
        if save_top_k == 0 and not save_last:
            raise ValueError("save_top_k=0 with save_last=False would never keep a checkpoint")
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.every_n_steps, self.monitor, self.mode = every_n_steps, monitor, mode
        self.save_top_k, self.save_last, self.async_save = save_top_k, save_last, async_save
        self.keep_last_n = keep_last_n
        self.best_k_models: dict[int, float] = {}
        self.last_saved_step: int | None = None
        self._store: CheckpointStore | None = None
        self._pending = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_steps=self.every_n_steps)

    def dirpath_for(self, trainer) -> str:
        return os.path.abspath(self.dirpath or trainer.default_checkpoint_dir())

    @property
    def best_step(self) -> int | None:
        if not self.best_k_models:
            return None
        pick = min if self.mode == "min" else max
        return pick(self.best_k_models, key=self.best_k_models.get)

    @property
    def best_model_score(self) -> float | None:
        step = self.best_step
        return None if step is None else self.best_k_models[step]

    def state_dict(self):
        return {"best_k_models": {str(k): v for k, v in self.best_k_models.items()},
                "last_saved_step": self.last_saved_step}

    def load_state_dict(self, state):
        self.best_k_models = {int(k): float(v) for k, v in state["best_k_models"].items()}
        self.last_saved_step = state["last_saved_step"]

    # -- hooks ------------------------------------------------------------------
    def setup(self, trainer, module, stage):
        directory = self.dirpath_for(trainer)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise OSError(f"ModelCheckpoint cannot create its directory {directory}: {exc}") from exc
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"ModelCheckpoint directory {directory} is not writable")
        self.best_k_models, self.last_saved_step, self._pending = {}, None, False  # per fit; resume reloads
        keep_all = self.save_top_k == -1
        self._store = CheckpointStore(
            directory, keep_last=self.keep_last_n if (self.save_last or self.monitor is None) else 0,
            top_k=-1 if keep_all else (self.save_top_k if self.monitor else 0),
            mode=self.mode, scored=self.monitor is not None, async_save=self.async_save)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            if trainer.validation_due:
                self._pending = True  # save after this step's validation: fresh score, complete state
            else:
                self.save(trainer)

    def on_validation_end(self, trainer, module):
        if trainer.global_step > 0 and (self._pending or (self.monitor and not self.every_n_steps)):
            self.save(trainer)
        self._pending = False

    def on_train_epoch_end(self, trainer, module):
        if not self.monitor and not self.every_n_steps:
            self.save(trainer)

    def on_train_end(self, trainer, module):
        if self.save_last:
            self.save(trainer)

    def on_exception(self, trainer, module, exception):
        self._close()

    def teardown(self, trainer, module, stage):
        self._close()

    # -- saving -----------------------------------------------------------------
    def save(self, trainer) -> None:
        """Save the run at ``trainer.global_step`` (once per step).

        A monitored score is attached only when it was computed at this step, so a
        checkpoint never ranks by an older validation's number.
        """
        step = trainer.global_step
        if self._store is None or step in (self.last_saved_step, trainer.resumed_step):
            return
        score = None
        if self.monitor is not None:
            if not trainer.metric_is_fresh(self.monitor):
                warnings.warn(f"ModelCheckpoint(monitor={self.monitor!r}): no value computed at step {step}; "
                              "saving without a score", stacklevel=2)
            elif math.isfinite(trainer.callback_metrics[self.monitor]):
                score = float(trainer.callback_metrics[self.monitor])
        arrays, meta = trainer.checkpoint()
        if step in self._store.steps():
            warnings.warn(f"ModelCheckpoint: replacing the checkpoint of step {step} in "
                          f"{self._store.directory}, left by an earlier run that went further", stacklevel=2)
            self._store.delete(step)
            self.best_k_models.pop(step, None)
        self.last_saved_step = step
        if score is not None:
            self.best_k_models[step] = score
            if self.save_top_k > 0 and len(self.best_k_models) > self.save_top_k:
                worst = (max if self.mode == "min" else min)(self.best_k_models, key=self.best_k_models.get)
                del self.best_k_models[worst]
        meta["callbacks"][self.state_key] = self.state_dict()  # including this very save
        self._store.save(step, arrays, meta, score)

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.wait()
            finally:
                store.close()
