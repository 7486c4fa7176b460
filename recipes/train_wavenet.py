"""Train a WaveNet on speech at 8 kHz, or generate audio from a trained one.

    python recipes/train_wavenet.py --max-steps 2000                           # FSDD from ../shared/data/fsdd
    python recipes/train_wavenet.py --conditional --max-steps 2000 --out runs/fsdd   # conditioned on the digit
    python recipes/train_wavenet.py --wav-folder path/to/wavs --max-steps 2000
    python recipes/train_wavenet.py --generate --out runs/fsdd --n-samples 4 --seconds 1
    python recipes/train_wavenet.py --generate --digit 7 --out runs/fsdd              # a conditional run
    python recipes/train_wavenet.py --generate --prompt-wav start.wav --out runs/fsdd # continue a recording

FSDD recordings are split by speaker: --val-speakers are held out for validation.
Training (into --out, default runs/wavenet) logs bits/dim and audio samples to
TensorBoard, writes the samples as .wav files (samples/ under --out), checkpoints, and
saves model_config.json for --generate and config.yaml (every resolved flag).
--generate writes a new numbered set of wavs into --out on every call.
"""

from __future__ import annotations

import json
import math
import os
import sys

from flax import nnx

from artrainer.callbacks import load_callback
from artrainer.checkpointing import load_weights
from artrainer.cli import (TrainingRun, add_trainer_arguments, check_enough_examples, check_flag,
                           check_sampling_flags, parse_recipe_args, read_run_config, recipe_parser, run_recipe,
                           start_processes, train_and_val_loaders)
from artrainer.data.audio import load_fsdd, load_wav_folder, mu_law_encode, read_wav, split_by_speaker, write_wav
from artrainer.data.images import split_train_val
from artrainer.models import WaveNet, WaveNetConfig
from artrainer.run_directory import next_free_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FSDD = os.path.join(ROOT, "..", "shared", "data", "fsdd")
SAMPLE_WRITER = os.path.join(ROOT, "callbacks", "sample_writer.py")
MAX_CLIP_SAMPLES = 2**24  # per generated clip: 35 minutes at 8 kHz


def make_parser():
    parser = recipe_parser(__doc__)
    data = parser.add_argument_group("data (default: the Free Spoken Digit Dataset in ../shared/data/fsdd)")
    data.add_argument("--fsdd-dir", default=DEFAULT_FSDD, help="the FSDD recordings folder")
    data.add_argument("--wav-folder", default=None, help="any folder of wavs (class subfolders give labels)")
    data.add_argument("--sample-rate", type=int, default=8000, help="audio is resampled to this rate (Hz)")
    data.add_argument("--window", type=int, default=4096, help="samples per training window")
    data.add_argument("--val-speakers", default="theo", help="FSDD speakers held out, comma-separated")
    data.add_argument("--n-val", type=int, default=200, help="--wav-folder: windows held out for validation")
    data.add_argument("--batch-size", type=int, default=8, help="windows per step (the global batch)")
    model = parser.add_argument_group("model")
    model.add_argument("--num-layers", type=int, default=20, help="dilated layers in all")
    model.add_argument("--num-stacks", type=int, default=2, help="stacks the layers are split into")
    model.add_argument("--residual-channels", type=int, default=32, help="channels of the residual stream")
    model.add_argument("--dilation-channels", type=int, default=32, help="channels of each gate")
    model.add_argument("--skip-channels", type=int, default=128, help="channels of the summed skips")
    model.add_argument("--conditional", action="store_true", help="condition on the labels (FSDD: the digit)")
    modes = parser.add_argument_group("generation (from the checkpoint in --out)")
    modes.add_argument("--generate", action="store_true", help="write generated clips as .wav")
    modes.add_argument("--digit", type=int, default=None, help="class label of a --conditional run")
    modes.add_argument("--prompt-wav", default=None, help="continue this recording")
    modes.add_argument("--seconds", type=float, default=1.0, help="length of each generated clip")
    modes.add_argument("--n-samples", "--num-return-sequences", type=int, default=2, help="clips to generate")
    modes.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    modes.add_argument("--sample-every", type=int, default=1000, help="write audio samples every N steps")
    add_trainer_arguments(parser, default_out=os.path.join("runs", "wavenet"))
    return parser


def parse_args(parser, argv):
    args = parse_recipe_args(parser, argv, default_max_steps=2000)
    check_sampling_flags(args)
    check_flag(args, "sample_rate", "an int >= 1 (Hz)", lambda rate: rate >= 1)
    check_flag(args, "n_samples", "an int >= 1", lambda n: n >= 1)
    return args


