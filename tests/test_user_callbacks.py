"""The user callbacks in callbacks/ (EMA, SampleWriter), loaded the way recipes load them."""

import json
import os
import types

import jax
import numpy as np
import pytest
import soundfile
from flax import nnx
from PIL import Image
from tiny_lm import BigramLM, cyclic_sequences

from artrainer import Callback, Trainer
from artrainer.callbacks import ModelCheckpoint, load_callback
from artrainer.checkpointing import CheckpointStore
from artrainer.data import DataLoader

CALLBACKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "callbacks")
VOCAB = 16


def load(spec: str, **kwargs):
    return load_callback(f"{CALLBACKS}/{spec}:{json.dumps(kwargs)}")


def trainer(tmp_path, callbacks, **kwargs):
    return Trainer(callbacks=callbacks, default_root_dir=tmp_path, logger=False,
                   enable_progress_bar=False, **kwargs)


def loader(seed=0):
    return DataLoader({"sequences": cyclic_sequences(24, 9, VOCAB)}, 4, shuffle=True, seed=seed)


def host_params(state) -> dict[tuple, np.ndarray]:
    return {key: np.asarray(v.get_value())
            for key, v in nnx.to_flat_state(jax.device_get(nnx.filter_state(state, nnx.Param)))}


class CaptureParams(Callback):
    """Host copies of the weights at train start and after every step."""

    uses_module = False

    def __init__(self):
        self.initial, self.steps = None, []

    def on_train_start(self, trainer, module):
        self.initial = host_params(trainer.model_state)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append(host_params(trainer.model_state))


@pytest.mark.parametrize("warmup, every_n_steps", [(False, 1), (True, 2)])
def test_ema_matches_reference(tmp_path, warmup, every_n_steps):
    ema = load("ema.py:EMA", decay=0.9, warmup=warmup, every_n_steps=every_n_steps)
    capture = CaptureParams()
    trainer(tmp_path, [ema, capture], max_steps=7).fit(BigramLM(VOCAB, rngs=nnx.Rngs(0)), loader())

    expected, n = capture.initial, 0
    for step, params in enumerate(capture.steps, 1):
        if step % every_n_steps == 0:
            decay = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
            expected = {k: decay * expected[k] + (1 - decay) * params[k] for k in params}
            n += 1
    got = host_params(ema.ema)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
        assert not np.allclose(got[key], capture.steps[-1][key])
    assert ema.state_dict() == {"updates": n}
    assert ema._update._cache_size() == 1  # one compile for the whole run


def test_validation_and_eval_module_use_ema(tmp_path):
    val = DataLoader({"sequences": cyclic_sequences(8, 9, VOCAB, seed=1)}, 4, shuffle=False)
    module = BigramLM(VOCAB, rngs=nnx.Rngs(0))
    ema = load("ema.py:EMA", decay=0.9, warmup=False)
    seen = {}

    class Probe(Callback):
        def on_validation_end(self, trainer, module):
            seen["eval_params"] = trainer.eval_params
            seen["eval_module"] = host_params(nnx.state(trainer.eval_module()))

    fit_trainer = trainer(tmp_path, [ema, Probe()], max_steps=6, val_check_interval=6)
    fit_trainer.fit(module, loader(), val)
    assert seen["eval_params"] is ema.ema
    assert fit_trainer.eval_params is None  # cleared at teardown
    ema_params = host_params(ema.ema)
    for key, value in seen["eval_module"].items():
        np.testing.assert_array_equal(value, ema_params[key])

    fit_metrics = {k: v for k, v in fit_trainer.callback_metrics.items() if k.startswith("val/")}
    raw = trainer(tmp_path, []).validate(module, val)
    ema_module = nnx.merge(nnx.graphdef(module), nnx.merge_state(nnx.state(module), ema.ema))
    averaged = trainer(tmp_path, []).validate(ema_module, val)
    assert fit_metrics.keys() == averaged.keys() == raw.keys() and "val/loss" in raw
    assert fit_metrics == pytest.approx(averaged, rel=1e-6)
    assert abs(raw["val/loss"] - averaged["val/loss"]) > 1e-3


class Crash(Callback):
    uses_module = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 5:
            raise RuntimeError("simulated crash")


