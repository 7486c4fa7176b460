"""PixelCNN: an autoregressive model of images, one sub-pixel at a time.

An image ``[H, W, C]`` is read as one sequence: raster order over pixels, then
channel order inside a pixel (R → G → B), and the network outputs, at every
sub-pixel, its distribution given all the sub-pixels before it (van den Oord et al.,
2016, "Pixel Recurrent Neural Networks"). Causality comes from masked kernels: each
call multiplies the kernel by a numpy constant (never a Param, never written back),
so it holds under any transform, plain ``jax.grad`` and ``jax.jacobian`` included.
Hidden channels are split into C contiguous groups, one per image channel; at the
centre tap, output group ``c`` reads input groups ``< c`` (mask A, the first layer)
or ``<= c`` (mask B, every later layer), which is what orders R → G → B.

``gated=True`` is the Gated PixelCNN (van den Oord et al., 2016, "Conditional Image
Generation with PixelCNN Decoders"): a vertical stack over the rows above and a
horizontal stack over the pixels to the left, with tanh·sigmoid gates, and no blind
spot. ``output='logistic_mixture'`` replaces the 256-way softmax by PixelCNN++'s
discretized logistic mixture (Salimans et al., 2017), returned as exact
log-probabilities of the 256 values so the loss and the samplers are unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from artrainer.data.images import check_images
from artrainer.metrics import categorical_metrics, element_weights
from artrainer.models.conditioning import batch_class_labels, check_class_labels, sampling_labels
from artrainer.models.config import ConfiguredModel, ModelConfig
from artrainer.models.inputs import check_int_values, host_or_jax_array
from artrainer.module import ARModule
from artrainer.sampling.decode import as_key
from artrainer.sampling.processors import SamplingConfig, sample_from_logits
from artrainer.validation import require_bool, require_choice, require_int

NUM_VALUES = 256
OUTPUTS = ("categorical", "logistic_mixture")
#: PixelCNN++'s floor on the logistic log-scales: sharper bins than this add nothing at 8 bits.
LOG_SCALE_MIN = -7.0


def scale_images(images: jax.Array) -> jax.Array:
    """Pixel values 0..255 to float32 in [-1, 1], the network's input."""
    return images.astype(jnp.float32) * (2.0 / (NUM_VALUES - 1)) - 1.0


