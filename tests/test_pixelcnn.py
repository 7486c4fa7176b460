"""PixelCNN: exact causality (Jacobians), likelihood bookkeeping, compiled sampling, inpainting,
class conditioning, the user guide's snippets, and argument checking."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artrainer import Trainer
from artrainer.models import PixelCNN
from artrainer.models.pixelcnn import discretized_logistic_mixture_log_probs, sample_pixels


def tiny(shape=(4, 4, 3), seed=0, **kwargs):
    config = dict(num_layers=2, hidden_channels=12, num_residual_blocks=1, kernel_size=3)
    return PixelCNN(shape, **{**config, **kwargs}, rngs=nnx.Rngs(seed))


def perturb(model, seed=1, scale=0.3):
    """Make every weight nonzero, masked-out taps and biases included, so only the masks
    applied inside ``__call__`` can keep the model causal. (Noise from numpy: no compiles.)"""
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: jnp.asarray(p + scale * rng.standard_normal(p.shape, np.float32)),
                                   jax.device_get(params)))
    return model


def dependencies(model, samples=16):
    """``D[p, q] = max |d logits[p, v] / d x[q]|`` over the 256 values v and ``samples`` random
    [-1, 1] images (one could switch every ReLU on a path off), from exact Jacobians;
    p and q are flat sub-pixel indices in the model's order (raster, then channel)."""
    x = jax.random.uniform(jax.random.key(0), (samples, *model.image_shape), minval=-1.0, maxval=1.0)
    jacobian = jax.jit(jax.vmap(jax.jacfwd(lambda x: model.logits_from_float(x[None])[0])))(x)
    n = x[0].size
    return np.abs(np.asarray(jacobian)).max(axis=(0, 4)).reshape(n, n)  # [S, H, W, C, 256, H, W, C]


def numpy_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def greedy_by_hand(model, canvas, known=None, labels=None):
    """Argmax decoding with a Python loop over sub-pixels, each a full forward pass."""
    canvas = np.array(canvas, np.int32)
    known = np.zeros(canvas.shape, bool) if known is None else known
    forward = jax.jit(lambda images: model(images, labels=labels)["logits"])
    for row, col, channel in np.ndindex(*model.image_shape):
        best = np.asarray(forward(jnp.asarray(canvas))[:, row, col, channel]).argmax(-1)
        canvas[:, row, col, channel] = np.where(known[:, row, col, channel], canvas[:, row, col, channel], best)
    return canvas


# -- causality ---------------------------------------------------------------------------

@pytest.mark.parametrize("channels,gated,output", [
    (1, False, "categorical"), (3, False, "categorical"), (1, True, "categorical"), (3, True, "categorical"),
    (3, True, "logistic_mixture")])
def test_logits_depend_exactly_on_the_earlier_sub_pixels(channels, gated, output):
    # 8 hidden channels per colour: with fewer, a colour's ReLUs can all be off at a pixel.
    model = perturb(tiny((5, 5, channels), gated=gated, output=output, hidden_channels=24))
    deps = dependencies(model)
    n = deps.shape[0]
    # Nothing at or after a sub-pixel reaches its logits: not even a rounding error.
    assert np.all(deps[np.triu_indices(n)] == 0)
    # Every later sub-pixel reads something before it ...
    assert all(deps[p, :p].max() > 0 for p in range(1, n))
    # ... its left neighbour and the pixel above (all channels), and, inside a pixel,
    # each earlier channel: G reads R, B reads R and G.
    for row, col, channel in np.ndindex(5, 5, channels):
        p = (row * 5 + col) * channels + channel
        pixel = p - channel
        if col > 0:
            assert deps[p, pixel - channels:pixel].min() > 0
        if row > 0:
            above = pixel - 5 * channels
            assert deps[p, above:above + channels].min() > 0
        assert deps[p, pixel:p].min(initial=1) > 0


def test_gated_stacks_have_no_blind_spot():
    """In a gated model deep enough to cover the image, every sub-pixel reads every earlier one;
    a plain stack of masked convolutions as deep misses pixels up and to the right (its blind spot)."""
    config = dict(shape=(4, 4, 1), num_layers=3, num_residual_blocks=0, kernel_size=5)
    gated = dependencies(perturb(tiny(gated=True, **config)))
    plain = dependencies(perturb(tiny(**config)))
    assert all(gated[p, :p].min() > 0 for p in range(1, 16))
    row, col = 3, 0  # pixel (2, 3) is one row up and three columns right
    assert plain[row * 4 + col, 2 * 4 + 3] == 0
    assert gated[row * 4 + col, 2 * 4 + 3] > 0


