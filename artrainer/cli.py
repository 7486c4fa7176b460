"""What the recipes share on the command line: flags, configs, the run directory, errors.

Parsing is jsonargparse's (the library under Lightning CLI): ``--config run.yaml`` sets any
flag, ``--print-config`` prints the resolved configuration, and ``--help`` shows every
default. Flags carry their Lightning / Hugging Face names as aliases. A user's mistake ends
in one line, ``error: <message>``, and exit status 2 (``--debug`` or ``ARTRAINER_DEBUG=1``
shows the traceback instead).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jsonargparse
import yaml

from artrainer.run_directory import RunDirectory

#: The SamplingConfig fields a recipe may have flags for (``--top-k`` sets ``top_k``, ...).
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "repetition_penalty")
RUN_CONFIG = "model_config.json"
RESOLVED_CONFIG = "config.yaml"
#: Flags of one invocation, not of the run: left out of the config.yaml a run writes.
INVOCATION_FLAGS = ("resume", "overwrite", "debug", "config", "print_config")
#: Exceptions that mean "the user asked for something that cannot be done" (the checkpoint
#: errors and UnicodeDecodeError are ValueErrors; FileNotFoundError is an OSError).
USER_ERRORS = (ValueError, TypeError, OSError, argparse.ArgumentError)


class _HelpFormatter(jsonargparse.DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default (jsonargparse), with the recipe's docstring kept as written."""


def recipe_parser(doc: str) -> jsonargparse.ArgumentParser:
    """A parser that raises on bad flags (so :func:`run_recipe` can print one line) and reads
    ``--config FILE`` (YAML)."""
    parser = jsonargparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter,
                                         exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile,
                        help="YAML file of flag values (keys as in --print-config); later flags override it")
    return parser


