"""WaveNet: exact causality and receptive field (gradients), fast == naive generation,
generation == the forward pass (no off-by-one), the likelihood bookkeeping, class
conditioning, training on a periodic waveform, audio summaries, the guide's snippet,
and argument checking."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artrainer import Trainer
from artrainer.data.audio import mu_law_decode
from artrainer.loggers import TensorBoardLogger
from artrainer.models import WaveNet


def tiny(seed=0, **kwargs):
    config = dict(num_layers=4, num_stacks=2, residual_channels=8, dilation_channels=8, skip_channels=16,
                  quantization_channels=256, kernel_size=2)
    return WaveNet(**{**config, **kwargs}, rngs=nnx.Rngs(seed))


def perturb(model, seed=1, scale=0.3):
    """Make every weight nonzero (biases included) so that only the wiring can zero a gradient."""
    rng = np.random.default_rng(seed)
    params = jax.device_get(nnx.state(model, nnx.Param))
    nnx.update(model, jax.tree.map(lambda p: jnp.asarray(p + scale * rng.standard_normal(p.shape, np.float32)),
                                   params))
    return model


def input_dependence(model, length):
    """``D[t, s] = max |d logits[t, :] / d one_hot[s, :]|`` over random soft inputs."""
    x = jax.nn.softmax(jax.random.normal(jax.random.key(0), (length, model.quantization_channels)) * 3)
    jacobian = jax.jit(jax.jacfwd(lambda x: model.logits_from_one_hot(x[None])[0]))(x)  # [T, Q, T, Q]
    return np.asarray(jnp.max(jnp.abs(jacobian), axis=(1, 3)))


@pytest.mark.parametrize("config, expected_field", [
    (dict(num_layers=4, num_stacks=2, kernel_size=2), (1 + 2) * 2 + 2),
    (dict(num_layers=3, num_stacks=1, kernel_size=3), 2 * (1 + 2 + 4) + 2),
    (dict(num_layers=6, num_stacks=3, kernel_size=2), (1 + 2) * 3 + 2),
])
def test_causality_and_receptive_field_from_gradients(config, expected_field):
    model = perturb(tiny(**config))
    field = model.receptive_field
    assert field == expected_field
    length = field + 6
    dependence = input_dependence(model, length)
    for t in range(length):
        assert np.all(dependence[t, t:] == 0.0), f"logits at {t} depend on samples at or after {t}"
        for s in range(t):
            if s >= t - field + 1:
                assert dependence[t, s] > 0.0, f"logits at {t} ignore sample {s}, inside the receptive field"
            else:
                assert dependence[t, s] == 0.0, f"logits at {t} depend on sample {s}, outside the receptive field"


def test_guide_receptive_field_per_stack():
    # The guide: 3 stacks of dilations 1 … 512, "receptive field = 1024" per stack.
    model = WaveNet(num_layers=30, num_stacks=3, residual_channels=2, dilation_channels=2, skip_channels=2,
                    rngs=nnx.Rngs(0))
    assert model.dilations[:10] == tuple(2 ** i for i in range(10)) == model.dilations[10:20]
    assert model.receptive_field == 3 * 1023 + 2


def test_int_forward_equals_one_hot_forward_and_loss_matches_numpy():
    model = perturb(tiny())
    codes = jax.random.randint(jax.random.key(1), (3, 20), 0, 256)
    logits = model(codes)["logits"]
    assert logits.shape == (3, 20, 256)
    np.testing.assert_allclose(logits, model.logits_from_one_hot(jax.nn.one_hot(codes, 256)), atol=1e-5)

    mask = np.ones((3, 20), np.int32)
    mask[1, 12:] = 0  # a short recording, padded
    metrics = model.loss_fn({"waveform": codes, "mask": mask}, {"logits": logits})
    log_probs = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
    nll = -np.take_along_axis(log_probs, np.asarray(codes)[..., None], -1)[..., 0]
    expected = (nll * mask).sum() / mask.sum()
    assert metrics["weight"] == mask.sum()
    np.testing.assert_allclose(metrics["nll_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["bits_per_dim"], expected / math.log(2), rtol=1e-5)
    np.testing.assert_allclose(metrics["perplexity"], math.exp(expected), rtol=1e-5)


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fast_generation_equals_naive_sample_for_sample(kernel_size, temperature):
    num_layers = 6 if kernel_size == 2 else 5
    model = perturb(tiny(num_layers=num_layers, num_stacks=1, kernel_size=kernel_size, num_classes=3), scale=0.2)
    assert model.receptive_field >= 64
    kwargs = dict(temperature=temperature, rngs=jax.random.key(7), class_label=np.array([0, 2, 1]),
                  prompt=np.arange(10) * 20)
    fast = model.generate(3, 150, method="fast", **kwargs)
    naive = model.generate(3, 150, method="naive", **kwargs)
    np.testing.assert_array_equal(fast, naive)
    np.testing.assert_array_equal(fast[:, :10], np.tile(np.arange(10) * 20, (3, 1)))
    assert len(np.unique(np.asarray(fast[:, 10:]))) > (1 if temperature else 0)


def test_greedy_generation_is_the_argmax_of_the_forward_pass():
    """Sample t is the argmax of logits[t] of the finished sequence: no shift either way."""
    model = perturb(tiny(num_classes=2), scale=0.2)
    labels = np.array([0, 1])
    samples = model.generate(2, 40, 0.0, rngs=jax.random.key(0), prompt=np.array([5, 200, 17]), class_label=labels)
    logits = model(samples, labels=jnp.asarray(labels))["logits"]
    np.testing.assert_array_equal(samples[:, 3:], jnp.argmax(logits, -1)[:, 3:])


def test_first_sample_frequencies_match_the_model_distribution():
    model = perturb(tiny(), scale=0.5)
    temperature, n = 1.5, 20000
    samples = np.asarray(model.generate(n, 1, temperature, rngs=jax.random.key(3)))[:, 0]
    logits = model(jnp.zeros((1, 1), jnp.int32))["logits"][0, 0]  # sample 0 sees only the start code
    expected = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
    observed = np.bincount(samples, minlength=256) / n
    assert 0.5 * np.abs(observed - expected).sum() < 0.05


def test_conditioning_changes_the_model_and_labels_are_required():
    model = perturb(tiny(num_classes=4))
    codes = jnp.zeros((2, 12), jnp.int32)
    a = model(codes, labels=jnp.array([0, 0]))["logits"]
    b = model(codes, labels=jnp.array([1, 3]))["logits"]
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="batches with 'labels'"):
        model.training_step({"waveform": codes}, nnx.Rngs(0))
    loss, _ = model.training_step({"waveform": codes, "labels": jnp.array([1, 2])}, nnx.Rngs(0))
    assert np.isfinite(loss)


def periodic_codes(period, length, offset=0):
    cycle = np.array([128, 180, 230, 250, 230, 180, 128, 76, 26, 6, 26, 76])[:period]
    return cycle[(np.arange(length) + offset) % len(cycle)].astype(np.int32)


def test_trained_model_continues_a_periodic_waveform():
    period = 12
    windows = np.stack([periodic_codes(period, 48, offset) for offset in range(period)])
    model = tiny(num_layers=5, num_stacks=1, residual_channels=16, dilation_channels=16, skip_channels=32)
    model.learning_rate = 3e-3
    assert model.receptive_field > period
    Trainer(max_steps=150, enable_progress_bar=False, logger=False).fit(
        model, [{"waveform": windows}] * 150)
    prompt = periodic_codes(period, 20, offset=5)
    samples = np.asarray(model.generate(1, 80, 0.0, rngs=jax.random.key(0), prompt=prompt))[0]
    np.testing.assert_array_equal(samples, periodic_codes(period, 80, offset=5))


def test_log_samples_writes_audio_summaries(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny(sample_rate=8000)
    samples = model.generate(2, 64, rngs=jax.random.key(0))
    logger = TensorBoardLogger(str(tmp_path))
    model.log_samples(samples, logger, step=3)
    logger.close()
    events = EventAccumulator(logger.log_dir, size_guidance={"audio": 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["samples/0", "samples/1"]
    audio = events.Audio("samples/0")[0]
    assert audio.step == 3 and audio.sample_rate == 8000 and audio.length_frames == 64
    np.testing.assert_allclose(model.to_audio(samples), mu_law_decode(np.asarray(samples)))


def test_guide_snippet_runs_as_written():
    # The guide's WaveNet section, with the import path changed; the generated length is
    # trimmed from 16000 for CI time (the fast path's cost per sample does not depend on it).
    rngs = nnx.Rngs(params=0, sample=1)
    model = WaveNet(
        num_layers=30,
        num_stacks=3,
        residual_channels=128,
        dilation_channels=256,
        skip_channels=512,
        rngs=rngs
    )

    # Training
    waveform = jnp.zeros((4, 16000), dtype=jnp.int32)  # 1 second at 16kHz
    outputs = model(waveform, rngs=rngs)
    assert outputs["logits"].shape == (4, 16000, 256)

    # Loss
    batch = {"waveform": waveform}
    loss_dict = model.loss_fn(batch, outputs, rngs=rngs)
    assert {"loss", "nll_loss", "perplexity", "accuracy", "bits_per_dim"} <= set(loss_dict)

    # Generation
    generated_audio = model.generate(
        n_samples=1,
        max_length=2000,
        temperature=0.9,
        rngs=rngs
    )
    assert generated_audio.shape == (1, 2000) and generated_audio.dtype == jnp.int32


@pytest.mark.parametrize("call, error, match", [
    (lambda: tiny(num_layers=5, num_stacks=2), ValueError, "multiple of num_stacks"),
    (lambda: tiny(kernel_size=1), ValueError, "kernel_size must be an int >= 2; got 1"),
    (lambda: tiny(residual_channels=0), ValueError, "residual_channels must be an int >= 1; got 0"),
    (lambda: tiny(num_classes=2.0), TypeError, "num_classes"),
    (lambda: tiny()(jnp.zeros((2, 8))), ValueError, "integer mu-law codes"),
    (lambda: tiny()(jnp.zeros((8,), jnp.int32)), ValueError, r"shape \[batch, time\]"),
    (lambda: tiny()(jnp.full((1, 8), 256)), ValueError, "got 256"),
    (lambda: tiny()(jnp.full((1, 8), -1)), ValueError, "got -1"),
    (lambda: tiny()(jnp.zeros((1, 8), jnp.int32), labels=jnp.array([0])), ValueError, "unconditional"),
    (lambda: tiny(num_classes=3)(jnp.zeros((1, 8), jnp.int32), labels=jnp.array([3])), ValueError,
     r"num_classes=3\)"),
    (lambda: tiny().generate(2, 8, rngs=jax.random.key(0), method="slow"), ValueError, "method='slow'"),
    (lambda: tiny().generate(0, 8, rngs=jax.random.key(0)), ValueError, r"n_samples must be an int >= 1; got 0 \(int\)"),
    (lambda: tiny().generate(2, 0, rngs=jax.random.key(0)), ValueError, r"max_length must be an int in \[1, \d+\]; got 0 \(int\)"),
    (lambda: tiny().generate(2, 8, -1.0, rngs=jax.random.key(0)), ValueError, "temperature"),
    (lambda: tiny().generate(2, 8, rngs=jax.random.key(0), top_k=300), ValueError, "top_k"),
    (lambda: tiny().generate(2, 8, rngs=jax.random.key(0), prompt=[3, 300]), ValueError, "300"),
    (lambda: tiny().generate(2, 8, rngs=jax.random.key(0), prompt=[0.5]), ValueError, "integer"),
    (lambda: tiny().generate(2, 4, rngs=jax.random.key(0), prompt=[1, 2, 3, 4]), ValueError, "no room"),
    (lambda: tiny().generate(2, 8, rngs=jax.random.key(0), class_label=1), ValueError, "unconditional"),
    (lambda: tiny(num_classes=2).generate(2, 8, rngs=jax.random.key(0), class_label=[0, 5]), ValueError,
     "class_label"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
