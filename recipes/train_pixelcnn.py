"""Train a PixelCNN on images, or sample / inpaint from a trained one.

    python recipes/train_pixelcnn.py --max-steps 3000                      # MNIST from ../shared/data/mnist
    python recipes/train_pixelcnn.py --gated --conditional --max-steps 3000 --out runs/mnist
    python recipes/train_pixelcnn.py --image-folder path/to/classes --max-steps 3000
    python recipes/train_pixelcnn.py --generate --out runs/mnist --n-samples 16 --temperature 0.9
    python recipes/train_pixelcnn.py --generate --class-label 7 --out runs/mnist    # class-conditional
    python recipes/train_pixelcnn.py --inpaint --out runs/mnist                     # bottom halves of val images

Training logs bits/dim and sample grids to TensorBoard, writes sample grids as PNG
(samples/ under --out), checkpoints, and saves model_config.json for the sampling modes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from flax import nnx
from PIL import Image

from artrainer.callbacks import load_callback
from artrainer.checkpointing import load_weights
from artrainer.cli import (add_trainer_arguments, check_sampling_flags, check_trainer_arguments, fit_and_report,
                           read_run_config, start_processes, train_and_val_loaders, write_run_config)
from artrainer.loggers import image_grid
from artrainer.data.images import (from_hf_dataset, load_image_folder, load_mnist, load_npz,
                                   split_train_val)
from artrainer.models import PixelCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")
SAMPLE_WRITER = os.path.join(ROOT, "callbacks", "sample_writer.py")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (default: the MNIST files in ../shared/data/mnist)")
    data.add_argument("--mnist-dir", default=DEFAULT_MNIST)
    data.add_argument("--npz", default=None, help="an .npz with 'images' [N, H, W, C] uint8 (and 'labels')")
    data.add_argument("--image-folder", default=None, help="a folder of class subfolders of images")
    data.add_argument("--hf-dataset", default=None, help="a saved Hugging Face image dataset (load_from_disk)")
    data.add_argument("--n-train", type=int, default=9000)
    data.add_argument("--n-val", type=int, default=1000)
    data.add_argument("--batch-size", type=int, default=32)
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-channels", type=int, default=64)
    model.add_argument("--num-layers", type=int, default=5)
    model.add_argument("--num-residual-blocks", type=int, default=3)
    model.add_argument("--kernel-size", type=int, default=7)
    model.add_argument("--gated", action="store_true", help="gated PixelCNN (vertical + horizontal stacks)")
    model.add_argument("--output", choices=["categorical", "logistic_mixture"], default="categorical")
    model.add_argument("--num-mixtures", type=int, default=5)
    model.add_argument("--conditional", action="store_true", help="condition on the class labels")
    modes = parser.add_argument_group("sampling modes (from the checkpoint in --out)")
    modes.add_argument("--generate", action="store_true")
    modes.add_argument("--class-label", type=int, default=None, help="with --generate: sample this class")
    modes.add_argument("--inpaint", action="store_true", help="complete the bottom halves of validation images")
    modes.add_argument("--n-samples", type=int, default=16)
    modes.add_argument("--temperature", type=float, default=1.0)
    modes.add_argument("--sample-every", type=int, default=500, help="write sample grids every N steps")
    add_trainer_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_steps is None and args.max_epochs is None:
        args.max_steps = 3000
    check_trainer_arguments(args)
    check_sampling_flags(args)
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
    return PixelCNN(tuple(config["image_shape"]), num_layers=config["num_layers"],
                    hidden_channels=config["hidden_channels"], num_residual_blocks=config["num_residual_blocks"],
                    kernel_size=config["kernel_size"], gated=config["gated"], output=config["output"],
                    num_mixtures=config["num_mixtures"], num_classes=config["num_classes"], rngs=nnx.Rngs(seed))


def write_grid(images: np.ndarray, path: str) -> None:
    grid = image_grid(images)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    print(f"wrote {path}", file=sys.stderr)


def train(args) -> int:
    data = load_images(args)
    train_data, val_data = split_train_val(data, args.n_train, args.n_val, seed=args.seed)
    num_classes = int(data["labels"].max()) + 1 if args.conditional and "labels" in data else None
    if args.conditional and num_classes is None:
        raise ValueError("--conditional needs labels, and this image set has none")
    config = {"image_shape": list(data["images"].shape[1:]), "num_layers": args.num_layers,
              "hidden_channels": args.hidden_channels, "num_residual_blocks": args.num_residual_blocks,
              "kernel_size": args.kernel_size, "gated": args.gated, "output": args.output,
              "num_mixtures": args.num_mixtures, "num_classes": num_classes}
    write_run_config(args.out, config)
    keep = ["images"] + (["labels"] if num_classes else [])
    train_loader, val_loader = train_and_val_loaders(args, {k: train_data[k] for k in keep},
                                                     {k: val_data[k] for k in keep})
    model = build_model(config, args.seed)
    writer_kwargs = {"every_n_steps": args.sample_every, "n_samples": args.n_samples,
                     "generate_kwargs": {"temperature": args.temperature}}
    writer = load_callback(f"{SAMPLE_WRITER}:SampleWriter:{json.dumps(writer_kwargs)}")
    return fit_and_report(args, model, train_loader, val_loader, [writer])


def sample(args) -> int:
    config = read_run_config(args.out)
    model = build_model(config, args.seed)
    step = load_weights(model, os.path.join(args.out, "checkpoints"))
    rngs = nnx.Rngs(sample=args.seed)
    if args.inpaint:
        _, val_data = split_train_val(load_images(args), args.n_train, args.n_val, seed=args.seed)
        images = val_data["images"][:args.n_samples]
        mask = np.zeros_like(images)
        mask[:, : images.shape[1] // 2] = 1  # keep the top half, sample the bottom
        samples = model.inpaint(images, mask, args.n_samples, args.temperature, rngs=rngs)
        name = "inpaint"
    elif args.class_label is not None:
        samples = model.generate_conditional(args.class_label, args.n_samples, rngs=rngs,
                                             temperature=args.temperature)
        name = f"class_{args.class_label}"
    else:
        samples = model.generate(args.n_samples, args.temperature, rngs=rngs)
        name = "samples"
    write_grid(np.asarray(samples, np.uint8), os.path.join(args.out, f"{name}_step{step}.png"))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    start_processes(args)
    return sample(args) if (args.generate or args.inpaint or args.class_label is not None) else train(args)


if __name__ == "__main__":
    sys.exit(main())
