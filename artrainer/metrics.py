"""Likelihood metrics shared by every model, and their exact aggregation.

Every per-batch metric here is a mean over *predicted elements* (tokens, sub-pixels,
audio samples), and each metrics dict carries that element count under ``'weight'``.
Aggregating over many batches then weights each batch mean by its count, so a
validation loss is the true per-element mean, not a mean of batch means, and
perplexity is recomputed as ``exp(mean nll)`` instead of averaged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artrainer.validation import require_int

if TYPE_CHECKING:
    from artrainer.module import ARModule

LN2 = math.log(2.0)

#: Key of the element count that makes aggregation exact; never logged as a metric.
WEIGHT = "weight"


def element_weights(batch: Mapping[str, jax.Array], shape: tuple[int, ...], *,
                    mask: jax.Array | None = None) -> jax.Array:
    """Float weights of shape ``shape`` (leading axis = batch) for the predicted elements.

    ``mask`` (1 = real element) and the loader's ``'example_mask'`` (0 for padding rows
    of a padded last batch) are multiplied in, so padding never counts.
    """
    weights = jnp.ones(shape, jnp.float32)
    if mask is not None:
        weights = weights * mask.astype(jnp.float32)
    example_mask = batch.get("example_mask")
    if example_mask is not None:
        example_mask = example_mask.astype(jnp.float32)
        weights = weights * example_mask.reshape(example_mask.shape + (1,) * (len(shape) - 1))
    return weights


def categorical_metrics(logits: jax.Array, targets: jax.Array,
                        weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Cross-entropy metrics of ``logits [..., V]`` against int ``targets [...]``.

    Returns ``loss`` (= ``nll_loss``, the weighted mean NLL in nats), ``perplexity``,
    ``accuracy``, ``bits_per_dim`` and ``weight`` (the number of counted elements).
    Logits are upcast to float32 first so bf16 compute still gives fp32 losses.
    """
    logits = logits.astype(jnp.float32)
    if weights is None:
        weights = jnp.ones(targets.shape, jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    total = jnp.sum(weights)
    denominator = jnp.maximum(total, 1.0)
    nll_loss = jnp.sum(nll * weights) / denominator
    return {
        "loss": nll_loss,
        "nll_loss": nll_loss,
        "perplexity": jnp.exp(nll_loss),
        "accuracy": jnp.sum(correct * weights) / denominator,
        "bits_per_dim": nll_loss / LN2,
        WEIGHT: total,
    }


def perplexity(nll_loss):
    """Perplexity from a mean NLL in nats."""
    return jnp.exp(nll_loss)


def bits_per_dim(nll_loss):
    """Bits per dimension from a mean NLL in nats per dimension."""
    return nll_loss / LN2


# Metrics that are functions of the mean NLL: recomputed after aggregation, never averaged.
_DERIVED = {"perplexity": perplexity, "bits_per_dim": bits_per_dim}


class MetricSums:
    """Device-side running sums of weighted metrics: a pytree, so it lives inside jit.

    ``sums[k] = Σ weight · metric_k`` and ``total = Σ weight``; ``compute`` turns them
    into exact means. Nothing here touches the host until ``compute`` is called.
    """

    @staticmethod
    def zeros(metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {k: jnp.zeros((), jnp.float32) for k in metrics}

    @staticmethod
    def add(sums: Mapping[str, jax.Array], metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        weight = jnp.asarray(metrics.get(WEIGHT, 1.0), jnp.float32)
        out = {}
        for key, total in sums.items():
            if key == WEIGHT:
                out[key] = total + weight
            else:
                out[key] = total + weight * jnp.asarray(metrics[key], jnp.float32)
        return out

    @staticmethod
    def compute(sums: Mapping[str, jax.Array]) -> dict[str, float]:
        """Host floats: weighted means, with perplexity / bits-per-dim from the mean NLL."""
        host = {k: float(v) for k, v in jax.device_get(dict(sums)).items()}
        total = host.pop(WEIGHT, 0.0)
        if total <= 0.0:
            return {}
        means = {k: v / total for k, v in host.items()}
        if "nll_loss" in means:
            for key, derive in _DERIVED.items():
                if key in means:
                    means[key] = float(derive(means["nll_loss"]))
        return means


def with_weight(metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Metrics with a ``'weight'`` entry (1 per batch when the module reports none)."""
    metrics = dict(metrics)
    metrics.setdefault(WEIGHT, jnp.ones((), jnp.float32))
    return metrics


# Generation quality: how varied, repetitive and fluent sampled token ids are. The
# n-gram statistics run on the host in numpy; they are cheap next to sampling itself.

#: Token ids of a batch of samples: an int array ``[B, T]`` or rows of different lengths.
Samples = np.ndarray | jax.Array | Sequence[Sequence[int]]


def distinct_n(samples: Samples, n: int, *, eos_token_id: int | None = None,
               pad_token_id: int | None = None) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams, pooled over the batch.

    Each row counts only up to its first EOS or PAD (both excluded), so padding and
    whatever follows the end of a sample never look like diversity. Low values mean the
    samples say the same things; 0.0 when no row holds a full n-gram. A leading BOS is
    counted like any token: pass ``samples[:, 1:]`` to leave it out.
    """
    n = require_int("n", n, minimum=1)
    pooled = np.concatenate([_ngrams(row, n) for row in _content_rows(samples, eos_token_id, pad_token_id)])
    return len(np.unique(pooled, axis=0)) / len(pooled) if len(pooled) else 0.0


def repetition_rate(samples: Samples, n: int = 4, *, eos_token_id: int | None = None,
                    pad_token_id: int | None = None) -> float:
    """Within-sample repetition, seq-rep-n (Welleck et al., 2020), averaged over samples.

    For each row (cut at its first EOS or PAD, as in :func:`distinct_n`) it is the
    fraction of the row's n-grams that equal an earlier n-gram of the same row, i.e.
    ``1 - distinct / total``; the result is the unweighted mean over rows that hold at
    least one n-gram (0.0 if none does). Looping samples score near 1, varied ones 0.
    """
    n = require_int("n", n, minimum=1)
    rates = [(len(grams) - len(np.unique(grams, axis=0))) / len(grams)
             for grams in (_ngrams(row, n) for row in _content_rows(samples, eos_token_id, pad_token_id))
             if len(grams)]
    return float(np.mean(rates)) if rates else 0.0


def sample_perplexity(reference_model: ARModule, samples: jax.Array | np.ndarray, *,
                      mask: jax.Array | np.ndarray | None = None) -> float:
    """Fluency: ``exp(mean NLL)`` of ``samples [B, T]`` under a reference model.

    Scored by the model's own ``loss_fn`` on ``{input_key: samples, 'mask': mask}`` in
    evaluation mode, so which targets count (PAD, the mask) follows the model's rules.
    Low means the reference finds the samples likely; a model judging its own samples
    rewards degenerate repetition, so prefer a separate, stronger reference.
    """
    batch = {reference_model.input_key: jnp.asarray(samples)}
    if mask is not None:
        batch["mask"] = jnp.asarray(mask)
    return float(jnp.exp(_mean_nll(reference_model, batch)))


def generation_quality(samples: Samples, *, reference_model: ARModule | None = None,
                       n_values: Sequence[int] = (1, 2, 3), eos_token_id: int | None = None,
                       pad_token_id: int | None = None) -> dict[str, float]:
    """``distinct_{n}`` for each n, ``repetition_rate`` and, given a model, ``fluency_perplexity``.

    The perplexity scores each row up to and including its first EOS (choosing to stop
    is part of fluency) and before its first PAD; ``samples`` must then be rectangular.
    """
    quality = {f"distinct_{n}": distinct_n(samples, n, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
               for n in n_values}
    quality["repetition_rate"] = repetition_rate(samples, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if reference_model is not None:
        quality["fluency_perplexity"] = sample_perplexity(
            reference_model, samples, mask=_through_first_eos(samples, eos_token_id, pad_token_id))
    return quality


@nnx.jit
def _mean_nll(model: ARModule, batch: Mapping[str, jax.Array]) -> jax.Array:
    outputs = model(batch[model.input_key], training=False)
    return model.loss_fn(batch, outputs)["nll_loss"]


def _content_rows(samples: Samples, eos_token_id: int | None, pad_token_id: int | None) -> list[np.ndarray]:
    """Each row's tokens before its first EOS or PAD."""
    if not isinstance(samples, (list, tuple)):
        samples = np.asarray(samples)  # One device-to-host copy, not one per row.
        if samples.ndim != 2:
            raise ValueError(f"samples must be token ids of shape [batch, length], got shape {samples.shape}")
    stops = [token for token in (eos_token_id, pad_token_id) if token is not None]
    rows = []
    for row in samples:
        row = np.asarray(row)
        if row.ndim != 1 or (row.size and not np.issubdtype(row.dtype, np.integer)):
            raise ValueError(f"each sample must be a 1-D sequence of int token ids, got {row.dtype} {row.shape}")
        ends = np.flatnonzero(np.isin(row, stops))
        rows.append(row[:ends[0]] if ends.size else row)
    if not rows:
        raise ValueError("samples is empty")
    return rows


def _ngrams(row: np.ndarray, n: int) -> np.ndarray:
    """The n-grams of ``row`` as an int64 array ``[max(len(row) - n + 1, 0), n]``."""
    if len(row) < n:
        return np.empty((0, n), np.int64)
    return np.lib.stride_tricks.sliding_window_view(row.astype(np.int64), n)


def _through_first_eos(samples: Samples, eos_token_id: int | None,
                       pad_token_id: int | None) -> np.ndarray | None:
    """Int mask ``[B, T]``: 1 up to and including the first EOS, 0 from the first PAD on."""
    if eos_token_id is None and pad_token_id is None:
        return None
    tokens = np.asarray(samples)
    is_eos = tokens == eos_token_id
    ended = np.cumsum(is_eos, axis=1) - is_eos > 0
    if pad_token_id is not None:
        ended |= np.cumsum(tokens == pad_token_id, axis=1) > 0
    return (~ended).astype(np.int32)