def _ema_runs(tmp_path, make_ema, resume_ema=None):
    """An uninterrupted EMA run, and one that crashes after step 5 and resumes from 'last'
    (with ``resume_ema()``'s callback, by default another ``make_ema()``)."""
    def run(root, *extra, ckpt_path=None):
        ema = (resume_ema or make_ema)() if ckpt_path else make_ema()
        module = BigramLM(VOCAB, rngs=nnx.Rngs(0))
        callbacks = [ema, *extra, ModelCheckpoint(every_n_steps=2, async_save=False)]
        trainer(root, callbacks, max_steps=9).fit(module, loader(seed=3), ckpt_path=ckpt_path)
        return ema, module

    straight = run(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", Crash())
    crashed = sorted(os.listdir(tmp_path / "resumed"))
    return straight, crashed, run(tmp_path / "resumed", ckpt_path="last")


def _assert_same_run(straight, resumed):
    (straight_ema, straight_module), (resumed_ema, resumed_module) = straight, resumed
    assert resumed_ema.updates == straight_ema.updates == 9
    for name, expected in host_params(nnx.state(straight_module)).items():
        np.testing.assert_array_equal(host_params(nnx.state(resumed_module))[name], expected)
    for name, expected in host_params(straight_ema.ema).items():
        np.testing.assert_array_equal(host_params(resumed_ema.ema)[name], expected)


def test_ema_resumes_exactly_from_inside_the_checkpoint(tmp_path):
    straight, crashed, resumed = _ema_runs(tmp_path, lambda: load("ema.py:EMA", decay=0.95))
    assert crashed == ["checkpoints"]  # no side files: the average is pruned with its checkpoint
    ema_key = straight[0].state_key
    store = CheckpointStore(tmp_path / "straight" / "checkpoints", read_only=True)
    try:
        assert store.stored_keys(store.latest_step(), "callbacks") == {ema_key}
    finally:
        store.close()
    _assert_same_run(straight, resumed)


def test_ema_resumes_from_a_checkpoint_with_the_old_side_file(tmp_path):
    """Checkpoints of earlier versions kept the average in <root>/ema/<step>.npz."""
    ema_class = load_callback(f"{CALLBACKS}/ema.py:EMA").__class__

    class SideFileEMA(ema_class):
        state_key = "EMA"

        def checkpoint_arrays(self, trainer):
            return None

        def on_save_checkpoint(self, trainer, module, checkpoint):
            path = os.path.join(trainer.default_root_dir, "ema", f"{trainer.global_step}.npz")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.savez(path, **{"/".join(map(str, key)): np.asarray(value)
                              for key, value in host_params(self.ema).items()})
            checkpoint["ema_file"] = path

    straight, crashed, resumed = _ema_runs(tmp_path, lambda: SideFileEMA(decay=0.95),
                                           lambda: load("ema.py:EMA", decay=0.95))
    assert crashed == ["checkpoints", "ema"]
    _assert_same_run(straight, resumed)


def test_sample_writer_writes_token_files(tmp_path):
    writer = load("sample_writer.py:SampleWriter", every_n_steps=2, n_samples=3)
    trainer(tmp_path, [writer], max_steps=5).fit(BigramLM(VOCAB, rngs=nnx.Rngs(0)), loader())

    directory = tmp_path / "samples"
    assert sorted(os.listdir(directory)) == [f"step_{s:08d}.{ext}" for s in (2, 4, 5) for ext in ("npy", "txt")]
    for step in (2, 4, 5):
        samples = np.load(directory / f"step_{step:08d}.npy")
        assert samples.shape == (3, 8) and samples.dtype == np.int32
        lines = (directory / f"step_{step:08d}.txt").read_text().splitlines()
        assert lines == [" ".join(map(str, row)) for row in samples.tolist()]
    np.testing.assert_array_equal(samples, np.asarray(writer.last_samples))


def test_sample_writer_text_images_and_audio(tmp_path):
    writer = load("sample_writer.py:SampleWriter", dirpath=str(tmp_path / "out"))
    fake_trainer = types.SimpleNamespace(logger=None, default_root_dir=str(tmp_path))
    generate = staticmethod(lambda n_samples, *, rngs: None)
    text_model = type("TextModel", (), {"generate": generate, "decode": lambda self, ids: "a\nb" * ids[0]})()
    image_model = type("ImageModel", (), {"generate": generate})()
    audio_model = type("AudioModel", (), {"generate": generate, "sample_rate": 8000})()
    writer.setup(fake_trainer, text_model, "fit")

    writer.handle_samples(fake_trainer, text_model, np.array([[1, 5], [2, 0]], np.int32), 1)
    assert (tmp_path / "out" / "step_00000001.txt").read_text() == "a\\nb\na\\nba\\nb\n"

    rgb = np.random.default_rng(0).random((5, 4, 6, 3), np.float32)
    writer.handle_samples(fake_trainer, image_model, rgb, 2)
    grid = np.asarray(Image.open(tmp_path / "out" / "step_00000002.png"))
    assert grid.shape == (9, 20, 3)  # 5 images on a 2 x 3 grid, 1-pixel separators
    np.testing.assert_array_equal(grid[5:9, 7:13], np.round(rgb[4] * 255).astype(np.uint8))
    np.testing.assert_array_equal(grid[5:9, 14:20], 255)  # the empty cell stays separator-white
    writer.handle_samples(fake_trainer, image_model, np.full((1, 2, 3, 1), 7, np.int32), 3)
    assert np.asarray(Image.open(tmp_path / "out" / "step_00000003.png")).tolist() == [[7] * 3] * 2

    wave = np.stack([np.linspace(-0.5, 0.5, 80), np.full(80, 2.0)]).astype(np.float32)
    writer.handle_samples(fake_trainer, audio_model, wave, 4)
    for i, expected in enumerate((wave[0], np.ones(80))):
        data, rate = soundfile.read(tmp_path / "out" / f"step_00000004_{i}.wav", dtype="float32")
        assert rate == 8000
        np.testing.assert_allclose(data, expected, atol=1e-4)
    assert not (tmp_path / "out" / "step_00000004.txt").exists()
    assert not [name for name in os.listdir(tmp_path / "out") if name.endswith(".tmp")]
