"""The PixelCNN recipe end to end on a tiny .npz image set: train, sample, class-sample, inpaint."""

from __future__ import annotations

import os
import runpy

import numpy as np
import pytest
from PIL import Image

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "train_pixelcnn.py")


def recipe(*argv):
    return runpy.run_path(RECIPE)["main"](list(argv))


@pytest.fixture()
def tiny_images(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    images = np.where(labels[:, None, None, None] == 1, 230, 20) + rng.integers(-10, 10, (40, 6, 6, 1))
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images.astype(np.uint8), labels=labels.astype(np.int32))
    return str(path)


def test_train_then_every_sampling_mode(tmp_path, tiny_images):
    out = str(tmp_path / "run")
    common = ["--npz", tiny_images, "--n-train", "32", "--n-val", "8", "--batch-size", "8", "--out", out,
              "--hidden-channels", "8", "--num-layers", "2", "--num-residual-blocks", "1", "--kernel-size", "3"]
    assert recipe(*common, "--conditional", "--max-steps", "4", "--sample-every", "2", "--n-samples", "4",
                  "--log-every", "2", "--no-progress-bar") == 0
    assert sorted(f for f in os.listdir(os.path.join(out, "samples")) if f.endswith(".png")) == [
        "step_00000002.png", "step_00000004.png"]
    for mode, name in ((["--generate"], "samples"), (["--class-label", "1"], "class_1"), (["--inpaint"], "inpaint")):
        assert recipe(*common, *mode, "--n-samples", "4") == 0
        grid = np.asarray(Image.open(os.path.join(out, f"{name}_step4.png")))
        assert grid.shape == (13, 13)  # 2 x 2 tiles of 6 x 6 with a 1-pixel separator


def test_sampling_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        recipe("--generate", "--out", str(tmp_path))
