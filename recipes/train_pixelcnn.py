"""Train a PixelCNN on images, or sample / inpaint from a trained one.

    python recipes/train_pixelcnn.py --max-steps 3000                      # MNIST from ../shared/data/mnist
    python recipes/train_pixelcnn.py --gated --conditional --max-steps 3000 --out runs/mnist
    python recipes/train_pixelcnn.py --image-folder path/to/classes --max-steps 3000 --out runs/folder
    python recipes/train_pixelcnn.py --generate --out runs/mnist --n-samples 16 --temperature 0.9
    python recipes/train_pixelcnn.py --generate --class-label 7 --out runs/mnist    # class-conditional
    python recipes/train_pixelcnn.py --inpaint --out runs/mnist                     # bottom halves of val images

Training (into --out, default runs/pixelcnn) logs bits/dim and sample grids to
TensorBoard, writes sample grids as PNG (samples/ under --out), checkpoints, and saves
model_config.json for the sampling modes and config.yaml (every resolved flag). Each
sampling call writes a new numbered PNG into --out; the inpainting picture shows, per
row, the original, the part kept (unknown pixels grey) and the completions.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from flax import nnx
from PIL import Image

from artrainer.callbacks import load_callback
from artrainer.checkpointing import load_weights
from artrainer.cli import (TrainingRun, add_trainer_arguments, check_enough_examples, check_flag, check_sampling_flags,
                           parse_recipe_args, read_run_config, recipe_parser, run_recipe, start_processes,
                           train_and_val_loaders)
from artrainer.data.images import (from_hf_dataset, load_image_folder, load_mnist, load_npz,
                                   split_train_val)
from artrainer.loggers import image_grid
from artrainer.models import PixelCNN, PixelCNNConfig
from artrainer.run_directory import next_free_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")
SAMPLE_WRITER = os.path.join(ROOT, "callbacks", "sample_writer.py")


def make_parser():
    parser = recipe_parser(__doc__)
    data = parser.add_argument_group("data (default: the MNIST files in ../shared/data/mnist)")
    data.add_argument("--mnist-dir", default=DEFAULT_MNIST, help="a folder with MNIST's IDX files")
    data.add_argument("--npz", default=None, help="an .npz with 'images' [N, H, W, C] uint8 (and 'labels')")
    data.add_argument("--image-folder", default=None, help="a folder of class subfolders of images")
    data.add_argument("--hf-dataset", default=None, help="a saved Hugging Face image dataset (load_from_disk)")
    data.add_argument("--n-train", type=int, default=9000, help="training images")
    data.add_argument("--n-val", type=int, default=1000, help="validation images (also what --inpaint completes)")
    data.add_argument("--batch-size", type=int, default=32, help="images per step (the global batch)")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-channels", type=int, default=64, help="channels of every masked layer")
    model.add_argument("--num-layers", type=int, default=5, help="masked (or gated) layers")
    model.add_argument("--num-residual-blocks", type=int, default=3, help="residual blocks after them")
    model.add_argument("--kernel-size", type=int, default=7, help="odd size of the masked kernels")
    model.add_argument("--gated", action="store_true", help="gated PixelCNN (vertical + horizontal stacks)")
    model.add_argument("--output", choices=["categorical", "logistic_mixture"], default="categorical",
                       help="256-way softmax, or PixelCNN++'s discretized logistic mixture")
    model.add_argument("--num-mixtures", type=int, default=5, help="components of the logistic mixture")
    model.add_argument("--conditional", action="store_true", help="condition on the class labels")
    modes = parser.add_argument_group("sampling modes (from the checkpoint in --out)")
    modes.add_argument("--generate", action="store_true", help="draw a grid of samples")
    modes.add_argument("--class-label", type=int, default=None, help="draw samples of this class (a --conditional run)")
    modes.add_argument("--inpaint", action="store_true", help="complete the bottom halves of validation images")
    modes.add_argument("--completions", type=int, default=3, help="--inpaint: completions per image")
    modes.add_argument("--n-samples", "--num-return-sequences", type=int, default=16,
                       help="samples to draw (--inpaint: images to complete)")
    modes.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    modes.add_argument("--sample-every", type=int, default=500, help="write sample grids every N steps")
    add_trainer_arguments(parser, default_out=os.path.join("runs", "pixelcnn"))
    return parser


def parse_args(parser, argv):
    args = parse_recipe_args(parser, argv, default_max_steps=3000)
    check_sampling_flags(args)
    for name in ("n_samples", "completions"):
        check_flag(args, name, "an int >= 1", lambda n: n >= 1)
    return args


def load_images(args) -> dict:
    if args.npz:
        return load_npz(args.npz)
    if args.image_folder:
        return load_image_folder(args.image_folder)
    if args.hf_dataset:
        import datasets
        return from_hf_dataset(datasets.load_from_disk(args.hf_dataset))
    return load_mnist(args.mnist_dir)


def build_model(config: dict, seed: int) -> PixelCNN:
    """The model of a run's ``model_config.json``: PixelCNNConfig fields (those left out keep their defaults)."""
    return PixelCNN(config=PixelCNNConfig(**config), rngs=nnx.Rngs(seed))


