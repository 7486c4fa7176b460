"""Global class conditioning, shared by PixelCNN and WaveNet: one label per example.

A conditional model takes ``labels [B]`` next to its input. These helpers check the
labels (shape and dtype always; values when they are concrete, since a traced batch
cannot be read), take them from a batch, and turn a ``class_label`` argument of a
sampler into one label per sample.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from artrainer.models.inputs import check_int_values, host_or_jax_array


def check_class_labels(labels, num_classes: int | None, batch_size: int, *, name: str = "labels") -> jax.Array:
    """``labels`` as a jax array, unless they are not ``batch_size`` int class ids in
    ``[0, num_classes)``: host labels are checked before the conversion (see :mod:`artrainer.models.inputs`).

    ``num_classes=None`` means the model is unconditional, so any labels are an error.
    """
    if num_classes is None:
        raise ValueError(f"{name} given, but the model is unconditional (num_classes=None)")
    labels = host_or_jax_array(labels, name, what="class ids")
    if labels.shape != (batch_size,):
        raise ValueError(f"{name} must be one class id per example, shape ({batch_size},); "
                         f"got shape {labels.shape}")
    check_int_values(labels, name, num_classes, what=f"class ids (num_classes={num_classes})")
    return jnp.asarray(labels)


def batch_class_labels(batch: Mapping[str, jax.Array], num_classes: int | None, model: str) -> dict:
    """``{'labels': batch['labels']}`` for a conditional model, ``{}`` for an unconditional
    one (which then trains on labelled data sets as they come)."""
    if num_classes is None:
        return {}
    if "labels" not in batch:
        raise ValueError(f"a class-conditional {model} (num_classes={num_classes}) trains on batches "
                         f"with 'labels'; this batch has only {sorted(batch)}")
    return {"labels": batch["labels"]}


def sampling_labels(class_label, num_classes: int | None, n_samples: int) -> jax.Array | None:
    """``class_label`` (None, an int, or one int per sample) as int32 ``[n_samples]``, checked."""
    if class_label is None:
        return None
    labels = np.asarray(class_label)
    if labels.ndim == 0:
        labels = np.full(n_samples, labels)
    return check_class_labels(labels, num_classes, n_samples, name="class_label").astype(jnp.int32)
