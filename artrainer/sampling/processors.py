"""Logits processors shared by every model's compiled decode loop.

The pipeline is Hugging Face's, in HF's order: repetition penalty, temperature, top-k,
top-p. Everything is pure, shape-static JAX over any leading batch dims, computed in
float32, and driven by a hashable :class:`SamplingConfig` that callers pass to
``jax.jit`` as a *static* argument, so every choice below is made at trace time.

Semantics worth knowing:

* Ties follow ``lax.top_k``: tokens are ranked by logit, equal logits by lower token
  id first. Top-k keeps exactly ``k`` tokens, top-p keeps a prefix of that same
  ranking, and greedy decoding (``jnp.argmax``) picks its first entry.
* Top-p keeps the smallest prefix whose probability reaches ``p``: a token is kept
  when the mass ranked *before* it is ``< p``, so the token that crosses ``p`` stays
  and the most probable token always does.
* Removed tokens get ``-inf``, never a large negative number, so they have exactly zero
  probability. ``-inf`` logits in the input (masked tokens) pass through without NaNs
  as long as each row has at least one finite logit.
* :func:`process_logits` returns the logits :func:`sample_from_logits` draws from,
  greedy included (a point mass on the argmax), so :func:`token_log_probs` is the exact
  sampling distribution that speculative sampling and likelihood tests need.
* Every finite setting is sampled without NaNs, however extreme. Temperature and penalty
  are clamped to ``[2**-126, 2**126]`` (a temperature of 1e-300 acts as 1.2e-38: greedy
  up to ties; one of 1e300 as 8.5e37: uniform over the unmasked tokens), penalised
  logits to float32's finite range, and temperature scales the logits minus their
  maximum, so the top logit stays 0 and no finite logit overflows to ``+inf``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from artrainer.validation import require_int, require_real


_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Temperature and penalty are clamped to [2**-126, 2**126]: float32 normal numbers whose
# reciprocals are normal too (XLA may divide by multiplying, and flushes subnormals to 0).
_SCALE_RANGE = (2.0**-126, 2.0**126)


def _check_scale(name: str, value, **bounds):
    """A processor parameter, checked on the host when given as a number (a jax array,
    traced under ``jit`` say, passes unchecked), then clamped to ``_SCALE_RANGE``."""
    if isinstance(value, jax.Array):
        return jnp.clip(value.astype(jnp.float32), *_SCALE_RANGE)
    return min(max(require_real(name, value, **bounds), _SCALE_RANGE[0]), _SCALE_RANGE[1])


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to turn logits into a token; hashable, so it is a static ``jax.jit`` argument.

    Construction validates on the host and canonicalises: numbers become Python
    ``float``/``int``, and the "off" spelling ``top_p=1`` becomes
    ``None``, so equal settings compare and hash equal and share one compilation.
    """

    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None  # None = off; 1 = greedy
    top_p: float | None = None  # None or 1.0 = off; otherwise in (0, 1)
    repetition_penalty: float = 1.0  # HF CTRL-style; 1 = off

    def __post_init__(self):
        canonical = {
            "temperature": require_real("temperature", self.temperature, minimum=0, why="0 = greedy"),
            "top_k": require_int("top_k", self.top_k, minimum=1, optional=True, why="1 = greedy"),
            "top_p": require_real("top_p", self.top_p, minimum=0, maximum=1, min_open=True, optional=True,
                                  why="1 = off"),
            "repetition_penalty": require_real("repetition_penalty", self.repetition_penalty, minimum=0,
                                               min_open=True, why="1 = off"),
        }
        if canonical["top_p"] == 1.0:
            canonical["top_p"] = None
        for name, value in canonical.items():
            object.__setattr__(self, name, value)

    @classmethod
    def create(cls, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
               vocab_size=None) -> SamplingConfig:
        """Validated constructor; given ``vocab_size`` it also rejects a ``top_k`` beyond it."""
        config = cls(temperature, top_k, top_p, repetition_penalty)
        vocab_size = require_int("vocab_size", vocab_size, minimum=1, optional=True)
        if vocab_size is not None:
            require_int("top_k", config.top_k, minimum=1, maximum=vocab_size, optional=True,
                        why=f"at most vocab_size={vocab_size}")
        return config

    @property
    def greedy(self) -> bool:
        """Whether sampling is a deterministic argmax (the key is then unused)."""
        return self.temperature == 0 or self.top_k == 1


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """Make tokens already in the sequence (``seen`` [..., V] bool) less likely, as HF does.

    Positive logits are divided and negative ones multiplied by ``penalty`` (> 0): a plain
    division would *raise* a negative logit. ``-inf`` stays ``-inf``. The penalty is
    clamped to ``[2**-126, 2**126]`` and the results to float32's finite range, so extreme
    penalties give extreme, never infinite or NaN, logits.
    """
    penalty = _check_scale("penalty", penalty, minimum=0, min_open=True, why="1 = off")
    logits = jnp.asarray(logits, jnp.float32)
    penalised = jnp.clip(jnp.where(logits > 0, logits / penalty, logits * penalty), -_FLOAT32_MAX, _FLOAT32_MAX)
    return jnp.where(seen & ~jnp.isneginf(logits), penalised, logits)