def add_trainer_arguments(parser, *, default_out: str) -> None:
    """The Trainer's flags; each listed name after the first is a Lightning / Hugging Face alias."""
    from artrainer import distributed
    from artrainer.callbacks.lr_warmup import DECAYS
    from artrainer.trainer import PRECISIONS

    group = parser.add_argument_group("training")
    add = group.add_argument
    add("--max-steps", type=int, default=None, help="stop after this many optimizer steps (recipe default "
        "when neither this nor --max-epochs is given)")
    add("--max-epochs", "--num-train-epochs", type=int, default=None, help="stop after this many epochs")
    add("--lr", "--learning-rate", type=float, default=None, help="peak learning rate (the model's default if unset)")
    add("--warmup-steps", type=int, default=0, help="linear LR warmup steps (0: none)")
    add("--decay", "--lr-scheduler-type", default="cosine", choices=DECAYS,
        help="LR decay after warmup, to 0 at --max-steps (cosine, linear); applies with or without warmup")
    add("--clip-norm", "--gradient-clip-val", "--max-grad-norm", type=float, default=None,
        help="clip gradients to this global norm (unset: no clipping)")
    add("--accumulate", "--accumulate-grad-batches", "--gradient-accumulation-steps", type=int, default=1,
        help="micro-batches per optimizer step")
    add("--precision", default="fp32", choices=PRECISIONS, help="fp32, or bf16 compute with fp32 weights")
    add("--strategy", default="single", choices=distributed.STRATEGIES,
        help="single device, data parallel, or fully sharded data parallel over all devices")
    add("--distributed", action="store_true",
        help="join a multi-host run (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    add("--seed", type=int, default=0, help="seed of the initial weights, the data order and dropout")
    add("--log-every", "--log-every-n-steps", "--logging-steps", type=int, default=50,
        help="log training metrics every N steps")
    add("--val-every", "--val-check-interval", "--eval-steps", type=int, default=None,
        help="validate every N steps (unset: at each epoch end)")
    add("--limit-val-batches", type=int, default=None, help="validate on at most N batches (unset: all)")
    add("--out", "--output-dir", "--default-root-dir", default=default_out,
        help="the run directory: logs, checkpoints, configs, samples")
    add("--overwrite", "--overwrite-output-dir", action="store_true",
        help="start a fresh run in an --out that holds one, deleting that run's checkpoints and logs")
    add("--ckpt-every", "--save-steps", "--every-n-train-steps", type=int, default=None,
        help="checkpoint every N steps (unset: after each validation / epoch)")
    add("--resume", "--ckpt-path", "--resume-from-checkpoint", default=None,
        help="continue the run in --out: 'last', 'best' or a checkpoint directory")
    add("--no-progress-bar", "--disable-tqdm", action="store_true", help="no tqdm progress bar")
    add("--callback", action="append", default=[], metavar="FILE.py:Class[:JSON]",
        help="add a user callback (repeatable), e.g. callbacks/ema.py:EMA:'{\"decay\": 0.99}'")
    add("--debug", action="store_true", help="show the full traceback of an error (also ARTRAINER_DEBUG=1)")


def parse_recipe_args(parser, argv: Sequence[str], *, default_max_steps: int) -> argparse.Namespace:
    """Parse ``argv`` (``--print-config`` prints the resolved flags and exits) and check the
    Trainer flags no constructor checks."""
    argv = ["--print_config" if arg == "--print-config" else arg for arg in argv]
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        raise argparse.ArgumentError(None, _with_suggestion(str(exc), parser)) from None
    args = argparse.Namespace(**{k: v for k, v in args.as_dict().items() if k not in ("config", "print_config")})
    if args.max_steps is None and args.max_epochs is None:
        args.max_steps = default_max_steps
    check_flag(args, "lr", "a finite number > 0", positive_number)
    check_flag(args, "max_steps", "an int >= 1", lambda n: n >= 1)
    check_flag(args, "warmup_steps", "an int >= 0", lambda n: n >= 0)
    if args.decay in ("cosine", "linear"):
        if args.max_steps is None:
            raise ValueError(f"--decay {args.decay} decays to 0 at --max-steps, and only --max-epochs is given; "
                             "give --max-steps too, or --decay constant")
        if args.warmup_steps >= args.max_steps:
            raise ValueError(f"--warmup-steps {args.warmup_steps} must be below --max-steps {args.max_steps} "
                             f"for --decay {args.decay} to have steps to decay over")
    if args.resume is not None and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite deletes it; give one of them")
    return args


def _with_suggestion(message: str, parser) -> str:
    """argparse's message, one line, with "did you mean" for unknown flags and config keys."""
    message = " ".join(message.split())
    flags = sorted({opt for action in parser._actions for opt in action.option_strings})
    unknown = re.match(r"unrecognized arguments: (\S+)", message)
    if unknown:
        hint = difflib.get_close_matches(unknown.group(1).split("=")[0], flags, n=1)
        return message + (f"; did you mean {hint[0]}?" if hint else "; see --help")
    typed = re.match(r'Parser key "(\w+)": Expected a <class \'(\w+)\'>\. Got value: (.*)', message)
    if typed:
        name, kind, value = typed.groups()
        return f"--{name.replace('_', '-')} expects {'an' if kind[0] in 'aeiou' else 'a'} {kind}; got {value!r}"
    key = re.search(r"Option '([^']+)' is not accepted", message)
    if key:
        keys = sorted({action.dest for action in parser._actions})
        hint = difflib.get_close_matches(key.group(1), keys, n=1)
        return f"--config: unknown key {key.group(1)!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
    return message


def run_recipe(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main(argv)``: a user's mistake prints ``error: ...`` and returns 2.

    ``--debug`` (or ``ARTRAINER_DEBUG=1``) lets the exception through with its traceback.
    A second Ctrl-C (the first one checkpoints and stops cleanly) ends with exit 130.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("ARTRAINER_DEBUG", "") not in ("", "0")
    try:
        return main(argv)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted again; the checkpoints already on disk are intact", file=sys.stderr)
        return 130


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


def check_sampling_flags(args: argparse.Namespace):
    """The SamplingConfig of the recipe's sampling flags (those of ``SAMPLING_FLAGS`` it has).

    Built up front, even where nothing will be sampled, so that a bad value fails at once
    rather than at the first sample, after training has started, or not at all.
    """
    from artrainer.sampling.processors import SamplingConfig

    flags = {name: getattr(args, name) for name in SAMPLING_FLAGS if hasattr(args, name)}
    for name, value in flags.items():  # One at a time, so the error names the flag.
        try:
            SamplingConfig.create(**{name: value})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--{name.replace('_', '-')} {value!r} is not allowed: {exc}") from None
    return SamplingConfig.create(**flags)


def check_enough_examples(count: int, args: argparse.Namespace, what: str, remedy: str) -> None:
    """A training set smaller than one batch is named in flag terms: what to change."""
    if count < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} is more than the {count} {what}; "
                         f"lower --batch-size, or {remedy}")


def start_processes(args: argparse.Namespace) -> None:
    """With ``--distributed``, join the multi-host run; call it before anything touches a device."""
    from artrainer import distributed

    if args.distributed:
        distributed.initialize()


