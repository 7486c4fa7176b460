"""TransformerAR: a GPT-style decoder-only language model.

Pre-LayerNorm blocks (``x + attn(LN(x))``, ``x + mlp(LN(x))``), learned or rotary
positions, optionally tied input/output embeddings. Everything numerically delicate
(attention logits and softmax, LayerNorm statistics, RoPE, the loss) runs in float32,
so the model trains under the Trainer's bf16 compute as well as in fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from artrainer.loggers import code_block
from artrainer.metrics import WEIGHT, categorical_metrics, element_weights
from artrainer.models.config import ConfiguredModel, ModelConfig, resolve_config
from artrainer.models.inputs import check_int_values, check_mask_shape, host_or_jax_array
from artrainer.module import ARModule
from artrainer.sampling.beam_search import beam_search
from artrainer.sampling.decode import as_key, check_prompt, decode
from artrainer.sampling.processors import SamplingConfig
from artrainer.validation import require_bool, require_choice, require_int, require_real

POSITION_ENCODINGS = ("learned", "rotary")
ROPE_BASE = 10_000.0

# GPT-2's embedding init: unit-variance rows would make tied logits scale with sqrt(hidden_dim).
_embedding_init = nnx.initializers.normal(stddev=0.02)


def _promote_like_arrays(args, /, *, dtype=None, inexact=True):
    """Compute in the arrays' own dtype. ``nnx.Embed`` freezes its dtype (float32) at init,
    which would silently upcast the whole model when the Trainer casts params to bf16."""
    return dtypes.promote_dtype(args, inexact=inexact)


def apply_rope(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary position embedding of ``x [B, T, H, D]`` at ``positions [T]`` (half-rotation form).

    Channel ``i`` and ``i + D/2`` form a pair rotated by ``position * ROPE_BASE**(-2i/D)``,
    so ``q·k`` depends only on the offset between query and key positions.
    """
    half = x.shape[-1] // 2
    inv_freq = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq      # [T, D/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]  # [T, 1, D/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention, with an optional functional KV cache.

    q, k and v come from one fused projection. The causal mask compares query and key
    *positions* rather than array indices, so the same code serves training (keys =
    this chunk), cached decoding (keys = the whole cache, where slots past the query
    positions are masked) and a learned prefix (keys at position -1, always visible).
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout_rate: float, *,
                 rotary: bool, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.rotary = rotary
        self.qkv = nnx.Linear(hidden_dim, 3 * hidden_dim, rngs=rngs)
        self.out = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x: jax.Array, positions: jax.Array, *, rngs: nnx.Rngs | None, training: bool,
                 cache: dict[str, jax.Array] | None = None,
                 prefix: tuple[jax.Array, jax.Array] | None = None):
        """Returns ``(output, cache)``. ``cache`` = ``{'k', 'v'}`` of shape [B, L, H, D]:
        this chunk's keys and values are written at ``positions`` and attention reads
        the whole cache. ``prefix`` = (k, v) of shape [P, H, D], prepended to the keys."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rotary:
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        key_positions = positions
        if cache is not None:
            start = (0, positions[0], 0, 0)
            cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
                     "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)}
            k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
            key_positions = jnp.arange(k.shape[1])
        if prefix is not None:
            prefix_k, prefix_v = (jnp.broadcast_to(p.astype(q.dtype), (batch, *p.shape)) for p in prefix)
            k, v = jnp.concatenate([prefix_k, k], axis=1), jnp.concatenate([prefix_v, v], axis=1)
            key_positions = jnp.concatenate([jnp.full((prefix[0].shape[0],), -1), key_positions])
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(self.head_dim)
        causal = positions[:, None] >= key_positions[None, :]
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, -1)
        return self.dropout(self.out(y), deterministic=not training, rngs=rngs), cache


class MLP(nnx.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear -> dropout."""

    def __init__(self, hidden_dim: int, feedforward_dim: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(hidden_dim, feedforward_dim, rngs=rngs)
        self.down = nnx.Linear(feedforward_dim, hidden_dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None, training: bool) -> jax.Array:
        return self.dropout(self.down(jax.nn.gelu(self.up(x))), deterministic=not training, rngs=rngs)


class Block(nnx.Module):
    """Pre-LayerNorm residual block: the residual stream itself is never normalised."""

    def __init__(self, hidden_dim: int, num_heads: int, feedforward_dim: int, dropout_rate: float, *,
                 rotary: bool, rngs: nnx.Rngs):
        self.attn_norm = nnx.LayerNorm(hidden_dim, rngs=rngs)
        self.attn = CausalSelfAttention(hidden_dim, num_heads, dropout_rate, rotary=rotary, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(hidden_dim, rngs=rngs)
        self.mlp = MLP(hidden_dim, feedforward_dim, dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, *, rngs: nnx.Rngs | None, training: bool,
                 cache: dict[str, jax.Array] | None = None, prefix=None):
        attended, cache = self.attn(self.attn_norm(x), positions, rngs=rngs, training=training,
                                    cache=cache, prefix=prefix)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x), rngs=rngs, training=training), cache


