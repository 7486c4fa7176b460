"""Compiled token-by-token decoding for sequence models with a KV cache.

A model qualifies when it offers ``init_cache(batch, length)``,
``forward_with_cache(tokens, cache, index=i) -> ({'logits'}, cache)`` and a plain
``__call__`` (used by the no-cache path, which recomputes the whole prefix every
step: the baseline the cache is measured against and tested for equality with).
The loop is one ``lax.while_loop`` under ``jax.jit``, compiled once per (model
structure, shapes, sampling config); it stops as soon as every row has emitted EOS.
"""

from __future__ import annotations

import functools
import reprlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artrainer.sampling.processors import SamplingConfig, sample_from_logits


def as_key(rngs: Any, stream: str = "sample") -> jax.Array:
    """A PRNG key from ``nnx.Rngs`` (its ``sample`` stream, falling back to default) or a key.

    A key is one typed key (``jax.random.key``, shape ``()``) or one raw ``uint32`` key of
    shape ``(2,)`` (``jax.random.PRNGKey``); batches of keys are refused.
    """
    if isinstance(rngs, nnx.Rngs):
        return getattr(rngs, stream)()
    if isinstance(rngs, jax.Array):
        if jnp.issubdtype(rngs.dtype, jax.dtypes.prng_key):
            if rngs.shape == ():
                return rngs
        elif rngs.dtype == jnp.uint32 and rngs.shape == (2,):
            return rngs
        raise TypeError(f"rngs must be an nnx.Rngs, a single typed key (jax.random.key, shape ()) or a "
                        f"single raw uint32 key of shape (2,); got a {rngs.dtype} array of shape {rngs.shape}")
    raise TypeError(f"rngs must be an nnx.Rngs or a jax PRNG key; got {type(rngs).__name__}")


def check_prompt(prompt, *, n_samples: int | None, vocab_size: int, max_length: int,
                 name: str = "prompt") -> np.ndarray:
    """Host-side checks of a prompt; returns int32 ``[n, P]`` (one row repeated for n samples)."""
    try:
        array = np.asarray(prompt)
    except (ValueError, TypeError) as error:  # ragged rows, say
        raise ValueError(f"{name} must be int token ids of shape [length] or [batch, length] (rows of "
                         f"equal length); got {reprlib.repr(prompt)}: {error}") from None
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token ids; got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape [length] or [batch, length] with batch, length >= 1; "
                         f"got shape {np.shape(prompt)}")
    if array.min() < 0 or array.max() >= vocab_size:
        bad = array[(array < 0) | (array >= vocab_size)][0]
        raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    if array.shape[1] >= max_length:
        raise ValueError(f"{name} has {array.shape[1]} tokens, but max_length={max_length} leaves "
                         "no room to generate; raise max_length")
    if n_samples is not None and n_samples != array.shape[0]:
        if array.shape[0] != 1:
            raise ValueError(f"{name} has {array.shape[0]} rows but n_samples={n_samples}; give one "
                             "row (repeated for every sample) or one row per sample")
        array = np.repeat(array, n_samples, axis=0)
    return array.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_length", "config", "eos_token_id",
                                             "pad_token_id", "use_cache"))
def decode(graphdef, state, prompt, key, *, max_length: int, config: SamplingConfig,
           eos_token_id: int | None, pad_token_id: int, use_cache: bool = True) -> jax.Array:
    """Continue every row of ``prompt [n, P]`` to ``max_length`` tokens (prompt included).

    After a row samples ``eos_token_id`` its remaining positions hold ``pad_token_id``.
    """
    model = nnx.merge(graphdef, state)
    n, prompt_length = prompt.shape
    vocab = model.vocab_size
    tokens = jnp.full((n, max_length), pad_token_id, jnp.int32).at[:, :prompt_length].set(prompt)
    seen = jnp.zeros((n, vocab), bool).at[jnp.arange(n)[:, None], prompt].set(True)

    if use_cache:
        outputs, cache = model.forward_with_cache(prompt, model.init_cache(n, max_length), index=0)
    else:
        outputs, cache = model(prompt), None
    last = outputs["logits"][:, -1]

    def next_logits(tokens, cache, token, index):
        if use_cache:
            outputs, cache = model.forward_with_cache(token[:, None], cache, index=index)
            return outputs["logits"][:, 0], cache
        # Positions after `index` still hold padding; causality keeps them out of logits[index].
        return jax.lax.dynamic_index_in_dim(model(tokens)["logits"], index, axis=1, keepdims=False), cache

    def cond(carry):
        _, _, _, _, done, index, _ = carry
        return (index < max_length) & ~jnp.all(done)

    def body(carry):
        tokens, cache, last, seen, done, index, key = carry
        key, step_key = jax.random.split(key)
        token = sample_from_logits(step_key, last, config, seen if config.repetition_penalty != 1.0 else None)
        token = jnp.where(done, pad_token_id, token).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, index))
        if eos_token_id is not None:
            done = done | (token == eos_token_id)
        seen = seen.at[jnp.arange(n), token].set(True)
        last, cache = next_logits(tokens, cache, token, index)
        return tokens, cache, last, seen, done, index + 1, key

    carry = (tokens, cache, last, seen, jnp.zeros((n,), bool), jnp.asarray(prompt_length), key)
    return jax.lax.while_loop(cond, body, carry)[0]
