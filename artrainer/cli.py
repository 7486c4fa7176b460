"""Command-line flags shared by the recipes: the Trainer, its callbacks, --callback files."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax

from artrainer import distributed
from artrainer.callbacks import GradientClipping, LRWarmup, ModelCheckpoint, load_callback
from artrainer.data import DataLoader
from artrainer.sampling.processors import SamplingConfig
from artrainer.trainer import PRECISIONS, Trainer

#: The SamplingConfig fields a recipe may have flags for (``--top-k`` sets ``top_k``, ...).
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "repetition_penalty")


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    group.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs")
    group.add_argument("--lr", type=float, default=None, help="peak learning rate (module default if unset)")
    group.add_argument("--warmup-steps", type=int, default=0, help="linear LR warmup steps (0: none)")
    group.add_argument("--decay", default="cosine", choices=["constant", "cosine", "linear", "inverse_sqrt"],
                       help="LR decay after warmup")
    group.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this global norm")
    group.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    group.add_argument("--precision", default="fp32", choices=PRECISIONS)
    group.add_argument("--strategy", default="single", choices=distributed.STRATEGIES,
                       help="single device, data parallel, or fully sharded data parallel over all devices")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-host run (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--log-every", type=int, default=50, help="log metrics every N steps")
    group.add_argument("--val-every", type=int, default=None, help="validate every N steps (default: each epoch)")
    group.add_argument("--limit-val-batches", type=int, default=None)
    group.add_argument("--out", default="runs", help="root directory for logs and checkpoints")
    group.add_argument("--ckpt-every", type=int, default=None,
                       help="checkpoint every N steps (default: after each validation / epoch)")
    group.add_argument("--resume", default=None, help="'last', 'best' or a checkpoint directory")
    group.add_argument("--no-progress-bar", action="store_true")
    group.add_argument("--callback", action="append", default=[], metavar="FILE.py:Class[:JSON]",
                       help="add a user callback (repeatable), e.g. callbacks/ema.py:EMA:'{\"decay\": 0.99}'")


def check_flag(args: argparse.Namespace, name: str, allowed: str, ok: Callable[[Any], bool]) -> None:
    """Refuse the value of the flag for ``args.<name>`` unless it is unset (None) or ``ok(value)``.

    The ValueError names the flag, its value and what is ``allowed``, so recipes call this
    on their flags before loading data or training, instead of failing deep inside later.
    """
    value = getattr(args, name)
    if value is not None and not ok(value):
        flag = "--" + name.replace("_", "-")
        raise ValueError(f"{flag} {value!r} is not allowed: {name} must be {allowed}")


def positive_number(value: float) -> bool:
    """For :func:`check_flag`: a finite number > 0 (so neither nan nor inf)."""
    return math.isfinite(value) and value > 0


def check_trainer_arguments(args: argparse.Namespace) -> None:
    """The checks of :func:`add_trainer_arguments`' flags that the Trainer and its callbacks do
    not make themselves (they refuse e.g. ``--max-steps 0`` when they are built)."""
    check_flag(args, "lr", "a finite number > 0", positive_number)


def check_sampling_flags(args: argparse.Namespace) -> SamplingConfig:
    """The SamplingConfig of the recipe's sampling flags (those of ``SAMPLING_FLAGS`` it has).

    Built up front, even where nothing will be sampled, so that a bad value fails at once
    rather than at the first sample, after training has started, or not at all.
    """
    flags = {name: getattr(args, name) for name in SAMPLING_FLAGS if hasattr(args, name)}
    for name, value in flags.items():  # One at a time, so the error names the flag.
        try:
            SamplingConfig.create(**{name: value})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--{name.replace('_', '-')} {value!r} is not allowed: {exc}") from None
    return SamplingConfig.create(**flags)


def start_processes(args: argparse.Namespace) -> None:
    """With ``--distributed``, join the multi-host run; call it before anything touches a device."""
    if args.distributed:
        distributed.initialize()


def train_and_val_loaders(args: argparse.Namespace, train: dict, val: dict) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches and padded, ordered validation batches of ``--batch-size``
    (the global batch); in a multi-host run each process reads its own rows."""
    shards = {"num_shards": jax.process_count(), "shard_index": jax.process_index()}
    return (DataLoader(train, args.batch_size, seed=args.seed, **shards),
            DataLoader(val, args.batch_size, shuffle=False, last_batch="pad", **shards))


def build_trainer(args: argparse.Namespace, extra_callbacks=()) -> Trainer:
    """A Trainer configured from the flags of :func:`add_trainer_arguments`."""
    callbacks = [ModelCheckpoint(every_n_steps=args.ckpt_every,
                                 monitor="val/loss" if args.ckpt_every is None and args.val_every else None)]
    if args.warmup_steps:
        decay_steps = args.max_steps if args.decay in ("cosine", "linear") else None
        callbacks.append(LRWarmup(args.warmup_steps, decay=args.decay, decay_steps=decay_steps))
    if args.clip_norm is not None:  # GradientClipping refuses 0 and nan rather than ignoring them.
        callbacks.append(GradientClipping(args.clip_norm))
    callbacks += [load_callback(spec) for spec in args.callback]
    callbacks += list(extra_callbacks)
    return Trainer(max_steps=args.max_steps, max_epochs=args.max_epochs, callbacks=callbacks,
                   log_every_n_steps=args.log_every, val_check_interval=args.val_every,
                   limit_val_batches=args.limit_val_batches, accumulate_grad_batches=args.accumulate,
                   precision=args.precision, seed=args.seed, default_root_dir=args.out, strategy=args.strategy,
                   enable_progress_bar=not args.no_progress_bar)


def fit_and_report(args: argparse.Namespace, model, train_data, val_data, extra_callbacks=()) -> int:
    """Fit ``model`` with the flags' Trainer (resuming from ``--resume``), then print exact val metrics."""
    if args.lr is not None:
        model.learning_rate = args.lr
    trainer = build_trainer(args, extra_callbacks)
    trainer.fit(model, train_data, val_data, ckpt_path=args.resume)
    if trainer.interrupted is not None:  # checkpointed; the shell's code for "stopped by a signal"
        return 128 + int(trainer.interrupted)
    metrics = trainer.validate(model, val_data)
    print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return 0


RUN_CONFIG = "model_config.json"


def write_run_config(out: str, config: dict) -> None:
    """The model's constructor config, next to its checkpoints, for the sampling modes."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RUN_CONFIG), "w") as file:
        json.dump(config, file, indent=2)


def read_run_config(out: str) -> dict:
    path = os.path.join(out, RUN_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sampling needs a trained run in --out {out!r}: no {path}")
    with open(path) as file:
        return json.load(file)
