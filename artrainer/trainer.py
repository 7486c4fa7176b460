"""The Trainer: what a fit is configured with, its public state, and its entry points.

``fit`` builds the compiled step (:mod:`artrainer.step`), restores a checkpoint if asked
(:mod:`artrainer.checkpointing`) and hands over to :class:`artrainer.loop.FitLoop`;
``validate`` runs :class:`artrainer.evaluation.Evaluator`. Callbacks are ordered and
dispatched by :mod:`artrainer.hooks`; batches are checked by :mod:`artrainer.batches`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import signal
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from artrainer import checkpointing, distributed, hooks, step
from artrainer.batches import check_batches
from artrainer.callbacks.base import Callback
from artrainer.device_manager import DeviceManager
from artrainer.evaluation import Evaluator
from artrainer.interrupts import StopOnSignal
from artrainer.loop import FitLoop
from artrainer.module import ARModule
from artrainer.validation import require_bool, require_choice, require_int, require_real

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
            _refuse_unknown(unknown)
        self.max_steps = require_int("max_steps", max_steps, minimum=1, optional=True)
        self.max_epochs = require_int("max_epochs", max_epochs, minimum=1, optional=True)
        self.log_every_n_steps = require_int("log_every_n_steps", log_every_n_steps, minimum=1)
        self.accumulate_grad_batches = require_int("accumulate_grad_batches", accumulate_grad_batches, minimum=1)
        self.seed = require_int("seed", seed, minimum=0)
        self.precision = require_choice("precision", precision, PRECISIONS)
        self.strategy = require_choice("strategy", strategy, distributed.STRATEGIES)
        if mesh is not None and strategy == "single":
            raise ValueError("mesh= spreads the run over devices; give it with strategy='dp' or 'fsdp'")
        self.val_check_interval = _require_interval("val_check_interval", val_check_interval)
        self.limit_val_batches = _require_interval("limit_val_batches", limit_val_batches, allow_zero=True)
        callbacks = _require_callbacks(callbacks)
        if not isinstance(default_root_dir, (str, os.PathLike)):
            raise TypeError(f"default_root_dir must be a str or os.PathLike directory; got {default_root_dir!r} "
                            f"({type(default_root_dir).__name__})")
        enable_progress_bar = require_bool("enable_progress_bar", enable_progress_bar)
        enable_model_summary = require_bool("enable_model_summary", enable_model_summary)

        self.default_root_dir = os.fspath(default_root_dir)
        self.mesh = distributed.make_mesh(strategy) if mesh is None else distributed.check_mesh(mesh)
        self.logger = self._make_logger(logger)
        main = distributed.is_main_process()
        self.callbacks = hooks.with_defaults(callbacks, hooks.default_callbacks(
            logger=self.logger is not None, progress_bar=enable_progress_bar and main))
        self.enable_model_summary = enable_model_summary and main
        #: How the interrupt message says to continue; recipes put their own command line here.
        self.resume_hint = "fit(..., ckpt_path='last')"

        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False
        self.callback_metrics: dict[str, float] = {}
        self.module: ARModule | None = None
        self.optimizer: nnx.Optimizer | None = None
        self.train_data: Any = None
        self.num_training_batches: int | None = None
        #: Set by a callback (an EMA, say) to an ``nnx.State`` of ``nnx.Param`` values that
        #: validation and sampling use instead of the training weights; None: the live ones.
        self.eval_params = None
        self.resumed_step: int | None = None
        #: The signal (SIGINT / SIGTERM) that stopped the last fit early, else None.
        self.interrupted: signal.Signals | None = None
        self._metric_steps: dict[str, int] = {}
        self._hooks = hooks.Hooks(self.callbacks, self.sync_module)
        self._evaluator = Evaluator(self)
        self._loop: FitLoop | None = None
        self._val_data = None
        self._fitting = False
        self._train_state: dict[str, Any] | None = None  # {'model', 'optimizer'} on the device
        self._model_def = None
        self._dirty = False  # the module lags behind the compiled loop's arrays

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
        interrupt_checkpoint = None
        try:
            with StopOnSignal(self._stop_on_signal):
                self.call_hook("setup", "fit")
                resume = checkpointing.restore_run(self, self._loop, ckpt_path) if ckpt_path is not None else (0, False)
                self.call_hook("on_fit_start")
                self._loop.run(train_data, val_data, *resume)
                if self.interrupted is not None:
                    interrupt_checkpoint = checkpointing.save_interrupted_run(self)
                self.call_hook("on_fit_end")
        except BaseException as exc:
            self.call_hook("on_exception", exc)
            raise
        finally:
            self._fitting = False
            self.call_hook("teardown", "fit")  # also waits for ModelCheckpoint's pending writes
            self.sync_module()
            if self.logger is not None:
                self.logger.flush()
        if self.interrupted is not None:
            print(f"artrainer: stopped by {self.interrupted.name} after step {self.global_step} (checkpoint "
                  f"{interrupt_checkpoint}); continue with: {self.resume_hint}", file=sys.stderr)

    def validate(self, module: ARModule, val_data: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Exact (element-weighted) validation metrics of ``module`` over ``val_data``."""
        if not isinstance(module, ARModule):
            raise TypeError(f"module must be an artrainer.ARModule; got {type(module).__name__}")
        check_batches("val_data", val_data)
        if not self._fitting:  # outside fit, read the module's own (possibly user-changed) weights
            self.sync_module()
            self._train_state = None
            self.module, self._model_def = module, nnx.graphdef(module)
        return self.run_validation(val_data)

    def run_validation(self, val_data) -> dict[str, float]:
        """One validation pass of the current weights (``eval_params`` when set)."""
        return self._evaluator.run(self.module, self._model_def, self.eval_model_state(), val_data)

    # ------------------------------------------------------------ the run's state
    @property
    def train_state(self) -> dict[str, Any]:
        """``{'model': State, 'optimizer': State}``: the arrays the compiled step carries
        (placed, sharded under ``dp`` / ``fsdp``); outside a fit, the module's own."""
        if self._train_state is None:
            return {"model": nnx.state(self.module), "optimizer": nnx.state(self.optimizer)}
        return self._train_state

    def set_train_state(self, state: dict[str, Any]) -> None:
        """Replace the run's arrays (after a step or a restore); the module follows lazily."""
        self._train_state, self._dirty = state, True

    @property
    def model_state(self):
        """The live ``nnx.State`` of the model (device arrays), without syncing the module."""
        return self._train_state["model"] if self._train_state is not None else nnx.state(self.module)

    def sync_module(self) -> None:
        """Write the compiled loop's latest arrays back into ``module`` and ``optimizer``."""
        if self._dirty and self._train_state is not None:
            nnx.update(self.module, self._train_state["model"])
            nnx.update(self.optimizer, self._train_state["optimizer"])
            self._dirty = False

    def eval_model_state(self):
        """The model state validation and sampling use: ``eval_params`` over the live state."""
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

    # ------------------------------------------------------- helpers for callbacks
    def call_hook(self, hook: str, *args: Any) -> None:
        """Run ``hook`` on every callback that defines it (see :mod:`artrainer.hooks`)."""
        self._hooks(hook, self, self.module, *args)

    @property
    def is_log_step(self) -> bool:
        """True inside the hooks of a step whose metrics were just read from the device."""
        return self._loop is not None and self._loop.logged_at == self.global_step

    @property
    def validation_due(self) -> bool:
        """True inside ``on_train_batch_end`` of a step that validation will follow."""
        interval = self.val_check_interval
        if self._val_data is None or interval is None or self._loop is None:
            return False
        if isinstance(interval, float):
            every = max(1, round(interval * self.num_training_batches / self.accumulate_grad_batches))
            return (self._loop.progress.batches // self.accumulate_grad_batches) % every == 0
        return self.global_step % interval == 0

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

    def hparams(self, module: ARModule | None = None) -> dict[str, Any]:
        """Trainer settings plus the module's ``hparams`` dict (if it has one), for loggers."""
        module = module if module is not None else self.module
        settings = {name: getattr(self, name) for name in (
            "max_steps", "max_epochs", "log_every_n_steps", "val_check_interval", "limit_val_batches",
            "accumulate_grad_batches", "precision", "seed", "strategy")}
        settings["module"] = type(module).__name__
        settings.update({f"module/{k}": v for k, v in getattr(module, "hparams", {}).items()})
        return settings

    @property
    def skipped_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient (``TerminateOnNaN(skip_bad_steps=True)``)."""
        return 0 if self._loop is None else int(jax.device_get(self._loop.health["skipped"]))

    def nonfinite(self) -> tuple[int, str] | None:
        """``(step, 'loss' | 'grad_norm')`` of the first non-finite value so far, else None."""
        if self._loop is None:
            return None
        health = jax.device_get(self._loop.health)
        bad_step = int(health["step"])
        return None if bad_step < 0 else (bad_step, step.NONFINITE_NAMES[int(health["what"])])

    def check_finite(self) -> None:
        """Raise :class:`DivergenceError` naming the step and metric if the run diverged."""
        bad = self.nonfinite()
        if bad is not None:
            bad_step, what = bad
            skipping = self._skip_nonfinite()
            streak = f" after {skipping} skipped bad steps in a row" if skipping else ""
            raise DivergenceError(
                f"non-finite {what} at step {bad_step}{streak} (NaN or Inf); training stopped and no "
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

        ``arrays``: model, optimizer and the callbacks' ``checkpoint_arrays``. ``meta`` is
        JSON: counters, where the next batch comes from, the host copy of the metric sums
        and every callback's ``state_dict``. Raises :class:`DivergenceError` instead of
        describing a diverged state.
        """
        self.check_finite()
        loop = self._loop
        epoch_done = loop.progress.epoch_done
        meta = {
            "format": CHECKPOINT_FORMAT,
            "global_step": self.global_step,
            "current_epoch": self.current_epoch,
            "next_epoch": self.current_epoch + 1 if epoch_done else self.current_epoch,
            "next_batch": 0 if epoch_done else loop.progress.batches,
            "loader": self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None,
            "train_sums": _host_tree(loop.sums),
            "health": _host_tree(loop.health),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()},
        }
        self.call_hook("on_save_checkpoint", meta)
        return checkpointing.run_arrays(self), meta

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
        train_step = step.make_train_step(
            nnx.graphdef(module), nnx.graphdef(optimizer), seed=self.seed,
            accumulate=self.accumulate_grad_batches, precision=self.precision, state_shardings=shardings,
            skip_nonfinite=self._skip_nonfinite())
        return TrainStepPlan(optimizer, nnx.graphdef(module), state, train_step)

    def place_batch(self, batch, accumulate: int = 1):
        """This process's rows of ``batch`` as global arrays split over the mesh (as given on one device)."""
        if self.mesh is None:
            return batch
        sharding = distributed.batch_sharding(self.mesh, accumulate=accumulate)
        return distributed.place_batch(batch, sharding, accumulate=accumulate)

    def default_checkpoint_dir(self) -> str:
        return os.path.join(self.default_root_dir, "checkpoints")

    # ------------------------------------------------------------------- internals
    def _skip_nonfinite(self) -> int:
        """Bad steps in a row the compiled step skips before stopping; 0: none."""
        return max((cb.skip_nonfinite_steps for cb in self.callbacks), default=0)

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

    def _check_fit_args(self, module, train_data, val_data):
        if not isinstance(module, ARModule):
            raise TypeError(f"module must be an artrainer.ARModule; got {type(module).__name__}")
        for name in ("__call__", "loss_fn"):
            if not callable(getattr(module, name, None)):
                raise TypeError(f"{type(module).__name__} must define {name}()")
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("Trainer needs max_steps or max_epochs to know when fit() ends; "
                             "both are None")
        check_batches("train_data", train_data)
        if val_data is not None:
            check_batches("val_data", val_data)
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
        self.interrupted, self.resumed_step = None, None
        self.callback_metrics, self._metric_steps = {}, {}
        self.num_training_batches = len(train_data) if hasattr(train_data, "__len__") else None
        plan = self.build_train_step(module)
        self.optimizer, self._model_def = plan.optimizer, plan.model_def
        self.set_train_state(plan.state)  # the module should hold the placed arrays too
        self._loop = FitLoop(self, plan.step, plan.model_def)

    def _stop_on_signal(self, sig: signal.Signals) -> None:
        self.interrupted, self.should_stop = sig, True