def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
    """Scale by ``1 / temperature`` (> 0); temperature 0 is greedy and handled as an argmax.

    The logits are shifted by their maximum first (softmax is unchanged), and the
    temperature clamped to ``[2**-126, 2**126]``, so no temperature overflows them to
    ``+inf`` or turns ``-inf / inf`` into NaN.
    """
    temperature = _check_scale("temperature", temperature, minimum=0, min_open=True,
                               why="0 = greedy is handled by process_logits")
    logits = jnp.asarray(logits, jnp.float32)
    return (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature


def apply_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Keep exactly the ``k`` (a static int >= 1) highest logits, ties to the lower token id."""
    k = require_int("k", k, minimum=1)
    logits = jnp.asarray(logits, jnp.float32)
    return _truncate(logits, min(k, logits.shape[-1]), None)


def apply_top_p(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keep the smallest most-probable set whose probability is >= ``p`` (in (0, 1])."""
    if not isinstance(p, jax.Array):
        p = require_real("p", p, minimum=0, maximum=1, min_open=True)
    logits = jnp.asarray(logits, jnp.float32)
    return _truncate(logits, logits.shape[-1], p)


def _truncate(logits: jax.Array, k: int, p) -> jax.Array:
    """Keep the ``k`` highest logits, then (if ``p``) their nucleus of mass ``p``; -inf elsewhere.

    One ``lax.top_k`` serves both filters: its output is sorted, so the nucleus is a
    prefix of it, measured on the renormalised top-k survivors as HF's warpers compose.
    Only ``k`` values are sorted and scattered back, never a ``[..., k, V]`` comparison.
    """
    values, indices = lax.top_k(logits, k)
    if p is not None:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # exactly 0 for the top token
        # The top token always stays, even when p rounds to 0 in float32 (p = 1e-300).
        top = jnp.arange(k) == 0
        values = jnp.where((mass_before < p) | top, values, -jnp.inf)
    return jnp.put_along_axis(jnp.full_like(logits, -jnp.inf), indices, values, axis=-1,
                              inplace=False)


def _penalise(logits: jax.Array, config: SamplingConfig, seen: jax.Array | None) -> jax.Array:
    logits = jnp.asarray(logits, jnp.float32)
    if seen is None or config.repetition_penalty == 1.0:
        return logits
    return apply_repetition_penalty(logits, seen, config.repetition_penalty)


def process_logits(logits: jax.Array, config: SamplingConfig,
                   seen: jax.Array | None = None) -> jax.Array:
    """The float32 logits ``sample_from_logits`` draws from; -inf outside the kept set.

    Applies, in HF's order, the repetition penalty (when ``seen`` is given), temperature,
    top-k and top-p. When ``config.greedy`` the result keeps only the argmax of the
    penalised logits, so its softmax is the point mass greedy decoding samples.
    """
    logits = _penalise(logits, config, seen)
    if config.greedy:
        return _truncate(logits, 1, None)
    if config.temperature != 1.0:
        logits = apply_temperature(logits, config.temperature)
    vocab_size = logits.shape[-1]
    k = min(config.top_k or vocab_size, vocab_size)
    if k < vocab_size or config.top_p is not None:
        logits = _truncate(logits, k, config.top_p)
    return logits


def sample_from_logits(key: jax.Array, logits: jax.Array, config: SamplingConfig,
                       seen: jax.Array | None = None) -> jax.Array:
    """Draw int32 tokens [...] from ``logits`` [..., V]; one ``key`` serves the whole batch."""
    if config.greedy:
        return jnp.argmax(_penalise(logits, config, seen), axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, process_logits(logits, config, seen), axis=-1).astype(jnp.int32)


def token_log_probs(logits: jax.Array, config: SamplingConfig,
                    seen: jax.Array | None = None) -> jax.Array:
    """Log-probabilities (float32, -inf outside the kept set) of ``sample_from_logits``'s draw."""
    return jax.nn.log_softmax(process_logits(logits, config, seen), axis=-1)
