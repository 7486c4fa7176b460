"""TransformerAR: a GPT-style decoder-only language model.

Pre-LayerNorm blocks (``x + attn(LN(x))``, ``x + mlp(LN(x))``), learned or rotary
positions, optionally tied input/output embeddings. Everything numerically delicate
(attention logits and softmax, LayerNorm statistics, RoPE, the loss) runs in float32,
so the model trains under the Trainer's bf16 compute as well as in fp32.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from artrainer.metrics import WEIGHT, categorical_metrics, element_weights
from artrainer.module import ARModule

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
    """Multi-head causal self-attention.

    q, k and v come from one fused projection (a single matmul, and k/v in the layout a
    KV cache stores). The causal mask compares query and key *positions* rather than
    array indices, so queries need not start at key 0.
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout_rate: float, *,
                 rotary: bool, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.rotary = rotary
        self.qkv = nnx.Linear(hidden_dim, 3 * hidden_dim, rngs=rngs)
        self.out = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x: jax.Array, positions: jax.Array, *, rngs: nnx.Rngs | None,
                 training: bool) -> jax.Array:
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rotary:
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(self.head_dim)
        causal = positions[:, None] >= positions[None, :]
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, -1)
        return self.dropout(self.out(y), deterministic=not training, rngs=rngs)


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

    def __call__(self, x: jax.Array, positions: jax.Array, *, rngs: nnx.Rngs | None,
                 training: bool) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), positions, rngs=rngs, training=training)
        return x + self.mlp(self.mlp_norm(x), rngs=rngs, training=training)


class TransformerAR(ARModule):
    """GPT-style autoregressive Transformer over token sequences.

    ``model(x)`` maps int tokens ``[B, T]`` (``T <= sequence_length``) to
    ``{'logits': [B, T, vocab_size]}``; ``logits[:, t]`` is the distribution of token
    ``t + 1`` given tokens ``0..t``. ``pad_token_id`` targets never count in the loss;
    ``bos_token_id`` is kept (and logged) for generation.
    """

    input_key = "sequences"

    def __init__(self, vocab_size: int, sequence_length: int, hidden_dim: int, num_layers: int,
                 num_heads: int, feedforward_dim: int | None = None, dropout_rate: float = 0.0, *,
                 rngs: nnx.Rngs, position_encoding: str = "learned", tie_embeddings: bool = False,
                 pad_token_id: int | None = None, bos_token_id: int | None = None):
        for name, value in (("vocab_size", vocab_size), ("sequence_length", sequence_length),
                            ("hidden_dim", hidden_dim), ("num_layers", num_layers),
                            ("num_heads", num_heads)):
            _check_positive_int(name, value)
        if feedforward_dim is None:
            feedforward_dim = 4 * hidden_dim
        _check_positive_int("feedforward_dim", feedforward_dim)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, numbers.Real):
            raise TypeError(f"dropout_rate must be a float in [0, 1); got {dropout_rate!r}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={dropout_rate!r} must lie in [0, 1)")
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding={position_encoding!r} is not supported; "
                             f"use one of {POSITION_ENCODINGS}")
        if position_encoding == "rotary" and (hidden_dim // num_heads) % 2:
            raise ValueError(f"position_encoding='rotary' needs an even head size, but "
                             f"hidden_dim={hidden_dim} / num_heads={num_heads} = {hidden_dim // num_heads}")
        if not isinstance(tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool; got {tie_embeddings!r}")
        for name, value in (("pad_token_id", pad_token_id), ("bos_token_id", bos_token_id)):
            if value is not None:
                _check_int(name, value)
                if not 0 <= value < vocab_size:
                    raise ValueError(f"{name}={value} must be None or a token id in [0, {vocab_size})")

        self.vocab_size, self.sequence_length = vocab_size, sequence_length
        self.hidden_dim, self.num_layers, self.num_heads = hidden_dim, num_layers, num_heads
        self.feedforward_dim, self.dropout_rate = feedforward_dim, float(dropout_rate)
        self.position_encoding, self.tie_embeddings = position_encoding, tie_embeddings
        self.pad_token_id, self.bos_token_id = pad_token_id, bos_token_id
        self.hparams = {
            "vocab_size": vocab_size, "sequence_length": sequence_length, "hidden_dim": hidden_dim,
            "num_layers": num_layers, "num_heads": num_heads, "feedforward_dim": feedforward_dim,
            "dropout_rate": self.dropout_rate, "position_encoding": position_encoding,
            "tie_embeddings": tie_embeddings, "pad_token_id": pad_token_id, "bos_token_id": bos_token_id,
        }

        self.embedding = nnx.Embed(vocab_size, hidden_dim, embedding_init=_embedding_init,
                                   promote_dtype=_promote_like_arrays, rngs=rngs)
        if position_encoding == "learned":
            self.position_embedding = nnx.Embed(sequence_length, hidden_dim, embedding_init=_embedding_init,
                                                promote_dtype=_promote_like_arrays, rngs=rngs)
        self.blocks = nnx.List([
            Block(hidden_dim, num_heads, feedforward_dim, dropout_rate,
                  rotary=position_encoding == "rotary", rngs=rngs)
            for _ in range(num_layers)])
        self.final_norm = nnx.LayerNorm(hidden_dim, rngs=rngs)
        if not tie_embeddings:
            self.head = nnx.Linear(hidden_dim, vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None,
                 training: bool = False) -> dict[str, jax.Array]:
        x = jnp.asarray(x)
        self._check_tokens(x)
        positions = jnp.arange(x.shape[1])
        h = self.embedding(x)
        if self.position_encoding == "learned":
            h = h + self.position_embedding(positions)
        for block in self.blocks:
            h = block(h, positions, rngs=rngs, training=training)
        h = self.final_norm(h)
        logits = self.embedding.attend(h) if self.tie_embeddings else self.head(h)
        return {"logits": logits}

    def loss_fn(self, batch, outputs, *, rngs=None) -> dict[str, jax.Array]:
        """Next-token cross-entropy: ``logits[:, t]`` scored against ``sequences[:, t + 1]``.

        A target counts unless ``batch['mask']`` is 0 there, it equals ``pad_token_id``,
        or its row is padding (``batch['example_mask']`` = 0).
        """
        targets = batch[self.input_key][:, 1:]
        mask = batch["mask"][:, 1:] if "mask" in batch else None
        if self.pad_token_id is not None:
            not_pad = targets != self.pad_token_id
            mask = not_pad if mask is None else mask * not_pad
        weights = element_weights(batch, targets.shape, mask=mask)
        metrics = categorical_metrics(outputs["logits"][:, :-1], targets, weights)
        return {key: metrics[key] for key in ("loss", "nll_loss", "perplexity", "accuracy", WEIGHT)}

    def _check_tokens(self, x: jax.Array) -> None:
        """Shape/dtype checks only, so they hold for tracers too and cost no device sync."""
        if x.ndim != 2:
            raise ValueError(f"TransformerAR expects int tokens of shape [batch, length]; got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"TransformerAR expects integer token ids; got dtype {x.dtype}")
        if x.shape[1] > self.sequence_length:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the model's "
                             f"sequence_length={self.sequence_length}")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} ({type(value).__name__})")


def _check_positive_int(name: str, value) -> None:
    _check_int(name, value)
    if value < 1:
        raise ValueError(f"{name}={value} is invalid; it must be an int >= 1")
