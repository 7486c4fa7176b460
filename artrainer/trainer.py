"""The Trainer: fit / validate loops, hook dispatch, checkpoint restore.

The hot loop is: pull a batch (or ``accumulate_grad_batches`` of them), check its
shapes against the first one, run the compiled step, bump counters, dispatch hooks.
Model, optimizer, metric sums and the divergence flag stay on the device; the host
reads them every ``log_every_n_steps`` steps, at validation, and when a callback asks.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artrainer import compiled_step, distributed
from artrainer.callbacks.base import HOOKS, Callback
from artrainer.checkpointing import CheckpointStore, CorruptCheckpointError, split_step_path
from artrainer.device_manager import DeviceManager
from artrainer.interrupts import StopOnSignal
from artrainer.metrics import MetricSums
from artrainer.module import ARModule

PRECISIONS = ("fp32", "bf16")
CHECKPOINT_FORMAT = 1


class DivergenceError(FloatingPointError):
    """A loss or gradient norm became NaN or infinite."""


class Trainer:
    """Runs an :class:`~artrainer.ARModule`'s compiled training loop with callbacks.

    See README.md ("Trainer") for every argument. ``logger=None`` logs to TensorBoard
    under ``default_root_dir``; ``logger=False`` disables logging.
    """

    def __init__(self, *, max_steps: int | None = None, max_epochs: int | None = None,
                 callbacks: Iterable[Callback] = (), logger: Any = None,
                 log_every_n_steps: int = 50, val_check_interval: int | float | None = None,
                 limit_val_batches: int | float | None = None, accumulate_grad_batches: int = 1,
                 precision: str = "fp32", seed: int = 0, default_root_dir: str = "runs",
                 enable_progress_bar: bool = True, enable_model_summary: bool = True,
                 strategy: str = "single", mesh: Any = None, **unknown: Any):
        if unknown:
            allowed = [p for p in inspect.signature(Trainer.__init__).parameters if p not in ("self", "unknown")]
            name = next(iter(unknown))
            hint = difflib.get_close_matches(name, allowed, n=1)
            raise TypeError(f"Trainer got an unknown argument {name!r}"
                            + (f"; did you mean {hint[0]!r}?" if hint else "")
                            + f" Allowed: {', '.join(allowed)}")
        _check_optional_int("max_steps", max_steps, minimum=1)
        _check_optional_int("max_epochs", max_epochs, minimum=1)
        _check_int("log_every_n_steps", log_every_n_steps, minimum=1)
        _check_int("accumulate_grad_batches", accumulate_grad_batches, minimum=1)
        _check_int("seed", seed, minimum=0)
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported; use one of {PRECISIONS}")
        if strategy not in distributed.STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not supported; use one of {distributed.STRATEGIES}")
        if mesh is not None and strategy == "single":
            raise ValueError("mesh= spreads the run over devices; give it with strategy='dp' or 'fsdp'")
        _check_interval("val_check_interval", val_check_interval)
        _check_interval("limit_val_batches", limit_val_batches, allow_zero=True)
        if isinstance(callbacks, Callback):
            callbacks = [callbacks]
        elif isinstance(callbacks, (str, bytes, Mapping)) or not isinstance(callbacks, Iterable):
            raise TypeError(f"callbacks must be an iterable of artrainer.Callback instances (() for none); "
                            f"got {callbacks!r} ({type(callbacks).__name__})")
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be artrainer.Callback instances; got {cb!r}")
        if not isinstance(default_root_dir, (str, os.PathLike)):
            raise TypeError(f"default_root_dir must be a str or os.PathLike directory; got {default_root_dir!r} "
                            f"({type(default_root_dir).__name__})")
        for name, flag in (("enable_progress_bar", enable_progress_bar), ("enable_model_summary", enable_model_summary)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool (True or False); got {flag!r} ({type(flag).__name__})")

        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.log_every_n_steps = log_every_n_steps
        self.val_check_interval, self.limit_val_batches = val_check_interval, limit_val_batches
        self.accumulate_grad_batches, self.precision, self.seed = accumulate_grad_batches, precision, seed
        self.default_root_dir = os.fspath(default_root_dir)
        self.strategy = strategy
        self.mesh = distributed.make_mesh(strategy) if mesh is None else distributed.check_mesh(mesh)
        self.logger = self._make_logger(logger)
        self.callbacks = self._with_default_callbacks(callbacks, enable_progress_bar and distributed.is_main_process())
        self.enable_model_summary = enable_model_summary and distributed.is_main_process()
        #: How the interrupt message says to continue; recipes put their own command line here.
        self.resume_hint = "fit(..., ckpt_path='last')"

        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False
        self.callback_metrics: dict[str, float] = {}
        self._metric_steps: dict[str, int] = {}
        self.module: ARModule | None = None
        self.optimizer: nnx.Optimizer | None = None
        self.train_data: Any = None
        self.num_training_batches: int | None = None
        self.eval_params = None
        self.resumed_step: int | None = None
        #: The signal (SIGINT / SIGTERM) that stopped the last fit early, else None.
        self.interrupted: signal.Signals | None = None
        self._interrupt_checkpoint: str | None = None
        self._fitting = False
        self._eval_step = None
        self._eval_keys = None
        self._val_data = None
        self._state: dict[str, Any] | None = None
        self._health = None
        self._dirty = False
        self._logged_at = -1

    # ------------------------------------------------------------------ public API
    def fit(self, module: ARModule, train_data: Iterable[Mapping[str, Any]],
            val_data: Iterable[Mapping[str, Any]] | None = None, *,
            ckpt_path: str | os.PathLike | None = None) -> None:
        """Train ``module`` until ``max_steps`` / ``max_epochs`` or ``should_stop``.

        ``ckpt_path``: ``"last"`` / ``"best"`` (from the ModelCheckpoint directory; a
        missing ``"last"`` starts fresh with a warning, so restart loops just work) or
        the path of a checkpoint root or step directory.
        """
        self._check_fit_args(module, train_data, val_data)
        self._setup(module, train_data)
        self._val_data, self._fitting = val_data, True
        try:
            with StopOnSignal(self._stop_on_signal):
                self._call("setup", "fit")
                resume = self._restore(ckpt_path) if ckpt_path is not None else (0, False)
                self._call("on_fit_start")
                self._train(train_data, val_data, *resume)
                if self.interrupted is not None:
                    self._checkpoint_interrupted_run()
                self._call("on_fit_end")
        except BaseException as exc:
            self._call("on_exception", exc)
            raise
        finally:
            self._fitting = False
            self._call("teardown", "fit")  # also waits for ModelCheckpoint's pending writes
            self.sync_module()
            if self.logger is not None:
                self.logger.flush()
        if self.interrupted is not None:
            print(f"artrainer: stopped by {self.interrupted.name} after step {self.global_step} (checkpoint "
                  f"{self._interrupt_checkpoint}); continue with: {self.resume_hint}", file=sys.stderr)

    def validate(self, module: ARModule, val_data: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Exact (element-weighted) validation metrics of ``module`` over ``val_data``."""
        if not isinstance(module, ARModule):
            raise TypeError(f"module must be an artrainer.ARModule; got {type(module).__name__}")
        _check_batches("val_data", val_data)
        if self._fitting:  # called from a callback: evaluate the run's current weights
            return self._validation_loop(val_data)
        self.sync_module()
        self._state = None  # outside fit, read the module's own (possibly user-changed) weights
        if self.module is not module:
            self.module = module
            self._hook_table = self._build_hook_table()
        return self._validation_loop(val_data)

    # ------------------------------------------------------- helpers for callbacks
    @property
    def is_log_step(self) -> bool:
        """True inside the hooks of a step whose metrics were just read from the device."""
        return self._logged_at == self.global_step

    @property
    def validation_due(self) -> bool:
        """True inside ``on_train_batch_end`` of a step that validation will follow."""
        return self._val_data is not None and self._validation_due()

    @property
    def model_state(self):
        """The live ``nnx.State`` of the model (device arrays), without syncing the module."""
        return self._state["model"] if self._state is not None else nnx.state(self.module)

    def eval_model_state(self):
        """The model state validation and sampling use: ``eval_params`` over the live state.

        A callback (an EMA of the weights, say) sets ``trainer.eval_params`` to an
        ``nnx.State`` of ``nnx.Param`` values; validation and SampleGenerator then use
        those instead of the training weights. None (the default) uses the live ones.
        """
        state = self.model_state
        if self.eval_params is None:
            return state
        return nnx.merge_state(state, self.eval_params)

    def eval_module(self) -> ARModule:
        """``module`` itself, or a copy carrying ``eval_params`` when they are set."""
        if self.eval_params is None:
            self.sync_module()
            return self.module
        # copy: sampling may write caches or RNG counts, which must not leak into training.
        return nnx.merge(nnx.graphdef(self.module), self.eval_model_state(), copy=True)

    def hparams(self, module: ARModule | None = None) -> dict[str, Any]:
        """Trainer settings plus the module's ``hparams`` dict (if it has one), for loggers."""
        module = module if module is not None else self.module
        settings = {name: getattr(self, name) for name in (
            "max_steps", "max_epochs", "log_every_n_steps", "val_check_interval", "limit_val_batches",
            "accumulate_grad_batches", "precision", "seed", "strategy")}
        settings["module"] = type(module).__name__
        settings.update({f"module/{k}": v for k, v in getattr(module, "hparams", {}).items()})
        return settings

    def sync_module(self) -> None:
        """Write the compiled loop's latest arrays back into ``module`` and ``optimizer``."""
        if self._dirty and self._state is not None:
            nnx.update(self.module, self._state["model"])
            nnx.update(self.optimizer, self._state["optimizer"])
            self._dirty = False

    @property
    def skipped_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient (``TerminateOnNaN(skip_bad_steps=True)``)."""
        return 0 if self._health is None else int(jax.device_get(self._health["skipped"]))

    def nonfinite(self) -> tuple[int, str] | None:
        """``(step, 'loss' | 'grad_norm')`` of the first non-finite value so far, else None."""
        if self._health is None:
            return None
        health = jax.device_get(self._health)
        step = int(health["step"])
        return None if step < 0 else (step, compiled_step.NONFINITE_NAMES[int(health["what"])])

    def check_finite(self) -> None:
        """Raise :class:`DivergenceError` naming the step and metric if the run diverged."""
        bad = self.nonfinite()
        if bad is not None:
            step, what = bad
            skipping = self._skip_nonfinite()
            streak = f" after {skipping} skipped bad steps in a row" if skipping else ""
            raise DivergenceError(
                f"non-finite {what} at step {step}{streak} (NaN or Inf); training stopped and no "
                f"checkpoint of the diverged state was written. Resume from the last good one "
                f"with fit(..., ckpt_path='last') after lowering the learning rate or clipping.")

    def current_lr(self) -> float | None:
        """Learning rate of the latest update: ``module.learning_rate`` times callback scales."""
        base = getattr(self.module, "learning_rate", None)
        if base is None:
            return None
        last_update = max(self.global_step - 1, 0)
        for cb in self.callbacks:
            scale = getattr(cb, "lr_scale", None)
            if scale is not None:
                base *= float(scale(last_update))
        return float(base)

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(arrays, meta)`` describing the run now, for ModelCheckpoint to save.

        ``meta`` is JSON: counters, where the next batch comes from, the host copy of
        the metric sums and every callback's ``state_dict``. Raises
        :class:`DivergenceError` instead of describing a diverged state.
        """
        self.check_finite()
        epoch_done = self._epoch_done
        meta = {
            "format": CHECKPOINT_FORMAT,
            "global_step": self.global_step,
            "current_epoch": self.current_epoch,
            "next_epoch": self.current_epoch + 1 if epoch_done else self.current_epoch,
            "next_batch": 0 if epoch_done else self._batches_in_epoch,
            "loader": self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None,
            "train_sums": _host_tree(self._sums),
            "health": _host_tree(self._health),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()},
        }
        self._call("on_save_checkpoint", meta)
        return {"model": self._state["model"], "optimizer": self._state["optimizer"]}, meta

    def build_train_step(self, module: ARModule) -> "TrainStepPlan":
        """The optimizer, placed state and compiled step ``fit`` would run for ``module``.

        Callbacks wrap the module's optax transform; the state sits on the best device or,
        under ``dp`` / ``fsdp``, is sharded over the mesh. Counters and the module's weights
        are left alone, so the batch-size finder builds the real step with it too.
        """
        tx = module.configure_optimizers()
        for cb in self.callbacks:
            tx = cb.configure_optimizer(self, module, tx)
        optimizer = nnx.Optimizer(module, tx, wrt=module.trainable)
        state = {"model": nnx.state(module), "optimizer": nnx.state(optimizer)}
        shardings = None
        if self.mesh is not None:
            shardings = distributed.state_shardings(state, self.mesh, self.strategy)
            state = jax.device_put(state, shardings)
        else:
            state = jax.device_put(state, DeviceManager().get_device())
        step = compiled_step.make_train_step(
            nnx.graphdef(module), nnx.graphdef(optimizer), seed=self.seed,
            accumulate=self.accumulate_grad_batches, precision=self.precision, state_shardings=shardings,
            skip_nonfinite=self._skip_nonfinite())
        return TrainStepPlan(optimizer, nnx.graphdef(module), state, step)

    def _skip_nonfinite(self) -> int:
        """Bad steps in a row to skip before stopping (TerminateOnNaN(skip_bad_steps=True)); 0: none."""
        from artrainer.callbacks import TerminateOnNaN
        return max((cb.max_consecutive_bad_steps for cb in self.callbacks
                    if isinstance(cb, TerminateOnNaN) and cb.skip_bad_steps), default=0)

    def place_batch(self, batch, accumulate: int = 1):
        """This process's rows of ``batch`` as global arrays split over the mesh (as given on one device)."""
        if self.mesh is None:
            return batch
        sharding = distributed.batch_sharding(self.mesh, accumulate=accumulate)
        return distributed.place_batch(batch, sharding, accumulate=accumulate)

    def default_checkpoint_dir(self) -> str:
        return os.path.join(self.default_root_dir, "checkpoints")

    # ------------------------------------------------------------------- internals
    def _make_logger(self, logger):
        if logger is False or not distributed.is_main_process():  # one process writes the logs
            return None
        if logger is None:
            from artrainer.loggers import TensorBoardLogger
            return TensorBoardLogger(save_dir=self.default_root_dir, name="logs")
        for method in ("log_metrics", "log_hyperparams", "flush"):
            if not callable(getattr(logger, method, None)):
                raise TypeError(f"logger={logger!r} lacks a {method}() method; pass an "
                                f"artrainer.loggers.TensorBoardLogger, None (default) or False")
        return logger

    def _with_default_callbacks(self, callbacks, enable_progress_bar):
        from artrainer.callbacks import MetricsLogger, ProgressBar, TerminateOnNaN
        present = {type(cb) for cb in callbacks}

        def has(kind):
            return any(issubclass(t, kind) for t in present)

        defaults = []
        if not has(TerminateOnNaN):
            defaults.append(TerminateOnNaN())
        if self.logger is not None and not has(MetricsLogger):
            defaults.append(MetricsLogger())
        if enable_progress_bar and not has(ProgressBar):
            defaults.append(ProgressBar())
        ordered = callbacks + defaults
        keys = [cb.state_key for cb in ordered]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"callbacks share the state_key(s) {duplicated}; give each instance a "
                             "distinct state_key so their checkpoint states cannot collide")
        # Monitoring callbacks run last so they see what the others logged, and checkpoints
        # after every other monitor, so the state they save includes this step's decisions.
        from artrainer.callbacks import ModelCheckpoint
        monitors = [cb for cb in ordered if cb.is_monitor]
        return ([cb for cb in ordered if not cb.is_monitor] + [cb for cb in monitors if not isinstance(cb, ModelCheckpoint)]
                + [cb for cb in monitors if isinstance(cb, ModelCheckpoint)])

    def _build_hook_table(self):
        table = {}
        for hook in HOOKS:
            base = getattr(Callback, hook)
            table[hook] = [(getattr(cb, hook), cb.uses_module) for cb in self.callbacks
                           if getattr(type(cb), hook, base) is not base]
        return table

    def _call(self, hook: str, *args: Any) -> None:
        for fn, uses_module in self._hook_table[hook]:
            if uses_module:
                self.sync_module()
            fn(self, self.module, *args)

    def _check_fit_args(self, module, train_data, val_data):
        if not isinstance(module, ARModule):
            raise TypeError(f"module must be an artrainer.ARModule; got {type(module).__name__}")
        for name in ("__call__", "loss_fn"):
            if not callable(getattr(module, name, None)):
                raise TypeError(f"{type(module).__name__} must define {name}()")
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("Trainer needs max_steps or max_epochs to know when fit() ends; "
                             "both are None")
        _check_batches("train_data", train_data)
        if val_data is not None:
            _check_batches("val_data", val_data)
        if isinstance(self.val_check_interval, float) and not hasattr(train_data, "__len__"):
            raise ValueError(f"val_check_interval={self.val_check_interval} is a fraction of an epoch, "
                             "but train_data has no len(); pass an int number of steps instead")
        if isinstance(self.limit_val_batches, float) and val_data is not None and not hasattr(val_data, "__len__"):
            raise ValueError(f"limit_val_batches={self.limit_val_batches} is a fraction, but val_data has no "
                             "len(); pass an int number of batches instead")
        if val_data is None and self.val_check_interval is not None:
            warnings.warn("val_check_interval is set but fit() got no val_data; no validation will run",
                          stacklevel=3)

    def _setup(self, module, train_data):
        self.module, self.train_data = module, train_data
        self.global_step, self.current_epoch, self.should_stop = 0, 0, False
        self.interrupted, self._interrupt_checkpoint = None, None
        self.resumed_step = None
        self.callback_metrics, self._metric_steps = {}, {}
        self.num_training_batches = len(train_data) if hasattr(train_data, "__len__") else None
        self._hook_table = self._build_hook_table()
        plan = self.build_train_step(module)
        self.optimizer, self._model_def, self._state = plan.optimizer, plan.model_def, plan.state
        self._train_step = plan.step
        self._dirty = True  # the module should hold the placed arrays too
        self._train_checker = _BatchChecker("train_data", module.input_key, module.input_value_limit)
        self._sums = None
        self._restored_sums = None
        self._health = compiled_step.init_health()
        self._batches_in_epoch = 0
        self._epoch_done = False
        self._logged_at = -1

    def _restore(self, ckpt_path) -> tuple[int, bool]:
        """Load a checkpoint into the run.

        Returns ``(batches already consumed this epoch, whether the epoch's batches are
        all consumed)``. A resumable loader restores its own position; any other
        iterable is fast-forwarded past the consumed batches.
        """
        ckpt_path = os.fspath(ckpt_path)
        if ckpt_path in ("last", "best"):
            owner, directory = self._checkpoint_owner()
            mode = owner.mode if owner is not None else "min"
            if not os.path.isdir(directory):
                warnings.warn(f"ckpt_path={ckpt_path!r}: no checkpoints in {directory}; starting from scratch",
                              stacklevel=3)
                return 0, False
            step = None
        else:
            directory, step = split_step_path(ckpt_path)
            mode = "min"
        store = CheckpointStore(directory, read_only=True, mode=mode)
        try:
            if step is None:
                step = store.best_step() if ckpt_path == "best" else store.latest_step()
            if step is None and ckpt_path == "best" and store.steps():
                raise FileNotFoundError(f"ckpt_path='best': the checkpoints in {directory} carry no monitored "
                                        "score (ModelCheckpoint had no monitor); use 'last' or a step directory")
            if step is None:
                warnings.warn(f"ckpt_path={ckpt_path!r}: {directory} holds no complete checkpoint; "
                              "starting from scratch", stacklevel=3)
                return 0, False
            if step not in store.steps():
                raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no complete checkpoint for step {step} "
                                        f"in {directory} (found {store.steps()})")
            older = sorted((s for s in store.steps() if s < step), reverse=True) if ckpt_path == "last" else []
            state, meta, used_step = self._restore_newest_good(store, [step, *older])
        finally:
            store.close()
        self._state, self._dirty = state, True
        self.global_step = self.resumed_step = int(meta["global_step"])
        if distributed.is_main_process():
            print(f"resumed from step {self.global_step} ({store.step_path(used_step)})", file=sys.stderr)
        self.current_epoch = int(meta["next_epoch"])
        self._restored_sums = meta.get("train_sums")
        # Checkpoints written before the skip counters existed lack them.
        health = {**jax.device_get(compiled_step.init_health()), "steps": self.global_step, **meta["health"]}
        self._health = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), health)
        self._call("on_load_checkpoint", meta)
        states = meta.get("callbacks", {})
        known = {cb.state_key for cb in self.callbacks}
        for cb in self.callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
        unused = sorted(set(states) - known)
        if unused:
            warnings.warn(f"checkpoint holds state for callbacks not present now: {unused}", stacklevel=3)
        next_batch = int(meta["next_batch"])
        epoch_body_done = self.num_training_batches is not None and next_batch >= self.num_training_batches
        if meta.get("loader") is not None and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(meta["loader"])
        return next_batch, epoch_body_done

    def _checkpoint_owner(self):
        """``(the ModelCheckpoint or None, the directory checkpoints live in)``."""
        from artrainer.callbacks import ModelCheckpoint
        owner = next((cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)), None)
        return owner, owner.dirpath_for(self) if owner is not None else self.default_checkpoint_dir()

    def _stop_on_signal(self, sig: signal.Signals) -> None:
        self.interrupted, self.should_stop = sig, True

    def _checkpoint_interrupted_run(self) -> None:
        """Make sure the step reached is on disk: ModelCheckpoint's save at train end, or our own."""
        owner, directory = self._checkpoint_owner()
        self._interrupt_checkpoint = os.path.join(directory, str(self.global_step))
        if self.global_step in (self.resumed_step, owner.last_saved_step if owner is not None else None):
            return
        store = CheckpointStore(directory, top_k=-1, scored=False, async_save=False)
        try:
            arrays, meta = self.checkpoint()
            store.save(self.global_step, arrays, meta)
            store.wait()
        finally:
            store.close()

    def _restore_newest_good(self, store: CheckpointStore, steps: list[int]):
        """Restore the first of ``steps`` that reads back intact, warning about each damaged
        one passed over; with none left, the error of the first."""
        first_error = None
        for step in steps:
            try:
                return (*store.restore(step, self._state), step)
            except CorruptCheckpointError as error:
                first_error = first_error or error
                if step != steps[-1]:
                    warnings.warn(f"{error}; falling back to the previous checkpoint", stacklevel=4)
        raise first_error

    def _train(self, train_data, val_data, consumed: int, epoch_body_done: bool) -> None:
        restored_loader = hasattr(train_data, "load_state_dict")
        self._call("on_train_start")
        self._last_log_time, self._last_log_step = time.perf_counter(), self.global_step
        while not self._finished():
            self._batches_in_epoch, self._epoch_done = consumed, False
            self._call("on_train_epoch_start")
            batches = iter(()) if epoch_body_done else iter(train_data)
            if consumed and not epoch_body_done and not restored_loader:
                if next(itertools.islice(batches, consumed - 1, None), None) is None:
                    raise ValueError(f"cannot resume: train_data has fewer than {consumed} batches "
                                     "this epoch, but the checkpoint was taken after that many")
            consumed, epoch_body_done = 0, False
            for batch_idx, batch in enumerate(self._step_batches(batches)):
                self._call("on_train_batch_start", batch, batch_idx)
                outputs = self._run_step(batch)
                self._call("on_train_batch_end", outputs, batch, batch_idx)
                if self.validation_due:
                    self._validation_loop(val_data)
                if self.should_stop or self._reached_max_steps():
                    break
            else:
                self._epoch_done = True
            # Stopping on an epoch's last step still completes that epoch.
            self._epoch_done = self._epoch_done or self._epoch_exhausted()
            if self._epoch_done and val_data is not None and self.val_check_interval is None:
                self._validation_loop(val_data)
            self._call("on_train_epoch_end")
            if not self._epoch_done:
                break
            if self._batches_in_epoch == 0:
                raise ValueError("train_data yielded no batches in an epoch; is it an exhausted "
                                 "iterator? Pass a re-iterable (a list, a DataLoader)")
            self.current_epoch += 1
            self._batches_in_epoch, self._epoch_done = 0, False
        self._call("on_train_end")

    def _finished(self) -> bool:
        if self.should_stop or self._reached_max_steps():
            return True
        return self.max_epochs is not None and self.current_epoch >= self.max_epochs

    def _reached_max_steps(self) -> bool:
        return self.max_steps is not None and self.global_step >= self.max_steps

    def _epoch_exhausted(self) -> bool:
        """Whether this epoch has no full step left (known only for sized train_data)."""
        remaining = None if self.num_training_batches is None else self.num_training_batches - self._batches_in_epoch
        return remaining is not None and remaining < self.accumulate_grad_batches

    def _step_batches(self, batches):
        """Yield one step's input: a batch, or ``accumulate_grad_batches`` stacked."""
        size = self.accumulate_grad_batches
        while True:
            group = list(itertools.islice(batches, size))
            if len(group) < size:
                if group:
                    warnings.warn(f"dropping {len(group)} trailing batch(es) that do not fill "
                                  f"accumulate_grad_batches={size}", stacklevel=4)
                return
            for batch in group:
                self._train_checker.check(batch)
            self._batches_in_epoch += size
            if size == 1:
                yield group[0]
            else:
                yield {key: np.stack([np.asarray(b[key]) for b in group]) for key in group[0]}

    def _run_step(self, batch):
        if self._sums is None:
            self._init_sums(batch)
        batch = self.place_batch(batch, self.accumulate_grad_batches)
        self._state, self._sums, self._health, outputs = self._train_step(
            self._state, self._sums, self._health, batch)
        self._dirty = True
        self.global_step += 1
        if self.global_step % self.log_every_n_steps == 0:
            self._read_train_metrics()
        return outputs

    def _init_sums(self, batch):
        micro = batch if self.accumulate_grad_batches == 1 else {k: v[0] for k, v in batch.items()}
        shapes = compiled_step.metric_shapes(self._model_def, self._state["model"], micro,
                                             self.precision, self.seed)
        sums = compiled_step.init_train_sums(shapes)
        if self._restored_sums is not None:
            sums = jax.tree.map(lambda zero, saved: jnp.asarray(saved, zero.dtype), sums, self._restored_sums)
        self._sums = sums
        if self.enable_model_summary:
            from artrainer.loggers import code_block
            from artrainer.summary import run_summary
            summary = run_summary(self, self.module, batch)
            print(summary, file=sys.stderr)
            if self.logger is not None and hasattr(self.logger, "log_text"):
                self.logger.log_text("run/summary", code_block(summary), self.global_step)
        spec = self._train_checker.spec[self.module.input_key]
        self._items_per_step = spec[0][0] * self.accumulate_grad_batches * jax.process_count()
        self._elements_per_step = math.prod(spec[0]) * self.accumulate_grad_batches * jax.process_count()

    def _read_train_metrics(self) -> None:
        """Host sync: turn the device sums into ``train/...`` metrics and reset them."""
        sums = jax.device_get(self._sums)
        now = time.perf_counter()
        steps = int(sums["steps"])
        metrics = {f"train/{k}": v for k, v in MetricSums.compute(sums["metrics"]).items()}
        if steps:
            metrics["grad_norm"] = float(sums["grad_norm"]) / steps
            elapsed = max(now - self._last_log_time, 1e-9)
            done = self.global_step - self._last_log_step
            metrics["throughput/items_per_sec"] = done * self._items_per_step / elapsed
            metrics["throughput/tokens_per_sec"] = done * self._elements_per_step / elapsed
        lr = self.current_lr()
        if lr is not None:
            metrics["lr"] = lr
        self.set_metrics(metrics)
        self._sums = jax.tree.map(jnp.zeros_like, self._sums)
        self._last_log_time, self._last_log_step = now, self.global_step
        self._logged_at = self.global_step

    def _validation_due(self) -> bool:
        interval = self.val_check_interval
        if interval is None:
            return False
        if isinstance(interval, float):
            every = max(1, round(interval * self.num_training_batches / self.accumulate_grad_batches))
            return (self._batches_in_epoch // self.accumulate_grad_batches) % every == 0
        return self.global_step % interval == 0

    def _val_limit(self, val_data) -> int | None:
        limit = self.limit_val_batches
        if isinstance(limit, float):
            limit = max(1, int(limit * len(val_data))) if limit > 0 else 0
        return limit

    def _validation_loop(self, val_data) -> dict[str, float]:
        """One pass over ``val_data`` (at most ``limit_val_batches``), element-weighted.

        A resumable loader is put back where it was, so every validation sees the same
        batches, whether it stopped early at the limit or ran a whole pass.
        """
        limit = self._val_limit(val_data)
        if limit == 0:
            return {}
        self._call("on_validation_start")
        position = val_data.state_dict() if hasattr(val_data, "load_state_dict") else None
        model_state = self.eval_model_state()
        checker = _BatchChecker("val_data", self.module.input_key, self.module.input_value_limit)
        eval_step = self._eval_step_for(self.module)
        sums = None
        batches = iter(val_data)
        try:
            for index, batch in zip(range(limit) if limit is not None else itertools.count(), batches):
                checker.check(batch)
                if sums is None:
                    sums = MetricSums.zeros(self._eval_metric_keys(model_state, batch))
                sums = eval_step(model_state, sums, self.place_batch(batch), index)
        finally:
            if hasattr(batches, "close"):
                batches.close()
            if position is not None:
                val_data.load_state_dict(position)
        if sums is None:
            raise ValueError("val_data yielded no batches; is it an empty list or an exhausted iterator? "
                             "Pass a re-iterable with at least one batch (a list, a DataLoader)")
        metrics = {f"val/{k}": v for k, v in MetricSums.compute(sums).items()}
        self.set_metrics(metrics)
        self._call("on_validation_end")
        return metrics

    def set_metrics(self, metrics: Mapping[str, float]) -> None:
        """Put ``metrics`` into ``callback_metrics`` as computed at this step, so
        ``fresh_metrics`` (what MetricsLogger writes, once) includes them."""
        self.callback_metrics.update(metrics)
        self._metric_steps.update(dict.fromkeys(metrics, self.global_step))

    def fresh_metrics(self) -> dict[str, float]:
        """The metrics the Trainer computed at this step (train metrics at a log step, val
        metrics after a validation): what a logger writes now, each point once."""
        return {k: v for k, v in self.callback_metrics.items() if self._metric_steps.get(k) == self.global_step}

    def metric_is_fresh(self, key: str) -> bool:
        """Whether ``callback_metrics[key]`` was computed at this step (keys the Trainer does
        not compute, set by callbacks, count as fresh)."""
        return key in self.callback_metrics and self._metric_steps.get(key, self.global_step) == self.global_step

    def _eval_metric_keys(self, model_state, batch):
        """validation_step's metric keys, traced abstractly once per module."""
        if self._eval_keys is None or self._eval_keys[0] is not self.module:
            shapes = compiled_step.eval_metric_shapes(self._model_def_of(self.module), model_state, batch, self.seed)
            self._eval_keys = (self.module, tuple(shapes))
        return self._eval_keys[1]

    def _model_def_of(self, module):
        return self._model_def if self._state is not None else nnx.graphdef(module)

    def _eval_step_for(self, module):
        """The compiled eval step, built once per module (so once per fit)."""
        if self._eval_step is None or self._eval_step[0] is not module:
            step = compiled_step.make_eval_step(self._model_def_of(module), seed=self.seed,
                                                precision=self.precision)
            self._eval_step = (module, step)
        return self._eval_step[1]


@dataclasses.dataclass(frozen=True)
class TrainStepPlan:
    """What :meth:`Trainer.build_train_step` returns."""

    optimizer: nnx.Optimizer
    model_def: nnx.GraphDef
    state: dict[str, Any]  # {'model': State, 'optimizer': State}, placed
    step: Any  # jitted (state, sums, health, batch) -> (state, sums, health, outputs)


class _BatchChecker:
    """Checks each batch against the first: same keys, shapes and dtypes (one compile), and
    the integer values of the module's input in ``[0, value_limit)`` (a host-side min / max;
    the compiled step cannot read them)."""

    def __init__(self, name: str, input_key: str, value_limit: int | None = None):
        self.name, self.input_key, self.value_limit = name, input_key, value_limit
        self.spec: dict[str, tuple] | None = None

    def check(self, batch) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"{self.name} must yield dicts of arrays; got {type(batch).__name__}")
        if self.spec is None:
            self._check_first(batch)
        else:
            self._check_like_first(batch)
        self._check_input_values(batch[self.input_key])

    def _check_first(self, batch) -> None:
        if self.input_key not in batch:
            raise ValueError(f"{self.name} batches lack the module's input_key {self.input_key!r}; "
                             f"they have keys {sorted(batch)}")
        for key, value in batch.items():
            if np.ndim(value) and np.shape(value)[0] == 0:
                raise ValueError(f"{self.name} batch[{key!r}] has shape {np.shape(value)}: a batch needs "
                                 "at least one row")
        self.spec = {k: (np.shape(v), np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype)
                     for k, v in batch.items()}

    def _check_like_first(self, batch) -> None:
        if batch.keys() != self.spec.keys():
            raise ValueError(f"{self.name} batch keys changed from {sorted(self.spec)} to {sorted(batch)}")
        for key, (shape, dtype) in self.spec.items():
            value = batch[key]
            if np.shape(value) != shape or getattr(value, "dtype", dtype) != dtype:
                raise ValueError(
                    f"{self.name} batch[{key!r}] has shape {np.shape(value)} dtype "
                    f"{getattr(value, 'dtype', '?')}, but the first batch had {shape} {dtype}; batch "
                    "shapes must stay fixed (use artrainer.data.DataLoader with last_batch='drop' or 'pad')")

    def _check_input_values(self, value) -> None:
        """Integer ids / pixel values / codes in ``[0, value_limit)``, for host (numpy) batches:
        a batch already on the device is not read back, which would sync every step."""
        dtype = self.spec[self.input_key][1]
        if (self.value_limit is None or isinstance(value, jax.Array) or not np.issubdtype(dtype, np.integer)
                or not np.size(value)):
            return
        low, high = np.min(value), np.max(value)
        if low < 0 or high >= self.value_limit:
            raise ValueError(f"{self.name} batch[{self.input_key!r}] must hold token ids / input values in "
                             f"[0, {self.value_limit}) (the module's input_value_limit); got "
                             f"{low if low < 0 else high}")


