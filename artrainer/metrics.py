"""Likelihood metrics shared by every model, and their exact aggregation.

Every per-batch metric here is a mean over *predicted elements* (tokens, sub-pixels,
audio samples), and each metrics dict carries that element count under ``'weight'``.
Aggregating over many batches then weights each batch mean by its count, so a
validation loss is the true per-element mean, not a mean of batch means, and
perplexity is recomputed as ``exp(mean nll)`` instead of averaged.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp

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