def train(args, argv) -> int:
    writer_kwargs = {"every_n_steps": args.sample_every, "n_samples": args.n_samples,
                     "generate_kwargs": {"temperature": args.temperature}}
    writer = load_callback(f"{SAMPLE_WRITER}:SampleWriter:{json.dumps(writer_kwargs)}")
    with TrainingRun(args, script=__file__, argv=argv, extra_callbacks=[writer]) as run:
        data = load_images(args)
        train_data, val_data = split_train_val(data, args.n_train, args.n_val, seed=args.seed)
        check_enough_examples(len(train_data["images"]), args, "training images (--n-train)",
                              "raise --n-train")
        num_classes = int(data["labels"].max()) + 1 if args.conditional and "labels" in data else None
        if args.conditional and num_classes is None:
            raise ValueError("--conditional needs labels, and this image set has none")
        config = {"image_shape": list(data["images"].shape[1:]), "num_layers": args.num_layers,
                  "hidden_channels": args.hidden_channels, "num_residual_blocks": args.num_residual_blocks,
                  "kernel_size": args.kernel_size, "gated": args.gated, "output": args.output,
                  "num_mixtures": args.num_mixtures, "num_classes": num_classes}
        model = build_model(config, args.seed)  # before writing: a bad model flag fails here
        run.save_configs(config)
        keep = ["images"] + (["labels"] if num_classes else [])
        train_loader, val_loader = train_and_val_loaders(args, {k: train_data[k] for k in keep},
                                                         {k: val_data[k] for k in keep})
        return run.fit(model, train_loader, val_loader)


def inpaint_picture(model, args, rngs) -> np.ndarray:
    """Rows of [original, what is kept (unknown pixels grey), completions...] for
    ``--n-samples`` validation images, ``--completions`` each."""
    _, val_data = split_train_val(load_images(args), args.n_train, args.n_val, seed=args.seed)
    if args.n_samples > len(val_data["images"]):
        raise ValueError(f"--n-samples {args.n_samples} is more than the {len(val_data['images'])} validation "
                         "images (--n-val) that --inpaint completes")
    originals = val_data["images"][:args.n_samples]
    mask = np.zeros(originals.shape[1:], np.int32)
    mask[: originals.shape[1] // 2] = 1  # keep the top half, sample the bottom
    repeated = np.repeat(originals, args.completions, axis=0)
    completions = np.asarray(model.inpaint(repeated, np.broadcast_to(mask, repeated.shape), len(repeated),
                                           args.temperature, rngs=rngs), np.uint8)
    kept = np.where(mask == 1, originals, 128).astype(np.uint8)
    tiles = np.concatenate([originals[:, None], kept[:, None],
                            completions.reshape(len(originals), args.completions, *originals.shape[1:])], axis=1)
    return image_grid(tiles.reshape(-1, *originals.shape[1:]), ncol=2 + args.completions)


def sample(args) -> int:
    config = read_run_config(args.out)
    if args.class_label is not None and config["num_classes"] is None:
        raise ValueError(f"--class-label needs a class-conditional run, and the run in --out {args.out} was "
                         "trained without --conditional; train one with --conditional")
    model = build_model(config, args.seed)
    step = load_weights(model, os.path.join(args.out, "checkpoints"))
    rngs = nnx.Rngs(sample=args.seed)
    if args.inpaint:
        grid, name = inpaint_picture(model, args, rngs), "inpaint"
    else:
        if args.class_label is not None:
            samples = model.generate_conditional(args.class_label, args.n_samples, rngs=rngs,
                                                 temperature=args.temperature)
            name = f"class_{args.class_label}"
        else:
            samples, name = model.generate(args.n_samples, args.temperature, rngs=rngs), "samples"
        grid = image_grid(np.asarray(samples, np.uint8))
    path = next_free_name(args.out, f"{name}_step{step}", ".png")
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _main(argv) -> int:
    parser = make_parser()
    args = parse_args(parser, argv)
    start_processes(args)
    return sample(args) if (args.generate or args.inpaint or args.class_label is not None) else train(args, argv)


def main(argv=None) -> int:
    return run_recipe(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