@functools.partial(nnx.remat, static_argnums=(4,))
def _rematerialised_block(block: Block, h, positions, rngs, training: bool, prefix):
    """A block whose activations are recomputed in the backward pass instead of stored."""
    return block(h, positions, rngs=rngs, training=training, prefix=prefix)[0]


def token_id(name: str, value, vocab_size: int) -> int | None:
    """``value`` if it is None or a token id in ``[0, vocab_size)``."""
    return require_int(name, value, minimum=0, maximum=vocab_size - 1, optional=True,
                       allowed=f"a token id in [0, {vocab_size})")


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """A :class:`TransformerAR`'s architecture and training settings, checked on construction.

    ``feedforward_dim=None`` becomes ``4 * hidden_dim`` here, so the config always holds it.
    """

    vocab_size: int
    sequence_length: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    feedforward_dim: int | None = None
    dropout_rate: float = 0.0
    position_encoding: str = "learned"
    tie_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    remat: bool = False

    def __post_init__(self):
        sizes = {name: require_int(name, getattr(self, name), minimum=1)
                 for name in ("vocab_size", "sequence_length", "hidden_dim", "num_layers", "num_heads")}
        hidden_dim, num_heads = sizes["hidden_dim"], sizes["num_heads"]
        feedforward_dim = 4 * hidden_dim if self.feedforward_dim is None else self.feedforward_dim
        self._store(**sizes, feedforward_dim=require_int("feedforward_dim", feedforward_dim, minimum=1))
        require_int("hidden_dim", hidden_dim, ok=lambda dim: dim % num_heads == 0,
                    allowed=f"an int divisible by num_heads={num_heads}")
        self._store(dropout_rate=require_real("dropout_rate", self.dropout_rate, minimum=0, maximum=1,
                                              max_open=True),
                    position_encoding=require_choice("position_encoding", self.position_encoding,
                                                     POSITION_ENCODINGS))
        if self.position_encoding == "rotary":
            require_int("the head size hidden_dim // num_heads", hidden_dim // num_heads, ok=lambda d: d % 2 == 0,
                        allowed="an even int for position_encoding='rotary' (it rotates channel pairs)")
        self._store(tie_embeddings=require_bool("tie_embeddings", self.tie_embeddings),
                    remat=require_bool("remat", self.remat),
                    pad_token_id=token_id("pad_token_id", self.pad_token_id, self.vocab_size),
                    bos_token_id=token_id("bos_token_id", self.bos_token_id, self.vocab_size))


