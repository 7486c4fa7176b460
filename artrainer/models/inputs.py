"""Checks of model inputs shared by the models: integer ids / codes / pixels / labels in range.

Shapes and dtypes are checked always. Values are checked only when the array is
concrete: inside a compiled step it is a tracer, which cannot be read without a host
sync, and the data loaders have checked the values on the host already. Host input
(numpy arrays, lists) is checked as it is, before ``jnp.asarray``: with x64 disabled
that casts int64 to int32, which would wrap an id of 2**32 + 3 into a valid-looking 3.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def check_int_values(array: jax.Array | np.ndarray, name: str, high: int, *, what: str = "values",
                     hint: str = "") -> None:
    """Raise unless ``array`` holds integers in ``[0, high)``: its dtype always, its values when concrete."""
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer {what} in [0, {high}){hint}; got dtype {array.dtype}")
    if isinstance(array, jax.core.Tracer) or not array.size:
        return
    low, top = int(array.min()), int(array.max())
    if low < 0 or top >= high:
        raise ValueError(f"{name} must hold {what} in [0, {high}); got {low if low < 0 else top}")


def host_or_jax_array(values, name: str, *, what: str = "values"):
    """``values`` ready for the checks above, not yet converted: a jax array (or tracer) as it
    is, anything else as a numpy array of its own dtype. Convert it with ``jnp.asarray``
    only once its values have passed, so none is cast (and wrapped) unchecked."""
    if isinstance(values, jax.Array):
        return values
    try:
        array = np.asarray(values)
    except ValueError as error:  # a ragged nesting of lists
        raise ValueError(f"{name} must be a rectangular array of integer {what}; {error}") from None
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be an array of integer {what}; got {type(values).__name__} "
                        f"{values!r:.60} of dtype {array.dtype}")
    return array


def check_mask_shape(batch: Mapping[str, jax.Array], input_key: str) -> None:
    """Raise unless the batch's optional ``'mask'`` (one 0/1 weight per input element) has the
    shape of ``batch[input_key]``. Shapes are static, so this also runs while a step is traced."""
    if "mask" in batch and jnp.shape(batch["mask"]) != jnp.shape(batch[input_key]):
        raise ValueError(f"batch['mask'] must have the shape of batch[{input_key!r}], "
                         f"{jnp.shape(batch[input_key])} (one weight per element); "
                         f"got shape {jnp.shape(batch['mask'])}")