def clip_samples(args, sample_rate: int) -> int:
    """Samples per generated clip of ``--seconds`` at ``sample_rate``; checked before any work."""
    check_flag(args, "seconds", f"a number > 0 giving 1 to {MAX_CLIP_SAMPLES} samples at {sample_rate} Hz",
               lambda seconds: math.isfinite(seconds) and 1 <= seconds * sample_rate <= MAX_CLIP_SAMPLES)
    return int(args.seconds * sample_rate)


def load_audio(args) -> tuple[dict, dict]:
    """(train, val) mu-law windows: FSDD split by speaker, or a wav folder split at random."""
    if args.wav_folder:
        data = load_wav_folder(args.wav_folder, sample_rate=args.sample_rate, length=args.window)
        data.pop("classes", None)  # one name per class, not per window
        n = len(data["waveform"])
        check_flag(args, "n_val", f"an int in [1, {n - 1}]: the wav folder gives {n} windows and at least one "
                   "must stay for training", lambda n_val: 1 <= n_val < n)
        return split_train_val(data, n - args.n_val, args.n_val, seed=args.seed)
    data = load_fsdd(args.fsdd_dir, sample_rate=args.sample_rate, length=args.window)
    return split_by_speaker(data, args.val_speakers.split(","))


def build_model(config: dict, seed: int) -> WaveNet:
    """The model of a run's ``model_config.json``: WaveNetConfig fields (those left out, e.g.
    ``quantization_channels``, keep their defaults)."""
    return WaveNet(config=WaveNetConfig(**config), rngs=nnx.Rngs(seed))


def train(args, argv) -> int:
    max_length = clip_samples(args, args.sample_rate)
    writer_kwargs = {"every_n_steps": args.sample_every, "n_samples": args.n_samples,
                     "generate_kwargs": {"max_length": max_length, "temperature": args.temperature}}
    writer = load_callback(f"{SAMPLE_WRITER}:SampleWriter:{json.dumps(writer_kwargs)}")
    with TrainingRun(args, script=__file__, argv=argv, extra_callbacks=[writer]) as run:
        train_data, val_data = load_audio(args)
        check_enough_examples(len(train_data["waveform"]), args, f"training windows of --window {args.window} "
                              "samples", "--window, or give more audio")
        num_classes = None
        if args.conditional:
            if "labels" not in train_data:
                raise ValueError("--conditional needs labels, and this audio set has none "
                                 "(put the wavs in one subfolder per class)")
            num_classes = int(max(train_data["labels"].max(), val_data["labels"].max())) + 1
            writer.generate_kwargs["class_label"] = list(range(args.n_samples))
        config = {"num_layers": args.num_layers, "num_stacks": args.num_stacks,
                  "residual_channels": args.residual_channels, "dilation_channels": args.dilation_channels,
                  "skip_channels": args.skip_channels, "num_classes": num_classes, "sample_rate": args.sample_rate}
        model = build_model(config, args.seed)  # before writing: a bad model flag fails here
        run.save_configs(config)
        keep = ["waveform", "mask"] + (["labels"] if num_classes else [])
        train_loader, val_loader = train_and_val_loaders(args, {k: train_data[k] for k in keep},
                                                         {k: val_data[k] for k in keep})
        return run.fit(model, train_loader, val_loader)


def generate(args) -> int:
    config = read_run_config(args.out)
    if args.digit is not None and config["num_classes"] is None:
        raise ValueError(f"--digit needs a class-conditional run, and the run in --out {args.out} was trained "
                         "without --conditional; train one with --conditional")
    length = clip_samples(args, config["sample_rate"])
    model = build_model(config, args.seed)
    step = load_weights(model, os.path.join(args.out, "checkpoints"))
    prompt, name = None, f"sample_step{step}"
    if args.prompt_wav:
        audio, _ = read_wav(args.prompt_wav, sample_rate=model.sample_rate)
        prompt = mu_law_encode(audio, model.quantization_channels)
        name = f"continued_step{step}"
    if args.digit is not None:
        name = f"digit{args.digit}_step{step}"
    length += 0 if prompt is None else len(prompt)
    codes = model.generate(args.n_samples, length, args.temperature, rngs=nnx.Rngs(sample=args.seed),
                           prompt=prompt, class_label=args.digit)
    stem = next_free_name(args.out, name, "")
    for i, clip in enumerate(model.to_audio(codes)):
        path = f"{stem}_{i}.wav"
        write_wav(path, clip, model.sample_rate)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _main(argv) -> int:
    parser = make_parser()
    args = parse_args(parser, argv)
    start_processes(args)
    return generate(args) if args.generate else train(args, argv)


def main(argv=None) -> int:
    return run_recipe(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