@dataclasses.dataclass(frozen=True)
class TrainStepPlan:
    """What :meth:`Trainer.build_train_step` returns."""

    optimizer: nnx.Optimizer
    model_def: nnx.GraphDef
    state: dict[str, Any]  # {'model': State, 'optimizer': State}, placed
    step: Any  # jitted (state, sums, health, batch) -> (state, sums, health, outputs)


def _host_tree(tree):
    """A JSON-ready copy of a small device pytree (python ints/floats)."""
    if tree is None:
        return None
    return jax.tree.map(lambda x: np.asarray(x).item(), jax.device_get(tree))


def _refuse_unknown(unknown: dict[str, Any]) -> None:
    allowed = [p for p in inspect.signature(Trainer.__init__).parameters if p not in ("self", "unknown")]
    name = next(iter(unknown))
    hint = difflib.get_close_matches(name, allowed, n=1)
    raise TypeError(f"Trainer got an unknown argument {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" Allowed: {', '.join(allowed)}")


def _require_callbacks(callbacks) -> list[Callback]:
    if isinstance(callbacks, Callback):
        return [callbacks]
    if isinstance(callbacks, (str, bytes, Mapping)) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be an iterable of artrainer.Callback instances (() for none); "
                        f"got {callbacks!r} ({type(callbacks).__name__})")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be artrainer.Callback instances; got {cb!r}")
    return callbacks


def _require_interval(name: str, value, *, allow_zero: bool = False):
    """None, an int count (>= 1, or >= 0 with allow_zero) or a float fraction in (0, 1] ([0, 1])."""
    if isinstance(value, (float, np.floating)):
        return require_real(name, value, minimum=0.0, maximum=1.0, min_open=not allow_zero,
                            why="a fraction", optional=True)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, type(None))):
        raise TypeError(f"{name} must be None, an int count or a float fraction; got {value!r} "
                        f"({type(value).__name__})")
    return require_int(name, value, minimum=0 if allow_zero else 1, why="a count", optional=True)
