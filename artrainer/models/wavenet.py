"""WaveNet: an autoregressive model of raw audio, one mu-law sample at a time.

van den Oord et al., 2016, "WaveNet: A Generative Model for Raw Audio": stacks of
dilated causal convolutions (dilations 1, 2, 4, … restarting each stack) with gated
tanh·sigmoid units, residual connections inside the stack and skip connections
summed into a two-layer head that outputs a 256-way softmax over mu-law codes.

Conventions. The network reads the waveform shifted right by one sample (a silent
start sample first), so ``logits[:, t]`` predict sample ``t`` from samples before it
and the first sample is modelled too. A prediction sees the ``receptive_field - 1``
samples before it: ``receptive_field = (kernel_size - 1) · Σ dilations + 2``, the span
from the oldest sample it reads to the sample it predicts.

Generation (:func:`sample_waveform`) is the fast algorithm of Paine et al., 2016
("Fast Wavenet Generation Algorithm"): each layer keeps a queue of its last
``(kernel_size - 1) · dilation`` inputs, so a new sample costs one position per
layer, however long the receptive field. ``method='naive'`` recomputes the whole
receptive field every sample; both share one step function, so they agree sample
for sample, and the naive path is the baseline the fast one is measured against.
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

from artrainer.data.audio import mu_law_decode
from artrainer.metrics import categorical_metrics, element_weights
from artrainer.models.conditioning import batch_class_labels, check_class_labels, sampling_labels
from artrainer.models.config import ConfiguredModel, ModelConfig
from artrainer.models.inputs import check_int_values, check_mask_shape, host_or_jax_array
from artrainer.module import ARModule
from artrainer.sampling.decode import as_key, check_prompt
from artrainer.sampling.processors import SamplingConfig, sample_from_logits
from artrainer.validation import require_bool, require_int

GENERATION_METHODS = ("fast", "naive")
#: Longest generate() output: 2**24 codes (17 minutes at 16 kHz) per sample. The scan's
#: buffers grow with it, and lengths past int32 cannot even reach the compiled loop.
MAX_GENERATE_LENGTH = 2**24


class CausalConv(nnx.Module):
    """A dilated causal 1-D convolution written as one matmul over its gathered taps.

    Tap ``j`` of the output at ``t`` reads the input at ``t - (kernel_size - 1 - j) · dilation``.
    :meth:`__call__` gathers the taps of every position (zeros before the start);
    :meth:`step` takes the taps of one position from a generation queue. Both then
    run the same contraction, so full and incremental passes compute the same thing.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, dilation: int, *,
                 rngs: nnx.Rngs):
        self.kernel_size, self.dilation = kernel_size, dilation
        self.kernel = nnx.Param(nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)(
            rngs.params(), (kernel_size, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, in]`` to ``[B, T, out]``."""
        length = x.shape[1]
        span = (self.kernel_size - 1) * self.dilation
        padded = jnp.pad(x, ((0, 0), (span, 0), (0, 0)))
        taps = jnp.stack([padded[:, j * self.dilation: j * self.dilation + length]
                          for j in range(self.kernel_size)], axis=2)
        return self.step(taps)

    def step(self, taps: jax.Array) -> jax.Array:
        """Taps ``[..., kernel_size, in]`` (oldest first) to outputs ``[..., out]``."""
        kernel = self.kernel[...]
        return jnp.einsum("...ki,kio->...o", taps.astype(kernel.dtype), kernel) + self.bias[...]


class ResidualLayer(nnx.Module):
    """Dilated conv → (+ class bias) → tanh·sigmoid gate → residual and skip 1×1 convs."""

    def __init__(self, residual_channels: int, dilation_channels: int, skip_channels: int,
                 kernel_size: int, dilation: int, num_classes: int | None, *, rngs: nnx.Rngs):
        self.conv = CausalConv(residual_channels, 2 * dilation_channels, kernel_size, dilation, rngs=rngs)
        self.residual_out = nnx.Linear(dilation_channels, residual_channels, rngs=rngs)
        self.skip_out = nnx.Linear(dilation_channels, skip_channels, rngs=rngs)
        self.class_embedding = nnx.data(
            nnx.Embed(num_classes, 2 * dilation_channels, rngs=rngs) if num_classes else None)

    def condition(self, labels: jax.Array | None):
        """What this layer adds to its gate pre-activations: ``[B, 2·dilation]`` or 0."""
        return 0.0 if labels is None else self.class_embedding(labels)

    def __call__(self, h: jax.Array, cond) -> tuple[jax.Array, jax.Array]:
        """Full sequence: ``h [B, T, R]`` to (next ``h``, skip ``[B, T, S]``)."""
        cond = cond[:, None] if jnp.ndim(cond) == 2 else cond
        return self.gate_out(h, self.conv(h) + cond)

    def gate_out(self, h: jax.Array, pre: jax.Array) -> tuple[jax.Array, jax.Array]:
        value, gate = jnp.split(pre, 2, axis=-1)
        z = jnp.tanh(value) * jax.nn.sigmoid(gate)
        return h + self.residual_out(z), self.skip_out(z)


@nnx.remat
def _rematerialised_layer(layer: ResidualLayer, h: jax.Array, cond) -> tuple[jax.Array, jax.Array]:
    """A layer whose activations are recomputed in the backward pass instead of stored."""
    return layer(h, cond)


@dataclasses.dataclass(frozen=True)
class WaveNetConfig(ModelConfig):
    """A :class:`WaveNet`'s architecture and audio settings, checked on construction."""

    num_layers: int = 30
    num_stacks: int = 3
    residual_channels: int = 128
    dilation_channels: int = 256
    skip_channels: int = 512
    quantization_channels: int = 256
    kernel_size: int = 2
    num_classes: int | None = None
    sample_rate: int = 16000
    remat: bool = False

    def __post_init__(self):
        minimums = {"num_layers": 1, "num_stacks": 1, "residual_channels": 1, "dilation_channels": 1,
                    "skip_channels": 1, "quantization_channels": 2, "kernel_size": 2, "sample_rate": 1}
        self._store(**{name: require_int(name, getattr(self, name), minimum=minimum)
                       for name, minimum in minimums.items()})
        stacks = self.num_stacks
        require_int("num_layers", self.num_layers, ok=lambda layers: layers % stacks == 0,
                    allowed=f"a multiple of num_stacks={stacks}", why="every stack repeats the same dilations")
        self._store(num_classes=require_int("num_classes", self.num_classes, minimum=1, optional=True),
                    remat=require_bool("remat", self.remat))


class WaveNet(ConfiguredModel, ARModule):
    """Dilated causal model of mu-law audio codes ``[B, T]`` in ``[0, quantization_channels)``.

    ``model(waveform)`` returns ``{'logits': [B, T, quantization_channels]}`` where the
    logits at ``t`` predict sample ``t`` from the samples before it. ``num_layers`` are
    split into ``num_stacks`` equal stacks of dilations ``1, 2, …, 2**(per_stack - 1)``.
    ``num_classes`` (speakers, digits) embeds a global label into every layer's gate;
    batches then carry ``'labels'``. ``sample_rate`` is what the codes are sampled at,
    for audio summaries and wav files. The arguments (apart from ``rngs``) may instead
    come as ``config=WaveNetConfig(...)``; see :mod:`artrainer.models.config`.
    """

    input_key = "waveform"
    config_class = WaveNetConfig

    def __init__(self, num_layers: int = 30, num_stacks: int = 3, residual_channels: int = 128,
                 dilation_channels: int = 256, skip_channels: int = 512, quantization_channels: int = 256,
                 kernel_size: int = 2, *, rngs: nnx.Rngs, num_classes: int | None = None,
                 sample_rate: int = 16000, remat: bool = False, config: WaveNetConfig | None = None):
        self._configure(config, WaveNet.__init__, locals())
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs; got {type(rngs).__name__}")
        config = self.config
        per_stack = config.num_layers // config.num_stacks
        self.dilations = tuple(2 ** (i % per_stack) for i in range(config.num_layers))
        #: The code of silence: the sample the network reads before the first one.
        self.start_code = config.quantization_channels // 2

        self.input_embedding = nnx.Embed(config.quantization_channels, config.residual_channels, rngs=rngs)
        self.layers = nnx.List([
            ResidualLayer(config.residual_channels, config.dilation_channels, config.skip_channels,
                          config.kernel_size, dilation, config.num_classes, rngs=rngs)
            for dilation in self.dilations])
        self.head_hidden = nnx.Linear(config.skip_channels, config.skip_channels, rngs=rngs)
        self.head_out = nnx.Linear(config.skip_channels, config.quantization_channels, rngs=rngs)

    @property
    def receptive_field(self) -> int:
        """Samples from the oldest one a prediction reads to the one it predicts, inclusive."""
        return (self.kernel_size - 1) * sum(self.dilations) + 2

    # -- forward -------------------------------------------------------------------------
    def __call__(self, waveform: jax.Array, *, rngs: nnx.Rngs | None = None, training: bool = False,
                 labels: jax.Array | None = None) -> dict[str, jax.Array]:
        """``{'logits': [B, T, Q]}`` of int mu-law codes ``waveform [B, T]``; ``labels [B]``
        condition a class-conditional model. There is no dropout, so ``training`` and
        ``rngs`` change nothing."""
        waveform = self._check_codes(waveform)
        if labels is not None:
            labels = check_class_labels(labels, self.num_classes, waveform.shape[0])
        inputs = jnp.concatenate([jnp.full_like(waveform[:, :1], self.start_code), waveform[:, :-1]], axis=1)
        return {"logits": self.logits_from_embedded(self.input_embedding(inputs), labels=labels)}

    def logits_from_one_hot(self, one_hot: jax.Array, *, labels: jax.Array | None = None) -> jax.Array:
        """Logits of a one-hot (or any real-valued) waveform ``[B, T, Q]``: :meth:`__call__`
        made differentiable in its input, for the causality tests."""
        start = jax.nn.one_hot(jnp.full(one_hot.shape[:1] + (1,), self.start_code), self.quantization_channels)
        inputs = jnp.concatenate([start.astype(one_hot.dtype), one_hot[:, :-1]], axis=1)
        return self.logits_from_embedded(inputs @ self.input_embedding.embedding[...], labels=labels)

    def logits_from_embedded(self, h: jax.Array, *, labels: jax.Array | None = None) -> jax.Array:
        """The stack and head over embedded (already shifted) inputs ``[B, T, R]``."""
        h = h.astype(self.head_out.kernel.dtype)  # the weights' dtype: bf16 under the Trainer's bf16
        skips = 0.0
        run = _rematerialised_layer if self.remat else ResidualLayer.__call__
        for layer in self.layers:
            h, skip = run(layer, h, layer.condition(labels))
            skips = skips + skip
        return self.head(skips)

    def head(self, skips: jax.Array) -> jax.Array:
        """Summed skip connections to logits."""
        return self.head_out(jax.nn.relu(self.head_hidden(jax.nn.relu(skips))))

    # -- training ------------------------------------------------------------------------
    def forward_kwargs(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return batch_class_labels(batch, self.num_classes, "WaveNet")

    def loss_fn(self, batch, outputs, *, rngs=None) -> dict[str, jax.Array]:
        """Cross-entropy per audio sample (nats); ``bits_per_dim`` is bits per sample.

        Samples whose ``'mask'`` is 0 (padding after a short recording) and rows whose
        ``example_mask`` is 0 do not count; ``weight`` is the number that do.
        """
        check_mask_shape(batch, self.input_key)
        targets = batch[self.input_key]
        weights = element_weights(batch, targets.shape, mask=batch.get("mask"))
        return categorical_metrics(outputs["logits"], targets, weights)

    # -- sampling ------------------------------------------------------------------------
    def generate(self, n_samples: int, max_length: int, temperature: float = 1.0, *, rngs,
                 prompt=None, class_label=None, top_k: int | None = None, top_p: float | None = None,
                 method: str = "fast") -> jax.Array:
        """Sample int32 mu-law codes ``[n_samples, max_length]``, the prompt included.

        ``prompt`` (codes ``[P]`` shared by every sample, or ``[n_samples, P]``) is
        continued; ``class_label`` (an int, or one per sample) conditions a conditional
        model; ``temperature=0`` (or ``top_k=1``) is greedy. ``method='fast'`` uses the
        per-layer queues, ``'naive'`` recomputes the receptive field every sample; for the
        same ``rngs`` both return the same samples. One compiled ``lax.scan`` per shape;
        ``max_length`` is at most :data:`MAX_GENERATE_LENGTH`.
        """
        n_samples = require_int("n_samples", n_samples, minimum=1)
        max_length = require_int("max_length", max_length, minimum=1, maximum=MAX_GENERATE_LENGTH)
        if method not in GENERATION_METHODS:
            raise ValueError(f"method={method!r} is not supported; use one of {GENERATION_METHODS}")
        config = SamplingConfig.create(temperature=temperature, top_k=top_k, top_p=top_p,
                                       vocab_size=self.quantization_channels)
        if prompt is None:
            prompt = np.zeros((n_samples, 0), np.int32)
        else:
            prompt = check_prompt(prompt, n_samples=n_samples, vocab_size=self.quantization_channels,
                                  max_length=max_length)
        labels = sampling_labels(class_label, self.num_classes, n_samples)
        graphdef, state = nnx.split(self)
        return sample_waveform(graphdef, state, jnp.asarray(prompt), labels, as_key(rngs),
                               max_length=max_length, config=config, method=method)

    def to_audio(self, codes) -> np.ndarray:
        """Mu-law codes to float32 audio in [-1, 1]."""
        return np.asarray(mu_law_decode(np.asarray(jax.device_get(codes)), self.quantization_channels))

    def log_samples(self, samples: jax.Array, logger: Any, step: int) -> None:
        """The samples as audio summaries ``samples/<i>``."""
        logger.log_audio("samples", self.to_audio(samples), step, sample_rate=self.sample_rate)

    # -- input checks ----------------------------------------------------------------------
    def _check_codes(self, waveform) -> jax.Array:
        """``waveform`` as a jax array, checked: shape and dtype always; values when concrete or
        on the host (a traced batch cannot be read; see :mod:`artrainer.models.inputs`)."""
        waveform = host_or_jax_array(waveform, "waveform", what="mu-law codes")
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be mu-law codes of shape [batch, time]; got shape {waveform.shape}")
        check_int_values(waveform, "waveform", self.quantization_channels, what="mu-law codes",
                         hint=" (encode float audio with artrainer.data.audio.mu_law_encode)")
        return jnp.asarray(waveform)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_length", "config", "method"))
def sample_waveform(graphdef, state, prompt: jax.Array, labels: jax.Array | None, key: jax.Array, *,
                    max_length: int, config: SamplingConfig, method: str) -> jax.Array:
    """``max_length`` codes per row of ``prompt [n, P]`` (kept as given), one ``lax.scan``.

    Step ``t`` feeds sample ``t - 1`` (the start code at ``t = 0``) to the network, gets
    the logits of sample ``t`` and draws it with ``fold_in(key, t)`` unless the prompt
    fixes it. ``'fast'`` carries one queue per layer: a ring buffer of that layer's last
    ``(kernel_size - 1) · dilation`` inputs, read at the tap offsets and written at
    ``t mod length``. ``'naive'`` carries the embedded inputs and reruns the full
    network on the receptive field ending at ``t``.
    """
    model = nnx.merge(graphdef, state)
    n, prompt_length = prompt.shape
    conds = [layer.condition(labels) for layer in model.layers]
    prompt = jnp.pad(prompt, ((0, 0), (0, max_length - prompt_length)))

    def draw(t, logits):
        sampled = sample_from_logits(jax.random.fold_in(key, t), logits, config).astype(jnp.int32)
        return jnp.where(t < prompt_length, prompt[:, t], sampled)

    if method == "fast":
        def fast_step(carry, t):
            previous, queues = carry
            h, skips, new_queues = model.input_embedding(previous), 0.0, []
            h = h.astype(model.head_out.kernel.dtype)
            for layer, cond, queue in zip(model.layers, conds, queues):
                conv, size = layer.conv, queue.shape[1]
                past = [lax.dynamic_index_in_dim(queue, (t - (conv.kernel_size - 1 - j) * conv.dilation) % size,
                                                 axis=1, keepdims=False)
                        for j in range(conv.kernel_size - 1)]
                new_queues.append(lax.dynamic_update_index_in_dim(queue, h, t % size, axis=1))
                h, skip = layer.gate_out(h, conv.step(jnp.stack([*past, h], axis=1)) + cond)
                skips = skips + skip
            sample = draw(t, model.head(skips))
            return (sample, new_queues), sample

        queues = [jnp.zeros((n, (layer.conv.kernel_size - 1) * layer.conv.dilation, model.residual_channels),
                            model.head_out.kernel.dtype) for layer in model.layers]
        start = jnp.full((n,), model.start_code, jnp.int32)
        _, samples = lax.scan(fast_step, (start, queues), jnp.arange(max_length))
        return samples.T

    window = model.receptive_field - 1  # the inputs one prediction reads

    def naive_step(inputs, t):
        # inputs[:, window - 1 + t] is the network's input at time t. Every layer's input is
        # zero before time 0, as the full forward pads it, so the window is masked there.
        h = lax.dynamic_slice_in_dim(inputs, t, window, axis=1)
        started = (t - window + 1 + jnp.arange(window) >= 0)[None, :, None]
        skips = 0.0
        for layer, cond in zip(model.layers, conds):
            h, skip = layer(h, cond)
            h = jnp.where(started, h, 0.0)
            skips = skips + skip[:, -1]
        sample = draw(t, model.head(skips))
        inputs = lax.dynamic_update_index_in_dim(inputs, model.input_embedding(sample).astype(inputs.dtype),
                                                 window + t, axis=1)
        return inputs, sample

    inputs = jnp.zeros((n, window + max_length, model.residual_channels), model.head_out.kernel.dtype)
    inputs = inputs.at[:, window - 1].set(model.input_embedding(jnp.full((n,), model.start_code)))
    _, samples = lax.scan(naive_step, inputs, jnp.arange(max_length))
    return samples.T