def channel_groups(features: int, channels: int, copies: int = 1) -> tuple[int, ...]:
    """The image channel each of ``features`` belongs to: ``channels`` contiguous blocks of
    near-equal size, laid out ``copies`` times (the value and gate halves of a gated conv)."""
    per_copy = features // copies
    return tuple(np.tile(np.arange(per_copy) * channels // per_copy, copies).tolist())


@functools.lru_cache(maxsize=None)
def causal_mask(kernel_shape: tuple[int, int], origin: tuple[int, int], in_groups: tuple[int, ...],
                out_groups: tuple[int, ...], strict: bool) -> np.ndarray:
    """0/1 mask ``[kh, kw, in, out]`` of a kernel whose tap ``origin`` sits on the output pixel.

    Taps in rows above the origin, or left of it in its row, see every channel; at the
    origin, output group g sees input groups < g (``strict``: mask A) or <= g (mask B);
    later taps see nothing.
    """
    rows, cols = np.meshgrid(np.arange(kernel_shape[0]), np.arange(kernel_shape[1]), indexing="ij")
    row, col = origin
    before = ((rows < row) | ((rows == row) & (cols < col)))[..., None, None]
    at_origin = ((rows == row) & (cols == col))[..., None, None]
    ins, outs = np.asarray(in_groups)[:, None], np.asarray(out_groups)[None, :]
    visible_channels = ins < outs if strict else ins <= outs
    return (before | (at_origin & visible_channels)).astype(np.float32)


class MaskedConv(nnx.Module):
    """A convolution whose kernel is multiplied by :func:`causal_mask` on every call.

    The kernel is cropped to the taps that can be visible: its last row is the output
    row and its column ``left`` the output column, so no FLOPs go to rows below. A 1×1
    kernel runs as a matmul over the last axis, which also serves features without
    spatial axes (the head at one pixel during sampling).
    """

    def __init__(self, in_features: int, out_features: int, kernel_shape: tuple[int, int] = (1, 1), *,
                 left: int = 0, strict: bool = False, in_groups: tuple[int, ...], out_groups: tuple[int, ...],
                 rngs: nnx.Rngs):
        height, width = kernel_shape
        self.padding = ((height - 1, 0), (left, width - 1 - left))
        self.origin = (height - 1, left)
        self.strict = strict
        self.in_groups, self.out_groups = in_groups, out_groups
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(
            rngs.params(), (height, width, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        mask = causal_mask(kernel.shape[:2], self.origin, self.in_groups, self.out_groups, self.strict)
        kernel = kernel * jnp.asarray(mask, kernel.dtype)
        x = x.astype(kernel.dtype)  # compute in the weights' dtype (bf16 under the Trainer's bf16)
        if kernel.shape[:2] == (1, 1):
            y = x @ kernel[0, 0]
        else:
            y = lax.conv_general_dilated(x, kernel, (1, 1), self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...]


class ResidualBlock(nnx.Module):
    """PixelCNN's bottleneck block: 1×1 (halve) → 3×3 → 1×1 (restore), all mask B, plus the input."""

    def __init__(self, features: int, channels: int, *, rngs: nnx.Rngs):
        half = features // 2
        groups, half_groups = channel_groups(features, channels), channel_groups(half, channels)
        self.reduce = MaskedConv(features, half, in_groups=groups, out_groups=half_groups, rngs=rngs)
        self.conv = MaskedConv(half, half, (2, 3), left=1, in_groups=half_groups, out_groups=half_groups,
                               rngs=rngs)
        self.expand = MaskedConv(half, features, in_groups=half_groups, out_groups=groups, rngs=rngs)

    def __call__(self, h: jax.Array, cond) -> jax.Array:
        y = self.conv(jax.nn.relu(self.reduce(jax.nn.relu(h) + cond)))
        return h + self.expand(jax.nn.relu(y))


def _gate(x: jax.Array) -> jax.Array:
    value, gate = jnp.split(x, 2, axis=-1)
    return jnp.tanh(value) * jax.nn.sigmoid(gate)


def _shift_down(x: jax.Array) -> jax.Array:
    """Row i gets row i - 1 (zeros on top): vertical features reach row i from rows above only."""
    return jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))


class GatedLayer(nnx.Module):
    """One Gated PixelCNN layer (van den Oord et al. 2016, fig. 2).

    The vertical stack convolves rows at and above its own, all channels; it reaches the
    horizontal stack only shifted down a row, so every pixel gets the rows strictly
    above it. The horizontal stack reads pixels to its left through a 1×(k//2 + 1)
    mask-B kernel, adds the vertical features, gates, and keeps a residual connection.
    """

    def __init__(self, features: int, channels: int, kernel_size: int, *, rngs: nnx.Rngs):
        half = kernel_size // 2
        groups = channel_groups(features, channels)
        self.vertical = nnx.Conv(features, 2 * features, (half + 1, kernel_size),
                                 padding=((half, 0), (half, half)), rngs=rngs)
        self.link = nnx.Linear(2 * features, 2 * features, rngs=rngs)
        self.horizontal = MaskedConv(features, 2 * features, (1, half + 1), left=half, in_groups=groups,
                                     out_groups=channel_groups(2 * features, channels, copies=2), rngs=rngs)
        self.out = MaskedConv(features, features, in_groups=groups, out_groups=groups, rngs=rngs)

    def __call__(self, v: jax.Array, h: jax.Array, cond) -> tuple[jax.Array, jax.Array]:
        v_features = self.vertical(v + cond)
        h_features = self.horizontal(h + cond) + self.link(_shift_down(v_features))
        return _gate(v_features), h + self.out(_gate(h_features))


def discretized_logistic_mixture_log_probs(params: jax.Array) -> jax.Array:
    """Exact log-probabilities ``[..., 256]`` of the pixel values under a logistic mixture.

    ``params [..., 3K]`` holds K mixture logits, K means (in the [-1, 1] pixel scale)
    and K log-scales. Value v owns the interval ``[(2v - 1)/255 - 1, (2v + 1)/255 - 1]``,
    widened to -∞ for 0 and +∞ for 255, so the 256 probabilities sum to 1. The mass of
    one logistic between standardised edges l < u is computed in log space as
    ``log σ(u) + log σ(-l) + log(1 - exp(-(u - l)))``: no cancellation anywhere, and the
    infinite edges are constants, so gradients stay finite.
    """
    params = params.astype(jnp.float32)
    logits, means, log_scales = jnp.split(params, 3, axis=-1)
    inv_scales = jnp.exp(-jnp.maximum(log_scales, LOG_SCALE_MIN))[..., None]          # [..., K, 1]
    inner_edges = jnp.arange(1, NUM_VALUES, dtype=jnp.float32) * (2.0 / 255) - 1.0 - 1.0 / 255
    z = (inner_edges - means[..., None]) * inv_scales                                  # [..., K, 255]
    infinite = jnp.full(z.shape[:-1] + (1,), jnp.inf, z.dtype)
    lower, upper = jnp.concatenate([-infinite, z], -1), jnp.concatenate([z, infinite], -1)
    width = jnp.log(-jnp.expm1(-(2.0 / 255) * inv_scales))                             # inner bins
    edge = np.isin(np.arange(NUM_VALUES), (0, NUM_VALUES - 1))
    log_mass = jax.nn.log_sigmoid(upper) + jax.nn.log_sigmoid(-lower) + jnp.where(edge, 0.0, width)
    log_weights = jax.nn.log_softmax(logits, axis=-1)[..., None]
    return jax.nn.logsumexp(log_mass + log_weights, axis=-2)


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig(ModelConfig):
    """A :class:`PixelCNN`'s architecture, checked on construction (``image_shape`` is
    stored as a tuple of ints, also when it comes as a JSON list)."""

    image_shape: tuple[int, int, int]
    num_layers: int = 7
    hidden_channels: int = 128
    num_residual_blocks: int = 5
    num_classes: int | None = None
    kernel_size: int = 7
    gated: bool = False
    output: str = "categorical"
    num_mixtures: int = 5

    def __post_init__(self):
        shape = self.image_shape
        allowed = "(height, width, channels), three ints >= 1"
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"image_shape must be {allowed}; got {shape!r:.60} ({type(shape).__name__})")
        if len(shape) != 3:
            raise ValueError(f"image_shape must be {allowed}; got {shape!r:.60} ({len(shape)} values)")
        shape = tuple(require_int(f"image_shape[{i}]", d, minimum=1) for i, d in enumerate(shape))
        channels = shape[2]
        self._store(
            image_shape=shape,
            num_layers=require_int("num_layers", self.num_layers, minimum=1),
            num_residual_blocks=require_int("num_residual_blocks", self.num_residual_blocks, minimum=0),
            hidden_channels=require_int(
                "hidden_channels", self.hidden_channels, minimum=2 * channels,
                why=f"2 * channels = {2 * channels}: each image channel needs hidden channels of its own, "
                    "also in the halved bottleneck"),
            kernel_size=require_int("kernel_size", self.kernel_size, minimum=3, ok=lambda k: k % 2 == 1,
                                    allowed="an odd int >= 3", why="so the kernel has a centre tap"),
            num_classes=require_int("num_classes", self.num_classes, minimum=1, optional=True),
            gated=require_bool("gated", self.gated),
            output=require_choice("output", self.output, OUTPUTS),
            num_mixtures=require_int("num_mixtures", self.num_mixtures, minimum=1))


class PixelCNN(ConfiguredModel, ARModule):
    """Masked-convolution autoregressive model of int images ``[B, H, W, C]`` in [0, 255].

    ``model(images)`` returns ``{'logits': [B, H, W, C, 256]}``: the logits at a
    sub-pixel predict it from the sub-pixels before it (raster order, then R → G → B);
    with ``output='logistic_mixture'`` they are exact log-probabilities.

    Layout: a mask-A ``kernel_size`` conv, ``num_layers - 1`` mask-B ``kernel_size``
    convs, ``num_residual_blocks`` bottleneck blocks, then a two-layer 1×1 head. With
    ``gated=True`` the first layer is a vertical/horizontal stack pair, and every later
    layer and block is a :class:`GatedLayer` (``kernel_size``, resp. 3 for the blocks).
    ``num_classes`` adds ``class_embedding(labels)`` to the input of every layer after
    the first and of the head; a subclass that sets ``class_embedding`` itself (the
    user guide's ``ConditionalPixelCNN``) is conditioned the same way. The arguments
    (apart from ``rngs``) may instead come as ``config=PixelCNNConfig(...)``; see
    :mod:`artrainer.models.config`.
    """

    input_key = "images"
    config_class = PixelCNNConfig

    def __init__(self, image_shape: tuple[int, int, int] | None = None, num_layers: int = 7,
                 hidden_channels: int = 128, num_residual_blocks: int = 5, *, rngs: nnx.Rngs,
                 num_classes: int | None = None, kernel_size: int = 7, gated: bool = False,
                 output: str = "categorical", num_mixtures: int = 5, config: PixelCNNConfig | None = None):
        self._configure(config, PixelCNN.__init__, locals())
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs; got {type(rngs).__name__}")
        config = self.config
        channels, kernel_size = config.image_shape[2], config.kernel_size

        features, half = config.hidden_channels, kernel_size // 2
        groups = channel_groups(features, channels)
        if config.gated:
            self.vertical_stem = nnx.Conv(channels, features, (half + 1, kernel_size),
                                          padding=((half, 0), (half, half)), rngs=rngs)
            self.stem = MaskedConv(channels, features, (1, half + 1), left=half, strict=True,
                                   in_groups=tuple(range(channels)), out_groups=groups, rngs=rngs)
            self.layers = nnx.List([GatedLayer(features, channels, kernel_size, rngs=rngs)
                                    for _ in range(config.num_layers - 1)])
            self.blocks = nnx.List([GatedLayer(features, channels, 3, rngs=rngs)
                                    for _ in range(config.num_residual_blocks)])
        else:
            self.stem = MaskedConv(channels, features, (half + 1, kernel_size), left=half, strict=True,
                                   in_groups=tuple(range(channels)), out_groups=groups, rngs=rngs)
            self.layers = nnx.List([MaskedConv(features, features, (half + 1, kernel_size), left=half,
                                               in_groups=groups, out_groups=groups, rngs=rngs)
                                    for _ in range(config.num_layers - 1)])
            self.blocks = nnx.List([ResidualBlock(features, channels, rngs=rngs)
                                    for _ in range(config.num_residual_blocks)])
        per_channel = NUM_VALUES if config.output == "categorical" else 3 * config.num_mixtures
        self.head_hidden = MaskedConv(features, features, in_groups=groups, out_groups=groups, rngs=rngs)
        self.head_out = MaskedConv(features, channels * per_channel, in_groups=groups,
                                   out_groups=channel_groups(channels * per_channel, channels), rngs=rngs)
        # nnx.data: a subclass may assign an embedding here later (the guide's ConditionalPixelCNN).
        num_classes = config.num_classes
        self.class_embedding = nnx.data(nnx.Embed(num_classes, features, rngs=rngs) if num_classes else None)

    @property
    def conditional(self) -> bool:
        """Whether the model takes class labels (it has a ``class_embedding``)."""
        return self.class_embedding is not None

    # -- forward -------------------------------------------------------------------------
    def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None, training: bool = False,
                 labels: jax.Array | None = None) -> dict[str, jax.Array]:
        """``{'logits': [B, H, W, C, 256]}`` of int ``images``.

        ``labels [B]`` condition a class-conditional model (without them no class bias is
        added). ``rngs`` and ``training`` are the ARModule interface; there is no dropout.
        """
        images = self._check_images(images)
        if labels is not None:
            labels = check_class_labels(labels, self._label_count, images.shape[0])
        return {"logits": self.logits_from_float(scale_images(images), labels=labels)}

    def logits_from_float(self, x: jax.Array, *, labels: jax.Array | None = None) -> jax.Array:
        """Logits ``[B, H, W, C, 256]`` of images already scaled to [-1, 1] floats.

        The network of ``__call__`` without the int input, so it is differentiable in the
        pixels: the causality tests take its Jacobian.
        """
        return self._head(self._features(x, self._class_bias(labels)))

    def _class_bias(self, labels: jax.Array | None):
        """What every layer adds to its input: the label embedding ``[B, 1, 1, F]``, or 0."""
        if labels is None:
            return 0.0
        return self.class_embedding(labels)[:, None, None, :]

    def _features(self, x: jax.Array, cond) -> jax.Array:
        """Per-pixel features ``[B, H, W, F]`` the head reads; each sees only earlier sub-pixels."""
        x = x.astype(self.stem.kernel.dtype)  # the weights' dtype: bf16 under the Trainer's bf16
        if self.gated:
            v, h = self.vertical_stem(x), self.stem(x)
            for layer in (*self.layers, *self.blocks):
                v, h = layer(v, h, cond)
        else:
            h = self.stem(x)
            for layer in self.layers:
                h = layer(jax.nn.relu(h) + cond)
            for block in self.blocks:
                h = block(h, cond)
        return jax.nn.relu(h) + cond

    def _head(self, features: jax.Array) -> jax.Array:
        """Features ``[..., F]`` to logits (or mixture log-probabilities) ``[..., C, 256]``."""
        out = self.head_out(jax.nn.relu(self.head_hidden(features)))
        out = out.reshape(*out.shape[:-1], self.image_shape[2], -1)
        if self.output == "logistic_mixture":
            return discretized_logistic_mixture_log_probs(out)
        return out

    # -- training ------------------------------------------------------------------------
    def forward_kwargs(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return batch_class_labels(batch, self._label_count, "PixelCNN")

    def loss_fn(self, batch, outputs, *, rngs=None) -> dict[str, jax.Array]:
        """Cross-entropy per sub-pixel (nats); ``bits_per_dim`` = an image's NLL / (H·W·C·ln 2).

        Rows whose ``example_mask`` is 0 (a loader's padding) do not count; ``weight`` is
        the number of sub-pixels that do.
        """
        targets = batch[self.input_key]
        return categorical_metrics(outputs["logits"], targets, element_weights(batch, targets.shape))

    # -- sampling ------------------------------------------------------------------------
    def generate(self, n_samples: int, temperature: float = 1.0, *, rngs, class_label=None,
                 top_k: int | None = None, top_p: float | None = None) -> jax.Array:
        """Sample int32 images ``[n_samples, H, W, C]`` in [0, 255], one sub-pixel at a time.

        ``temperature=0`` (or ``top_k=1``) is greedy. ``class_label`` (an int, or one per
        sample) conditions a class-conditional model. One compiled loop, see :func:`sample_pixels`.
        """
        n_samples = require_int("n_samples", n_samples, minimum=1)
        canvas = np.zeros((n_samples, *self.image_shape), np.int32)
        return self._sample(canvas, np.zeros(canvas.shape, bool), rngs=rngs, class_label=class_label,
                            temperature=temperature, top_k=top_k, top_p=top_p)

    def generate_conditional(self, class_label, n_samples: int | None = None, *, rngs,
                             temperature: float = 1.0, top_k: int | None = None,
                             top_p: float | None = None) -> jax.Array:
        """:meth:`generate` of ``class_label`` (an int, or an int array with one label per
        sample); ``n_samples`` defaults to the number of labels given."""
        if not self.conditional:
            raise ValueError("generate_conditional needs a class-conditional model; this one has "
                             "num_classes=None (construct it with num_classes=...)")
        if class_label is None:
            raise ValueError("class_label must be an int class id, or an int array of them; got None")
        if n_samples is None:
            n_samples = max(np.size(class_label), 1)
        return self.generate(n_samples, temperature, rngs=rngs, class_label=class_label, top_k=top_k, top_p=top_p)

    def inpaint(self, conditioning, mask, n_samples: int | None = None, temperature: float = 1.0, *, rngs,
                class_label=None, top_k: int | None = None, top_p: float | None = None) -> jax.Array:
        """Complete ``conditioning`` where ``mask`` is 0, keeping it exactly where ``mask`` is 1.

        ``conditioning`` is int ``[H, W, C]`` (shared by all ``n_samples``) or ``[n, H, W, C]``;
        ``mask`` has its shape, or that shape without the channel axis (whole pixels).
        Unknown sub-pixels are sampled in the model's order from everything before them,
        known ones included; they cannot see known pixels that come later.
        """
        images = self._host_images(conditioning, "conditioning")
        mask = np.asarray(mask)
        shape = np.shape(conditioning)
        if mask.shape not in (shape, shape[:-1]):
            raise ValueError(f"mask must have the conditioning's shape {shape} or {shape[:-1]} "
                             f"(1 = keep, 0 = generate); got shape {mask.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must hold only 0 (generate) and 1 (keep); got values "
                             f"{np.unique(mask[~np.isin(mask, (0, 1))])[:5].tolist()}")
        known = np.broadcast_to((mask if mask.shape == shape else mask[..., None]).astype(bool), shape)
        known = known.reshape(images.shape)
        rows = images.shape[0]
        if n_samples is None:
            n_samples = rows
        n_samples = require_int("n_samples", n_samples, minimum=1)
        if rows not in (1, n_samples):
            raise ValueError(f"conditioning has {rows} images but n_samples={n_samples}; give one image "
                             "(shared by every sample) or one per sample")
        images = np.broadcast_to(np.where(known, images, 0), (n_samples, *self.image_shape))
        known = np.broadcast_to(known, images.shape)
        return self._sample(images, known, rngs=rngs, class_label=class_label,
                            temperature=temperature, top_k=top_k, top_p=top_p)

    def _sample(self, canvas: np.ndarray, known: np.ndarray, *, rngs, class_label, temperature,
                top_k, top_p) -> jax.Array:
        """Host-side checks, then the compiled loop."""
        config = SamplingConfig.create(temperature=temperature, top_k=top_k, top_p=top_p, vocab_size=NUM_VALUES)
        labels = sampling_labels(class_label, self._label_count, len(canvas))
        key = as_key(rngs)
        graphdef, state = nnx.split(self)
        return sample_pixels(graphdef, state, jnp.asarray(canvas), jnp.asarray(known), labels, key, config=config)

    def log_samples(self, samples: jax.Array, logger: Any, step: int) -> None:
        """The samples as one image grid."""
        logger.log_images("samples", jax.device_get(samples), step)

    # -- input checks ------------------------------------------------------------------------
    def _check_images(self, images) -> jax.Array:
        """``images`` as a jax array, checked: shape and dtype always; values when concrete or
        on the host (a traced batch cannot be read; see :mod:`artrainer.models.inputs`)."""
        images = host_or_jax_array(images, "images", what="pixel values")
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images must have shape [batch, {', '.join(map(str, self.image_shape))}]; "
                             f"got shape {images.shape}")
        check_int_values(images, "images", NUM_VALUES, what="pixel values")
        return jnp.asarray(images)

    @property
    def _label_count(self) -> int | None:
        """Number of classes the labels index (None: unconditional), also for a subclass that
        sets ``class_embedding`` itself."""
        return self.class_embedding.num_embeddings if self.conditional else None

    def _host_images(self, images, name: str) -> np.ndarray:
        """``images`` ([H, W, C] or [n, H, W, C] ints in [0, 255]) as int32 ``[n, H, W, C]``."""
        array = np.asarray(images)
        height, width, channels = self.image_shape
        array = check_images(array[None] if array.ndim == 3 else array, name=name, channels=channels,
                             size=(height, width))
        return array.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def sample_pixels(graphdef, state, canvas: jax.Array, known: jax.Array, labels: jax.Array | None,
                  key: jax.Array, *, config: SamplingConfig) -> jax.Array:
    """Fill the entries of ``canvas [n, H, W, C]`` where ``known`` is False, in the model's order.

    One ``fori_loop`` over the H·W·C sub-pixels, compiled once per (model structure,
    shapes, sampling config). Each step runs the network on the whole fixed-size canvas
    (the masks keep later entries out), applies the head at the current pixel only, and
    samples there; known entries are kept, and a step where every row is known skips
    the network.
    """
    model = nnx.merge(graphdef, state)
    _, height, width, channels = canvas.shape
    cond = model._class_bias(labels)

    def step(index, canvas):
        row, rest = jnp.divmod(index, width * channels)
        col, channel = jnp.divmod(rest, channels)
        current, keep = canvas[:, row, col, channel], known[:, row, col, channel]

        def draw():
            features = model._features(scale_images(canvas), cond)[:, row, col]
            logits = model._head(features)[:, channel]
            return jnp.where(keep, current, sample_from_logits(jax.random.fold_in(key, index), logits, config))

        return canvas.at[:, row, col, channel].set(lax.cond(jnp.all(keep), lambda: current, draw))

    return lax.fori_loop(0, height * width * channels, step, canvas)