def train_and_val_loaders(args: argparse.Namespace, train: dict, val: dict):
    """Shuffled training batches and padded, ordered validation batches of ``--batch-size``
    (the global batch); in a multi-host run each process reads its own rows."""
    import jax

    from artrainer.data import DataLoader

    shards = {"num_shards": jax.process_count(), "shard_index": jax.process_index()}
    return (DataLoader(train, args.batch_size, seed=args.seed, **shards),
            DataLoader(val, args.batch_size, shuffle=False, last_batch="pad", **shards))


def resume_command(script: str, argv: Sequence[str]) -> str:
    """The shell command that continues this invocation: its flags, ``--resume last``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume", "--ckpt-path", "--resume-from-checkpoint"):
            skip = "=" not in arg
            continue
        if name in ("--overwrite", "--overwrite-output-dir"):
            continue
        kept.append(arg)
    return shlex.join(["python", os.path.relpath(script), *kept, "--resume", "last"])


class TrainingRun:
    """One training invocation of a recipe, set up in the order that keeps runs safe.

    Built right after parsing, before any data is loaded: the callbacks (``--callback``
    files included) and the Trainer are constructed, so every bad value fails first; then
    the run directory is claimed (refused if it holds a run and neither ``--resume`` nor
    ``--overwrite`` was given, or if another process trains into it) until the ``with``
    block ends. :meth:`save_configs` compares the run's files with those already there
    before it writes any.
    """

    def __init__(self, args: argparse.Namespace, *, script: str, argv: Sequence[str],
                 extra_callbacks: Sequence[Any] = ()):
        from artrainer.callbacks import GradientClipping, LRWarmup, ModelCheckpoint, load_callback
        from artrainer.trainer import Trainer

        self.args = args
        callbacks = [ModelCheckpoint(every_n_steps=args.ckpt_every,
                                     monitor="val/loss" if args.ckpt_every is None and args.val_every else None)]
        if args.warmup_steps or args.decay != "constant":
            decay_steps = args.max_steps if args.decay in ("cosine", "linear") else None
            callbacks.append(LRWarmup(args.warmup_steps, decay=args.decay, decay_steps=decay_steps))
        if args.clip_norm is not None:  # GradientClipping refuses 0 and nan rather than ignoring them.
            callbacks.append(GradientClipping(args.clip_norm))
        callbacks += [load_callback(spec) for spec in args.callback]
        callbacks += list(extra_callbacks)
        self.trainer = Trainer(
            max_steps=args.max_steps, max_epochs=args.max_epochs, callbacks=callbacks,
            log_every_n_steps=args.log_every, val_check_interval=args.val_every,
            limit_val_batches=args.limit_val_batches, accumulate_grad_batches=args.accumulate,
            precision=args.precision, seed=args.seed, default_root_dir=args.out, strategy=args.strategy,
            enable_progress_bar=not args.no_progress_bar)
        self.trainer.resume_hint = resume_command(script, argv)
        self.directory = RunDirectory(args.out)
        self.directory.claim(resume=args.resume, overwrite=args.overwrite)

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc_info) -> None:
        self.directory.release()

    def save_configs(self, model_config: dict, files: dict[str, str] | None = None) -> None:
        """Check, then write, the run's files: ``model_config.json``, ``files`` (name -> JSON
        text, e.g. the tokenizer) and the resolved flags (``config.yaml``).

        When resuming, each file already there must match what this run would write; a
        mismatch raises before any of them changes.
        """
        files = files or {}
        if self.args.resume is not None:
            self.directory.check_json(RUN_CONFIG, model_config, what="model configuration")
            for name, text in files.items():
                self.directory.check_json(name, json.loads(text), what=name.replace(".json", ""))
        self.directory.write_json(RUN_CONFIG, model_config)
        for name, text in files.items():
            self.directory.write_text(name, text)
        resolved = {k: v for k, v in vars(self.args).items() if k not in INVOCATION_FLAGS}
        self.directory.write_text(RESOLVED_CONFIG, yaml.safe_dump(resolved, sort_keys=False))

    def fit(self, model, train_data, val_data) -> int:
        """Fit ``model`` (resuming from ``--resume``), then print the exact validation metrics."""
        if self.args.lr is not None:
            model.learning_rate = self.args.lr
        trainer = self.trainer
        trainer.fit(model, train_data, val_data, ckpt_path=self.args.resume)
        if trainer.interrupted is not None:  # checkpointed; the shell's code for "stopped by a signal"
            return 128 + int(trainer.interrupted)
        metrics = trainer.validate(model, val_data)
        print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        return 0


def read_run_config(out: str) -> dict:
    path = os.path.join(out, RUN_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--out {out} holds no trained run (no {RUN_CONFIG}); train into it first, "
                                "or point --out at a run directory")
    with open(path) as file:
        return json.load(file)