class TransformerAR(ConfiguredModel, ARModule):
    """GPT-style autoregressive Transformer over token sequences.

    ``model(x)`` maps int tokens ``[B, T]`` (``T <= sequence_length``) to
    ``{'logits': [B, T, vocab_size]}``; ``logits[:, t]`` is the distribution of token
    ``t + 1`` given tokens ``0..t``. ``pad_token_id`` targets never count in the loss;
    ``bos_token_id`` is kept (and logged) for generation. The arguments (apart from
    ``rngs``) may instead come as ``config=TransformerConfig(...)``; see
    :mod:`artrainer.models.config`.
    """

    input_key = "sequences"
    config_class = TransformerConfig

    def __init__(self, vocab_size: int | None = None, sequence_length: int | None = None,
                 hidden_dim: int | None = None, num_layers: int | None = None, num_heads: int | None = None,
                 feedforward_dim: int | None = None, dropout_rate: float = 0.0, *,
                 rngs: nnx.Rngs, position_encoding: str = "learned", tie_embeddings: bool = False,
                 pad_token_id: int | None = None, bos_token_id: int | None = None, remat: bool = False,
                 config: TransformerConfig | None = None):
        self._configure(config, TransformerAR.__init__, locals())
        config = self.config
        hidden_dim, rotary = config.hidden_dim, config.position_encoding == "rotary"

        self.embedding = nnx.Embed(config.vocab_size, hidden_dim, embedding_init=_embedding_init,
                                   promote_dtype=_promote_like_arrays, rngs=rngs)
        if not rotary:
            self.position_embedding = nnx.Embed(config.sequence_length, hidden_dim, embedding_init=_embedding_init,
                                                promote_dtype=_promote_like_arrays, rngs=rngs)
        self.blocks = nnx.List([
            Block(hidden_dim, config.num_heads, config.feedforward_dim, config.dropout_rate, rotary=rotary,
                  rngs=rngs)
            for _ in range(config.num_layers)])
        self.final_norm = nnx.LayerNorm(hidden_dim, rngs=rngs)
        if not config.tie_embeddings:
            self.head = nnx.Linear(hidden_dim, config.vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None,
                 training: bool = False) -> dict[str, jax.Array]:
        x = self._check_tokens(x)
        logits, _ = self._forward(x, jnp.arange(x.shape[1]), rngs=rngs, training=training)
        return {"logits": logits}

    def _forward(self, x, positions, *, rngs=None, training=False, caches=None):
        """Logits of tokens ``x`` at ``positions``, reading and writing ``caches`` if given."""
        h = self.embedding(x)
        if self.position_encoding == "learned":
            # Clamped: slots past sequence_length are never kept, but must stay finite.
            h = h + self.position_embedding(jnp.minimum(positions, self.sequence_length - 1))
        new_caches = []
        for index, block in enumerate(self.blocks):
            if self.remat and caches is None:
                h, cache = _rematerialised_block(block, h, positions, rngs, training, self.layer_prefix(index)), None
            else:
                h, cache = block(h, positions, rngs=rngs, training=training,
                                 cache=None if caches is None else caches[index], prefix=self.layer_prefix(index))
            new_caches.append(cache)
        h = self.final_norm(h)
        logits = self.embedding.attend(h) if self.tie_embeddings else self.head(h)
        return logits, (None if caches is None else new_caches)

    def layer_prefix(self, layer: int):
        """Keys and values every query of ``layer`` attends to first; None here (see prefix tuning)."""
        return None

    # -- KV cache -------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> list[dict[str, jax.Array]]:
        """Empty per-layer key/value caches of ``max_length`` slots."""
        shape = (batch_size, max_length, self.num_heads, self.hidden_dim // self.num_heads)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in self.blocks]

    def forward_with_cache(self, tokens: jax.Array, cache=None, *, index=0,
                           rngs: nnx.Rngs | None = None) -> tuple[dict[str, jax.Array], list]:
        """``({'logits': [B, t, V]}, cache)`` for ``tokens [B, t]`` at positions ``index ..``.

        Their keys and values are written into ``cache`` (a fresh one of
        ``sequence_length`` slots when None) and attention reads every earlier slot, so
        feeding a prompt, then one token at a time, reproduces the full forward pass:
        ``out, cache = model.forward_with_cache(seq[:, t:t + 1], cache, index=t)``.
        """
        if cache is None:
            cache = self.init_cache(tokens.shape[0], self.sequence_length)
        positions = index + jnp.arange(tokens.shape[1])
        logits, cache = self._forward(tokens, positions, caches=cache)
        return {"logits": logits}, cache

    # -- generation -------------------------------------------------------------------
    def generate(self, n_samples: int | None = None, max_length: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, *, rngs, prompt=None,
                 eos_token_id: int | None = None, repetition_penalty: float = 1.0,
                 use_cache: bool = True) -> jax.Array:
        """Sample int32 ``[n_samples, max_length]`` sequences, the prompt included.

        Without ``prompt`` every row starts with ``bos_token_id`` (token 0 when the model
        has none). ``prompt`` is ``[P]`` (shared by all samples) or ``[n, P]``. Sampling
        applies repetition penalty, temperature, top-k and top-p in that (HF) order;
        ``temperature=0`` or ``top_k=1`` is greedy. A row that samples ``eos_token_id``
        is padded after it (``pad_token_id``, else the EOS id) and the loop stops early
        once every row has. Decoding is one compiled ``while_loop`` over a KV cache;
        ``use_cache=False`` recomputes the prefix at every step instead (same tokens).
        """
        return self._generate(n_samples, max_length, temperature, top_k, top_p, rngs=rngs, prompt=prompt,
                              eos_token_id=eos_token_id, repetition_penalty=repetition_penalty,
                              use_cache=use_cache)

    def sample_with_conditioning(self, conditioning, n_samples: int | None = None, max_length: int | None = None,
                                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                                 *, rngs, eos_token_id: int | None = None,
                                 repetition_penalty: float = 1.0) -> jax.Array:
        """Continue ``conditioning`` (``[P]`` or ``[B, P]`` token ids): ``n_samples`` continuations
        of a single prompt, or one per row; returns ``[n, max_length]`` with the prompt first."""
        if conditioning is None:
            raise ValueError("conditioning must be token ids of shape [P] or [B, P]; got None "
                             "(generate() samples without conditioning)")
        return self._generate(n_samples, max_length, temperature, top_k, top_p, rngs=rngs, prompt=conditioning,
                              eos_token_id=eos_token_id, repetition_penalty=repetition_penalty,
                              prompt_name="conditioning")

    def _generate(self, n_samples, max_length, temperature, top_k, top_p, *, rngs, prompt, eos_token_id,
                  repetition_penalty, use_cache=True, prompt_name="prompt") -> jax.Array:
        """:meth:`generate`, with the prompt's argument name for error messages."""
        max_length = self.sequence_length if max_length is None else require_int(
            "max_length", max_length, minimum=2, maximum=self.sequence_length)
        if n_samples is not None:
            require_int("n_samples", n_samples, minimum=1)
        config = SamplingConfig.create(temperature=temperature, top_k=top_k, top_p=top_p,
                                       repetition_penalty=repetition_penalty, vocab_size=self.vocab_size)
        start = [self.bos_token_id or 0] if prompt is None else prompt
        prompt = check_prompt(start, n_samples=1 if prompt is None and n_samples is None else n_samples,
                              vocab_size=self.vocab_size, max_length=max_length, name=prompt_name)
        eos_token_id = self._check_token_id("eos_token_id", eos_token_id)
        use_cache = require_bool("use_cache", use_cache)
        key = as_key(rngs)
        graphdef, state = nnx.split(self)
        return decode(graphdef, state, jnp.asarray(prompt), key, max_length=max_length, config=config,
                      eos_token_id=eos_token_id, pad_token_id=self._pad_for(eos_token_id), use_cache=use_cache)

    def generate_with_cache(self, n_samples: int | None = None, max_length: int | None = None, rngs=None,
                            **kwargs) -> jax.Array:
        """:meth:`generate` with the KV cache (the default), under the name the guide uses."""
        return self.generate(n_samples, max_length, rngs=rngs, use_cache=True, **kwargs)

    def beam_search(self, beam_size: int = 4, max_length: int | None = None, *, prompt=None,
                    length_penalty: float = 1.0, eos_token_id: int | None = None,
                    rngs=None) -> tuple[jax.Array, jax.Array]:
        """Beam search from ``prompt`` (``[P]``; default BOS): ``(sequences [beam_size, max_length],
        scores [beam_size])``, best first; see :mod:`artrainer.sampling.beam_search`. ``rngs``
        is accepted for the guide's call signature and unused (the search is deterministic)."""
        beam_size = require_int("beam_size", beam_size, minimum=1)
        max_length = self.sequence_length if max_length is None else require_int(
            "max_length", max_length, minimum=2, maximum=self.sequence_length)
        length_penalty = require_real("length_penalty", length_penalty)
        start = [self.bos_token_id or 0] if prompt is None else prompt
        prompt = check_prompt(start, n_samples=None, vocab_size=self.vocab_size, max_length=max_length)
        if prompt.shape[0] != 1:
            raise ValueError(f"beam_search takes one prompt; got {prompt.shape[0]} rows")
        eos_token_id = self._check_token_id("eos_token_id", eos_token_id)
        graphdef, state = nnx.split(self)
        return beam_search(graphdef, state, jnp.asarray(prompt[0]), beam_size=beam_size, max_length=max_length,
                           length_penalty=length_penalty, eos_token_id=eos_token_id,
                           pad_token_id=self._pad_for(eos_token_id))

    def log_samples(self, samples, logger, step: int) -> None:
        """Samples as text: decoded with ``self.tokenizer`` when one is attached, else ids."""
        tokenizer = getattr(self, "tokenizer", None)
        rows = jax.device_get(samples).tolist()
        texts = [tokenizer.decode(row) if tokenizer is not None else " ".join(map(str, row)) for row in rows]
        # Preformatted, so line breaks, indentation and markdown characters (``__init__``) survive.
        logger.log_text("samples", "\n\n".join(code_block(text) for text in texts), step)

    def _check_token_id(self, name: str, value: int | None) -> int | None:
        return token_id(name, value, self.vocab_size)

    def _pad_for(self, eos_token_id: int | None) -> int:
        """What fills positions after EOS: the pad id, else the EOS id itself."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return eos_token_id if eos_token_id is not None else 0

    def loss_fn(self, batch, outputs, *, rngs=None) -> dict[str, jax.Array]:
        """Next-token cross-entropy: ``logits[:, t]`` scored against ``sequences[:, t + 1]``.

        A target counts unless ``batch['mask']`` is 0 there, it equals ``pad_token_id``,
        or its row is padding (``batch['example_mask']`` = 0).
        """
        shape = jnp.shape(batch[self.input_key])
        if len(shape) == 2 and shape[1] < 2:
            raise ValueError(f"TransformerAR trains on sequences of at least 2 tokens (a token has no target "
                             f"without a next one); got batch[{self.input_key!r}] of shape {shape}")
        check_mask_shape(batch, self.input_key)
        targets = batch[self.input_key][:, 1:]
        mask = batch["mask"][:, 1:] if "mask" in batch else None
        if self.pad_token_id is not None:
            not_pad = targets != self.pad_token_id
            mask = not_pad if mask is None else mask * not_pad
        weights = element_weights(batch, targets.shape, mask=mask)
        metrics = categorical_metrics(outputs["logits"][:, :-1], targets, weights)
        return {key: metrics[key] for key in ("loss", "nll_loss", "perplexity", "accuracy", WEIGHT)}

    def _check_tokens(self, x) -> jax.Array:
        """``x`` as a jax array, checked: shape and dtype always; ids when concrete or on the
        host (see :mod:`artrainer.models.inputs`)."""
        x = host_or_jax_array(x, "tokens", what="token ids")
        if x.ndim != 2:
            raise ValueError(f"TransformerAR expects int tokens of shape [batch, length]; got shape {x.shape}")
        check_int_values(x, "tokens", self.vocab_size, what="token ids")
        if x.shape[1] > self.sequence_length:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the model's "
                             f"sequence_length={self.sequence_length}")
        return jnp.asarray(x)


class PrefixParam(nnx.Param):
    """A prefix-tuning weight: the only kind the optimizer updates in a PrefixTunedTransformer."""


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(TransformerConfig):
    """A :class:`PrefixTunedTransformer`'s config: the base Transformer's, plus ``prefix_length``."""

    prefix_length: int = 10

    def __post_init__(self):
        super().__post_init__()
        self._store(prefix_length=require_int("prefix_length", self.prefix_length, minimum=1))


class PrefixTunedTransformer(TransformerAR):
    """TransformerAR with a learned prefix per layer (prefix tuning, Li & Liang 2021).

    Every attention layer sees ``prefix_length`` extra key/value pairs in front of the
    sequence, always visible to every query. ``trainable = PrefixParam``, so the
    Trainer's optimizer updates the prefix alone and the base weights stay frozen
    (bit for bit). Start from a trained model with :meth:`from_pretrained`.
    """

    trainable = PrefixParam
    config_class = PrefixTuningConfig

    def __init__(self, *args, prefix_length: int = 10, config: PrefixTuningConfig | None = None, **kwargs):
        super().__init__(*args, config=config, **kwargs)
        if config is None:
            self.prefix_length = prefix_length  # replaces the config's default, checked
        else:  # refuses a prefix_length next to config=
            resolve_config(PrefixTuningConfig, config, PrefixTunedTransformer.__init__,
                           {"prefix_length": prefix_length}, type(self).__name__)
        shape = (self.num_layers, self.prefix_length, self.num_heads, self.hidden_dim // self.num_heads)
        init = nnx.initializers.normal(stddev=0.02)
        self.prefix_keys = PrefixParam(init(kwargs["rngs"].params(), shape))
        self.prefix_values = PrefixParam(init(kwargs["rngs"].params(), shape))

    @classmethod
    def from_pretrained(cls, base: TransformerAR, *, prefix_length: int = 10,
                        rngs: nnx.Rngs) -> PrefixTunedTransformer:
        """A prefix-tuned copy of ``base``: its config and weights, plus a fresh prefix."""
        if not isinstance(base, TransformerAR):
            raise TypeError(f"base must be a TransformerAR; got {type(base).__name__}")
        config = cls.config_class(**{**base.hparams, "prefix_length": prefix_length})
        model = cls(config=config, rngs=rngs)
        nnx.update(model, jax.tree.map(jnp.copy, nnx.state(base)))
        return model

    def layer_prefix(self, layer: int):
        return self.prefix_keys[layer], self.prefix_values[layer]

    def forward_with_prefix(self, x: jax.Array, rngs: nnx.Rngs | None = None, training: bool = False):
        """The guide's name for the forward pass; the prefix is always applied."""
        return self(x, rngs=rngs, training=training)