def _host_tree(tree):
    """A JSON-ready copy of a small device pytree (python ints/floats)."""
    if tree is None:
        return None
    return jax.tree.map(lambda x: np.asarray(x).item(), jax.device_get(tree))


def _check_batches(name, data):
    """``data`` must be an iterable of batch dicts (not None, a dict or a str)."""
    if isinstance(data, (Mapping, str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"{name} must be an iterable of batch dicts (e.g. a list or an "
                        f"artrainer.data.DataLoader); got {type(data).__name__}")


def _check_int(name, value, *, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}={value} is invalid; it must be >= {minimum}")


def _check_optional_int(name, value, *, minimum):
    if value is not None:
        _check_int(name, value, minimum=minimum)


def _check_interval(name, value, *, allow_zero=False):
    """None, an int count (>= 1, or >= 0 with allow_zero) or a float fraction in (0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be None, an int count or a float fraction; got {value!r}")
    if isinstance(value, (float, np.floating)):
        low_ok = value >= 0.0 if allow_zero else value > 0.0
        if not (low_ok and value <= 1.0):
            raise ValueError(f"{name}={value} as a fraction must lie in {'[0' if allow_zero else '(0'}, 1]")
    elif value < (0 if allow_zero else 1):
        raise ValueError(f"{name}={value} as a count must be >= {0 if allow_zero else 1}")
