"""TensorBoardLogger tests: everything is read back from the event files on disk."""

import io
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from artrainer.loggers import TensorBoardLogger


def read_events(log_dir):
    ea = EventAccumulator(
        log_dir, size_guidance={"scalars": 0, "images": 0, "audio": 0, "tensors": 0}
    )
    ea.Reload()
    return ea


@pytest.fixture
def logger(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp")
    yield logger
    logger.close()


def test_scalars_round_trip(logger):
    logger.log_metrics({"train/loss": 2.5, "val/perplexity": np.float32(12.25)}, step=1)
    logger.log_metrics({"train/loss": jnp.asarray(1.75), "val/perplexity": None}, step=2)
    logger.close()

    ea = read_events(logger.log_dir)
    assert [(e.step, e.value) for e in ea.Scalars("train/loss")] == [(1, 2.5), (2, 1.75)]
    assert [(e.step, e.value) for e in ea.Scalars("val/perplexity")] == [(1, 12.25)]


def test_text(logger):
    logger.log_text("samples", "once upon a *time*", step=3)
    logger.close()

    (event,) = read_events(logger.log_dir).Tensors("samples/text_summary")
    assert event.step == 3
    assert event.tensor_proto.string_val == [b"once upon a *time*"]


def decode_png(event):
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def test_image_grid_layout_and_pixels(logger):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    logger.log_images("samples", images, step=7)
    logger.close()

    (event,) = read_events(logger.log_dir).Images("samples")
    grid = decode_png(event)
    # ceil(sqrt(5)) = 3 columns -> 2 rows, with 1-pixel separators between tiles.
    assert (event.height, event.width) == grid.shape[:2] == (2 * 4 + 1, 3 * 6 + 2)
    assert event.step == 7
    np.testing.assert_array_equal(grid[:4, :6], images[0])
    np.testing.assert_array_equal(grid[5:9, 7:13], images[4])


def test_float_grayscale_images_with_explicit_ncol(logger):
    images = np.linspace(0.0, 1.0, 2 * 3 * 3).reshape(2, 3, 3, 1)
    logger.log_images("gray", jnp.asarray(images), step=0, ncol=1)
    logger.close()

    grid = decode_png(read_events(logger.log_dir).Images("gray")[0])
    assert grid.shape == (2 * 3 + 1, 3, 3)
    expected = np.round(images[1] * 255).astype(np.uint8)
    np.testing.assert_array_equal(grid[4:7], np.repeat(expected, 3, axis=-1))


@pytest.mark.parametrize("shape", [(4, 4, 3), (2, 4, 4, 2), (0, 4, 4, 3)])
def test_bad_image_shape_raises(logger, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        logger.log_images("bad", np.zeros(shape, np.uint8), step=0)


def test_audio(logger):
    t = np.arange(800) / 8000
    logger.log_audio("tone", np.sin(2 * np.pi * 440 * t), step=1, sample_rate=8000)
    logger.log_audio("batch", np.zeros((2, 100)), step=1, sample_rate=16000)
    logger.close()

    ea = read_events(logger.log_dir)
    assert sorted(ea.Tags()["audio"]) == ["batch/0", "batch/1", "tone"]
    (tone,) = ea.Audio("tone")
    assert (tone.sample_rate, tone.length_frames, tone.step) == (8000, 800, 1)
    assert ea.Audio("batch/1")[0].sample_rate == 16000


def test_audio_rejects_non_finite(logger):
    with pytest.raises(ValueError, match="non-finite"):
        logger.log_audio("bad", np.array([0.0, np.nan]), step=0, sample_rate=8000)


def test_hyperparams_land_in_log_dir(logger):
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.log_hyperparams(
        {"lr": 3e-4, "model": {"depth": 4, "act": "gelu", "widths": [8, 16]}, "bf16": True},
        metrics={"hp/val_loss": 2.0},
    )
    logger.close()

    # One event file and no timestamped sub-run, unlike SummaryWriter.add_hparams.
    assert len(os.listdir(logger.log_dir)) == 1
    ea = read_events(logger.log_dir)
    assert ea.Scalars("train/loss")[0].value == 1.0
    assert ea.Scalars("hp/val_loss")[0].value == 2.0
    content = ea.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["lr"].number_value == 3e-4
    assert start.hparams["model/depth"].number_value == 4
    assert start.hparams["model/act"].string_value == "gelu"
    assert start.hparams["model/widths"].string_value == "[8, 16]"
    assert start.hparams["bf16"].bool_value is True


def test_versions_auto_increment_and_construction_is_lazy(tmp_path):
    first = TensorBoardLogger(tmp_path / "runs")
    second = TensorBoardLogger(tmp_path / "runs")
    assert not (tmp_path / "runs").exists()

    first.log_metrics({"x": 1.0}, step=0)
    second.log_metrics({"x": 1.0}, step=0)
    first.close()
    second.close()

    assert first.log_dir == os.path.join(tmp_path / "runs", "version_0")
    assert second.log_dir == os.path.join(tmp_path / "runs", "version_1")


def test_explicit_version_is_used_as_given(tmp_path):
    numbered = TensorBoardLogger(tmp_path, "exp", 3)
    named = TensorBoardLogger(tmp_path, "exp", "final")
    assert numbered.log_dir == os.path.join(tmp_path, "exp", "version_3")
    assert named.log_dir == os.path.join(tmp_path, "exp", "final")


def test_uncreatable_log_dir_is_named_in_error(tmp_path):
    (tmp_path / "blocker").write_text("not a directory")
    logger = TensorBoardLogger(tmp_path / "blocker")
    with pytest.raises(OSError, match="blocker"):
        logger.log_metrics({"x": 1.0}, step=0)


def test_close_is_idempotent(logger):
    logger.close()
    logger.log_text("t", "hello", step=0)
    logger.flush()
    logger.close()
    logger.close()
