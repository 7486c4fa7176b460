"""Checks of model inputs shared by the models: integer ids / codes / pixels / labels in range.

Shapes and dtypes are checked always. Values are checked only when the array is
concrete: inside a compiled step it is a tracer, which cannot be read without a host
sync, and the data loaders have checked the values on the host already.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_int_values(array: jax.Array, name: str, high: int, *, what: str = "values", hint: str = "") -> None:
    """Raise unless ``array`` holds integers in ``[0, high)``: its dtype always, its values when concrete."""
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer {what} in [0, {high}){hint}; got dtype {array.dtype}")
    if isinstance(array, jax.core.Tracer) or not array.size:
        return
    low, top = int(array.min()), int(array.max())
    if low < 0 or top >= high:
        raise ValueError(f"{name} must hold {what} in [0, {high}); got {low if low < 0 else top}")
