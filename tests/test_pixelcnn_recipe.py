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
    for mode, name in ((["--generate"], "samples"), (["--class-label", "1"], "class_1")):
        assert recipe(*common, *mode, "--n-samples", "4") == 0
        grid = np.asarray(Image.open(os.path.join(out, f"{name}_step4_000.png")))
        assert grid.shape == (13, 13)  # 2 x 2 tiles of 6 x 6 with a 1-pixel separator
    assert recipe(*common, "--inpaint", "--n-samples", "3", "--completions", "2") == 0
    grid = np.asarray(Image.open(os.path.join(out, "inpaint_step4_000.png")))
    assert grid.shape == (3 * 7 - 1, 4 * 7 - 1)  # 3 rows of [original, kept, 2 completions]


def test_sampling_calls_never_overwrite_outputs_and_inpaint_shows_original_mask_completions(tmp_path, tiny_images):
    out = str(tmp_path / "run")
    common = ["--npz", tiny_images, "--n-train", "32", "--n-val", "8", "--batch-size", "8", "--out", out,
              "--hidden-channels", "8", "--num-layers", "2", "--num-residual-blocks", "1", "--kernel-size", "3"]
    assert recipe(*common, "--max-steps", "2", "--sample-every", "100", "--no-progress-bar") == 0
    for seed in ("0", "1"):
        assert recipe(*common, "--generate", "--n-samples", "2", "--seed", seed) == 0
    first, second = (np.asarray(Image.open(os.path.join(out, f"samples_step2_00{i}.png"))) for i in (0, 1))
    assert not np.array_equal(first, second)  # the second call wrote a file of its own
    assert recipe(*common, "--inpaint", "--n-samples", "2", "--completions", "3") == 0
    grid = np.asarray(Image.open(os.path.join(out, "inpaint_step2_000.png")))
    tiles = [[grid[r * 7:r * 7 + 6, c * 7:c * 7 + 6] for c in range(5)] for r in range(2)]
    split = runpy.run_path(RECIPE)["split_train_val"]
    _, val = split(dict(np.load(tiny_images)), 32, 8, seed=0)
    for row, original in zip(tiles, val["images"][:2, ..., 0]):
        np.testing.assert_array_equal(row[0], original)                     # the original
        np.testing.assert_array_equal(row[1][:3], original[:3])             # the kept top half ...
        assert (row[1][3:] == 128).all()                                    # ... and the unknown part, grey
        for completion in row[2:]:
            np.testing.assert_array_equal(completion[:3], original[:3])     # completions keep the known half


def test_sampling_without_a_run_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTRAINER_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        recipe("--generate", "--out", str(tmp_path))