# -- likelihood --------------------------------------------------------------------------

@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_bits_per_dim_is_the_image_nll_over_its_sub_pixels(output):
    model = perturb(tiny((3, 3, 3), output=output))
    images = jax.random.randint(jax.random.key(0), (2, 3, 3, 3), 0, 256)
    outputs = model(images)
    assert outputs["logits"].shape == (2, 3, 3, 3, 256)
    log_probs = numpy_log_softmax(outputs["logits"])
    nll = -np.take_along_axis(log_probs, np.asarray(images)[..., None], -1).sum(axis=(1, 2, 3, 4))
    bits = nll / (3 * 3 * 3 * math.log(2))  # per image

    metrics = model.loss_fn({"images": images}, outputs)
    np.testing.assert_allclose(metrics["bits_per_dim"], bits.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_loss"], nll.sum() / 54, rtol=1e-5)
    assert metrics["loss"] == metrics["nll_loss"] and metrics["weight"] == 54
    correct = np.asarray(outputs["logits"]).argmax(-1) == np.asarray(images)
    np.testing.assert_allclose(metrics["accuracy"], correct.mean(), rtol=1e-6)

    padded = model.loss_fn({"images": images, "example_mask": jnp.array([1.0, 0.0])}, outputs)
    np.testing.assert_allclose(padded["bits_per_dim"], bits[0], rtol=1e-5)
    assert padded["weight"] == 27


def test_mixture_log_probs_are_exact_normalised_and_differentiable():
    rng, k = np.random.default_rng(0), 3
    params = jnp.asarray(np.concatenate([
        rng.normal(0.0, 3.0, (64, k)),      # mixture logits
        rng.uniform(-1.5, 1.5, (64, k)),    # means, some beyond the pixel range
        rng.uniform(-9.0, 4.0, (64, k)),    # log-scales, some below the floor
    ], axis=-1), jnp.float32)
    log_probs = discretized_logistic_mixture_log_probs(params)
    assert log_probs.shape == (64, 256) and np.isfinite(log_probs).all()
    np.testing.assert_allclose(np.exp(np.asarray(log_probs, np.float64)).sum(-1), 1.0, rtol=1e-5)

    # Against CDF differences computed directly in float64.
    p = np.asarray(params, np.float64)
    weights = np.exp(numpy_log_softmax(p[:, :k]))
    means, scales = p[:, k:2 * k], np.exp(np.maximum(p[:, 2 * k:], -7.0))
    edges = np.concatenate([[-np.inf], (2 * np.arange(1, 256) - 1) / 255 - 1, [np.inf]])
    cdf = 0.5 + 0.5 * np.tanh((edges[None, None] - means[..., None]) / (2 * scales[..., None]))  # [64, K, 257]
    expected = (weights[..., None] * np.diff(cdf, axis=-1)).sum(1)
    close = expected > 1e-12
    np.testing.assert_allclose(np.exp(np.asarray(log_probs, np.float64))[close], expected[close],
                               rtol=2e-4, atol=1e-7)

    targets = jnp.tile(jnp.array([0, 1, 128, 254, 255]), 13)[:64]
    grads = jax.grad(lambda q: jnp.take_along_axis(discretized_logistic_mixture_log_probs(q),
                                                   targets[:, None], -1).sum())(params)
    assert np.isfinite(grads).all()

    model = perturb(tiny((3, 3, 3), output="logistic_mixture", num_mixtures=4))
    logits = model(jax.random.randint(jax.random.key(1), (2, 3, 3, 3), 0, 256))["logits"]
    np.testing.assert_allclose(np.exp(np.asarray(logits, np.float64)).sum(-1), 1.0, rtol=1e-5)


# -- sampling ----------------------------------------------------------------------------

def test_generate_is_one_compiled_loop_of_valid_images():
    model = perturb(tiny((4, 4, 3)))
    first = model.generate(3, rngs=nnx.Rngs(0))
    compiled = sample_pixels._cache_size()
    second = model.generate(3, rngs=nnx.Rngs(sample=1))
    assert sample_pixels._cache_size() == compiled  # a new key reuses the compiled loop
    for samples in (first, second):
        assert samples.shape == (3, 4, 4, 3) and samples.dtype == jnp.int32
        assert 0 <= int(samples.min()) and int(samples.max()) <= 255
    assert (np.asarray(first) != np.asarray(second)).any()


@pytest.mark.parametrize("kwargs,class_label", [
    ({}, None), ({"gated": True, "output": "logistic_mixture", "shape": (5, 5, 1)}, None),
    ({"gated": True, "num_classes": 3}, np.array([0, 1, 2]))])
def test_greedy_generation_equals_argmax_decoding_by_hand(kwargs, class_label):
    model = perturb(tiny(**kwargs))
    samples = model.generate(3, temperature=0.0, rngs=nnx.Rngs(0), class_label=class_label)
    expected = greedy_by_hand(model, np.zeros((3, *model.image_shape)), labels=class_label)
    np.testing.assert_array_equal(samples, expected)
    np.testing.assert_array_equal(model.generate(3, top_k=1, rngs=nnx.Rngs(5), class_label=class_label), expected)


def test_inpaint_keeps_known_pixels_and_is_greedy_at_temperature_zero():
    model = perturb(tiny((4, 4, 3)))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 4, 3))
    mask = np.zeros((4, 4))  # the guide's form: one 0/1 per pixel, float
    mask[:2] = 1.0
    mask[3, 1] = 1.0
    known = np.broadcast_to(mask[..., None].astype(bool), (3, 4, 4, 3))

    samples = np.asarray(model.inpaint(image, mask, 3, rngs=nnx.Rngs(0)))
    assert samples.shape == (3, 4, 4, 3) and samples.dtype == np.int32
    np.testing.assert_array_equal(samples[known], np.broadcast_to(image, known.shape)[known])
    assert (samples[~known] != np.broadcast_to(image, known.shape)[~known]).any()

    greedy = model.inpaint(image, mask, 3, temperature=0.0, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(greedy, model.inpaint(image, mask, 3, temperature=0.0, rngs=nnx.Rngs(2)))
    np.testing.assert_array_equal(greedy, greedy_by_hand(model, np.broadcast_to(image, known.shape), known))

    # One conditioning image and sub-pixel mask per sample.
    images = rng.integers(0, 256, (2, 4, 4, 3))
    masks = rng.integers(0, 2, (2, 4, 4, 3))
    batched = model.inpaint(images, masks, temperature=0.0, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(batched, greedy_by_hand(model, images, masks.astype(bool)))


# -- class conditioning ------------------------------------------------------------------

def two_class_batches(n_batches=4, batch_size=32, seed=0):
    """Class 0: near-black 4×4 noise; class 1: near-white."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        labels = rng.integers(0, 2, batch_size).astype(np.int32)
        dark, bright = rng.integers(0, 40, (batch_size, 4, 4, 1)), rng.integers(216, 256, (batch_size, 4, 4, 1))
        batches.append({"images": np.where(labels[:, None, None, None] == 0, dark, bright).astype(np.uint8),
                        "labels": labels})
    return batches


def test_trained_conditional_model_samples_the_asked_class(tmp_path):
    model = tiny((4, 4, 1), num_classes=2)
    model.learning_rate = 1e-2
    batches = two_class_batches()
    trainer = Trainer(max_steps=120, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, batches)
    assert trainer.validate(model, batches[:1])["val/bits_per_dim"] < 6.0

    black = np.asarray(model.generate_conditional(0, 16, rngs=nnx.Rngs(0)))
    white = np.asarray(model.generate_conditional(class_label=1, n_samples=16, rngs=nnx.Rngs(1)))
    assert black.mean() < 64 and white.mean() > 192
    mixed = np.asarray(model.generate_conditional(np.array([0, 1] * 4), rngs=nnx.Rngs(2)))
    assert mixed.shape == (8, 4, 4, 1)
    assert mixed[0::2].mean() < 64 and mixed[1::2].mean() > 192


def test_guide_conditional_subclass_snippet_runs():
    rngs = nnx.Rngs(params=0, dropout=1, sample=2)

    # Add class conditioning to PixelCNN
    class ConditionalPixelCNN(PixelCNN):
        def __init__(self, *args, num_classes=10, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_classes = num_classes
            self.class_embedding = nnx.Embed(
                num_classes, self.hidden_channels, rngs=kwargs['rngs']
            )

    model = ConditionalPixelCNN(image_shape=(5, 5, 1), num_layers=2, hidden_channels=12,
                                num_residual_blocks=1, kernel_size=3, rngs=rngs)  # (tiny, for CI time)

    # Generate specific class
    class_label = 7
    conditional_images = model.generate_conditional(
        class_label=class_label,
        n_samples=16,
        rngs=rngs
    )
    assert conditional_images.shape == (16, 5, 5, 1) and model.hparams["num_classes"] == 10
    # The subclass's embedding is what conditions the model.
    images = jnp.full((2, 5, 5, 1), 128)
    assert not np.allclose(model(images, labels=jnp.array([0, 0]))["logits"],
                           model(images, labels=jnp.array([7, 7]))["logits"])
    with pytest.raises(ValueError, match="labels"):
        model(images, labels=jnp.array([10, 0]))


def test_guide_quick_start_and_inpainting_snippets_run():
    rngs = nnx.Rngs(params=0, dropout=1, sample=2)
    model = PixelCNN(
        image_shape=(6, 6, 1),  # (the guide's 28×28 MNIST, trimmed for CI time)
        num_layers=2,
        hidden_channels=12,
        num_residual_blocks=1,
        kernel_size=3,
        rngs=rngs
    )
    images = jnp.zeros((16, 6, 6, 1), dtype=jnp.int32)  # Values in [0, 255]
    outputs = model(images, rngs=rngs, training=True)
    batch = {"images": images}
    loss_dict = model.loss_fn(batch, outputs, rngs=rngs)
    assert f"{loss_dict['loss']:.4f}" and f"{loss_dict['bits_per_dim']:.4f}"

    # Conditioning image with mask
    known_values = 200
    conditioning = jnp.zeros((6, 6, 1), dtype=jnp.int32)
    mask = jnp.zeros((6, 6))  # 0 = generate, 1 = keep
    conditioning = conditioning.at[0:3, 0:3, :].set(known_values)
    mask = mask.at[0:3, 0:3].set(1)
    inpainted = model.inpaint(
        conditioning=conditioning,
        mask=mask,
        n_samples=4,
        temperature=1.0,
        rngs=rngs
    )
    assert inpainted.shape == (4, 6, 6, 1) and (inpainted[:, 0:3, 0:3] == known_values).all()


# -- plumbing and argument checking --------------------------------------------------------

def test_hparams_and_log_samples():
    model = tiny(gated=True, output="logistic_mixture", num_mixtures=2, num_classes=4)
    assert model.input_key == "images"
    assert model.hparams == {"image_shape": (4, 4, 3), "num_layers": 2, "hidden_channels": 12,
                             "num_residual_blocks": 1, "num_classes": 4, "kernel_size": 3, "gated": True,
                             "output": "logistic_mixture", "num_mixtures": 2}

    class Logger:
        def log_images(self, tag, images, step):
            self.logged = (tag, np.asarray(images), step)

    # An unconditional model trains on labelled batches as they come: it ignores the labels.
    images = np.zeros((2, 4, 4, 3), np.int32)
    loss, _ = tiny().training_step({"images": images, "labels": np.array([0, 3])}, nnx.Rngs(0))
    assert np.isfinite(loss)

    logger, samples = Logger(), np.zeros((2, 4, 4, 3), np.int32)
    model.log_samples(samples, logger, 7)
    assert logger.logged[0] == "samples" and logger.logged[2] == 7
    np.testing.assert_array_equal(logger.logged[1], samples)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"image_shape": (6, 6)}, ValueError, "image_shape"),
    ({"image_shape": (6, 0, 1)}, ValueError, "image_shape"),
    ({"num_layers": 0}, ValueError, "num_layers must be an int >= 1; got 0 \\(int\\)"),
    ({"hidden_channels": 16.0}, TypeError, "hidden_channels"),
    ({"image_shape": (6, 6, 3), "hidden_channels": 5}, ValueError,
     "hidden_channels must be an int >= 6 \\(2 \\* channels = 6: .*; got 5"),
    ({"num_residual_blocks": -1}, ValueError, "num_residual_blocks"),
    ({"kernel_size": 4}, ValueError, "kernel_size must be an odd int >= 3.*; got 4"),
    ({"kernel_size": 1}, ValueError, "kernel_size must be .*; got 1"),
    ({"num_classes": 0}, ValueError, "num_classes must be an int >= 1 or None; got 0"),
    ({"gated": "yes"}, TypeError, "gated"),
    ({"output": "softmax"}, ValueError, "output must be one of .*'logistic_mixture'; got 'softmax'"),
    ({"num_mixtures": 0}, ValueError, "num_mixtures"),
    ({"rngs": 0}, TypeError, "rngs"),
])
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    config = {"image_shape": (6, 6, 1), "rngs": nnx.Rngs(0), **kwargs}
    with pytest.raises(error, match=match):
        PixelCNN(config.pop("image_shape"), **config)


def test_bad_inputs_raise_before_anything_compiles():
    model, conditional = tiny((4, 4, 3)), tiny((4, 4, 3), num_classes=2)
    good = np.zeros((4, 4, 3), np.int32)
    calls = [
        (lambda: model(np.zeros((4, 4, 3), np.int32)), "images must have shape \\[batch, 4, 4, 3\\]"),
        (lambda: model(np.zeros((1, 4, 5, 3), np.int32)), "images must have shape"),
        (lambda: model(np.zeros((1, 4, 4, 3), np.float32)), "images must hold integer.*float32"),
        (lambda: model(np.full((1, 4, 4, 3), 256)), "images must hold pixel values in \\[0, 256\\); got 256"),
        (lambda: model(good[None], labels=np.array([0])), "labels given, but the model is unconditional"),
        (lambda: conditional(good[None], labels=np.array([2])),
         "labels must hold class ids \\(num_classes=2\\) in \\[0, 2\\); got 2"),
        (lambda: conditional.training_step({"images": good[None]}, nnx.Rngs(0)), "batches with 'labels'"),
        (lambda: conditional(good[None], labels=np.array([0, 1])), "labels must be one class id per example"),
        (lambda: model.generate(0, rngs=nnx.Rngs(0)), r"n_samples must be an int >= 1; got 0 \(int\)"),
        (lambda: model.generate(2, -1.0, rngs=nnx.Rngs(0)), "temperature"),
        (lambda: model.generate(2, top_k=0, rngs=nnx.Rngs(0)), "top_k"),
        (lambda: model.generate(2, top_k=257, rngs=nnx.Rngs(0)), "top_k"),
        (lambda: model.generate(2, top_p=1.5, rngs=nnx.Rngs(0)), "top_p"),
        (lambda: model.generate(2, rngs=None), "rngs"),
        (lambda: model.generate(2, rngs=nnx.Rngs(0), class_label=1), "class_label given, but the model is "
                                                                     "unconditional"),
        (lambda: conditional.generate(2, rngs=nnx.Rngs(0), class_label=2), "class_label must hold class ids.*got 2"),
        (lambda: conditional.generate(2, rngs=nnx.Rngs(0), class_label=[0, 1, 1]), "class_label must be one"),
        (lambda: conditional.generate(2, rngs=nnx.Rngs(0), class_label=0.5), "class_label must hold integer"),
        (lambda: model.generate_conditional(0, 2, rngs=nnx.Rngs(0)), "num_classes=None"),
        (lambda: model.inpaint(good.astype(float), good, 2, rngs=nnx.Rngs(0)), "conditioning must hold integer"),
        (lambda: model.inpaint(good[:3], good[:3], 2, rngs=nnx.Rngs(0)), "conditioning must be 4x4"),
        (lambda: model.inpaint(good + 300, good, 2, rngs=nnx.Rngs(0)),
         "conditioning must hold values in \\[0, 255\\], got values from 300"),
        (lambda: model.inpaint(good, good[:, :3], 2, rngs=nnx.Rngs(0)), "mask must have the conditioning's"),
        (lambda: model.inpaint(good, good + 2, 2, rngs=nnx.Rngs(0)), "mask must hold only 0"),
        (lambda: model.inpaint(np.stack([good] * 3), np.ones((3, 4, 4)), 2, rngs=nnx.Rngs(0)),
         "conditioning has 3 images but n_samples=2"),
    ]
    compiled = sample_pixels._cache_size()
    for call, match in calls:
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    assert sample_pixels._cache_size() == compiled
