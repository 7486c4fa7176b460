"""The Trainer's compiled training and evaluation steps (split + ``jax.jit``).

The model and optimizer live as one pytree of arrays, ``{'model': State,
'optimizer': State}``, that each step takes and returns with its buffers donated.
Gradient accumulation (a ``lax.scan`` over micro-batches), every optax transform,
bf16 compute, the running metric sums and the divergence check all run inside the
one compiled call; the host only sees numbers when it asks for them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from artrainer.metrics import WEIGHT, MetricSums, with_weight

# Codes of the first non-finite quantity a run produced, kept in ``Health``.
NONFINITE_NAMES = {1: "loss", 2: "grad_norm"}


def init_health() -> dict[str, jax.Array]:
    """``step`` of the first non-finite loss/gradient that stopped the run (-1: none yet),
    which one it was, the steps skipped (``skip_nonfinite``): in all, in a row now, and the
    steps run (the Trainer's ``global_step``, which skipped updates do not hold back)."""
    return {"step": jnp.asarray(-1, jnp.int32), "what": jnp.asarray(0, jnp.int32),
            "skipped": jnp.asarray(0, jnp.int32), "consecutive": jnp.asarray(0, jnp.int32),
            "steps": jnp.asarray(0, jnp.int32)}


def init_train_sums(metric_keys) -> dict[str, Any]:
    return {"metrics": MetricSums.zeros(metric_keys), "grad_norm": jnp.zeros((), jnp.float32),
            "steps": jnp.zeros((), jnp.int32)}


def _compute_dtype(precision: str):
    return jnp.bfloat16 if precision == "bf16" else None


def _cast_floats(tree, dtype):
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _merge_for_compute(model_def, params, rest, dtype):
    """Merge a module whose weights (and fixed compute dtypes) are ``dtype``.

    ``params`` are the trainable weights, ``rest`` everything else (frozen weights
    included). Flax layers such as ``nnx.Embed`` pin a float32 compute dtype at
    construction and would cast bf16 weights straight back; the merged copy's pins
    move to ``dtype``.
    """
    if dtype is None:
        return nnx.merge(model_def, params, rest)
    frozen, other = nnx.split_state(rest, nnx.Param, ...)
    module = nnx.merge(model_def, _cast_floats(params, dtype), _cast_floats(frozen, dtype), other)
    for _, sub in nnx.iter_modules(module):
        if getattr(sub, "dtype", None) == jnp.float32:
            sub.dtype = dtype
    return module


def _checked_training_step(module, batch, rngs):
    loss, metrics = module.training_step(batch, rngs)
    if not isinstance(metrics, Mapping) or "loss" not in metrics:
        raise ValueError(f"{type(module).__name__}.loss_fn must return a dict with a 'loss' key; "
                         f"got {type(metrics).__name__} with keys "
                         f"{sorted(metrics) if isinstance(metrics, Mapping) else '-'}")
    if jnp.shape(loss) != ():
        raise ValueError(f"{type(module).__name__}.training_step must return a scalar loss; "
                         f"got shape {jnp.shape(loss)}")
    return loss, with_weight(metrics)


def micro_step_fn(model_def: nnx.GraphDef, precision: str, trainable) -> Callable:
    """``(params, rest, batch, key) -> ((loss, (metrics, rest)), grads)`` for one micro-batch.

    Gradients are taken with respect to the fp32 ``trainable`` leaves (the module's
    ``trainable`` filter, ``nnx.Param`` by default); under bf16 the forward pass sees
    a bf16 copy, so the gradient flows back through the cast.
    """
    dtype = _compute_dtype(precision)

    def loss_of(params, rest, batch, key):
        module = _merge_for_compute(model_def, params, rest, dtype)
        loss, metrics = _checked_training_step(module, batch, nnx.Rngs(key))
        _, _, new_rest = nnx.split(module, trainable, ...)
        # Frozen weights come back as they went in (fp32), not as the compute copy.
        new_rest = nnx.merge_state(new_rest, nnx.filter_state(rest, nnx.Param))
        return loss.astype(jnp.float32), (metrics, new_rest)

    return jax.value_and_grad(loss_of, has_aux=True)


def metric_shapes(model_def, model_state, batch, precision: str, seed: int) -> dict[str, Any]:
    """Trace one micro-step abstractly (no compile) to learn the metric keys and check outputs."""
    module = nnx.merge(model_def, model_state)
    micro_def, params, rest = nnx.split(module, module.trainable, ...)
    grad_fn = micro_step_fn(micro_def, precision, module.trainable)
    (_, (metrics, _)), _ = jax.eval_shape(grad_fn, params, rest, batch, jax.random.key(seed))
    return metrics


def make_train_step(model_def: nnx.GraphDef, optimizer_def: nnx.GraphDef, *, seed: int,
                    accumulate: int, precision: str, state_shardings: Any = None,
                    skip_nonfinite: int = 0) -> Callable:
    """Build ``step(state, sums, health, batch) -> (state, sums, health, outputs)``, jitted.

    With ``accumulate > 1`` every leaf of ``batch`` has a leading micro-batch axis of
    that size. The step's RNG key is ``fold_in(key(seed), update_count)``, so it is a
    pure function of the optimizer's step counter: resuming needs no RNG state of its own.
    ``state_shardings`` (a sharded run) pins the new state to the layout the old one had.
    ``skip_nonfinite=n > 0`` keeps the old model and optimizer state when the loss or the
    gradients are not finite, and flags divergence only after ``n`` such steps in a row.
    """
    base_key = jax.random.key(seed)

    def step(state, sums, health, batch):
        # merge shares the Variables of `state`, and the update below mutates them: keep a copy.
        previous = jax.tree.map(lambda x: x, state) if skip_nonfinite else None
        module = nnx.merge(model_def, state["model"])
        optimizer = nnx.merge(optimizer_def, state["optimizer"])
        update_count = optimizer.step[...]
        key = jax.random.fold_in(base_key, update_count)
        micro_def, params, rest = nnx.split(module, module.trainable, ...)
        grad_fn = micro_step_fn(micro_def, precision, module.trainable)

        if accumulate == 1:
            (loss, (metrics, rest)), grads = grad_fn(params, rest, batch, key)
            metric_sums = MetricSums.add(sums["metrics"], metrics)
        else:
            def micro(carry, inputs):
                grad_sum, loss_sum, rest, metric_sums = carry
                micro_batch, index = inputs
                (loss, (metrics, rest)), grads = grad_fn(params, rest, micro_batch,
                                                         jax.random.fold_in(key, index))
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                return (grad_sum, loss_sum + loss, rest, MetricSums.add(metric_sums, metrics)), metrics

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, loss, rest, metric_sums), per_micro = jax.lax.scan(
                micro, (zeros, jnp.zeros((), jnp.float32), rest, sums["metrics"]),
                (batch, jnp.arange(accumulate)))
            grads = jax.tree.map(lambda g: g / accumulate, grads)
            loss = loss / accumulate
            metrics = jax.tree.map(lambda m: m.mean(axis=0), per_micro)

        grad_norm = optax.tree.norm(grads)
        nnx.update(module, rest)
        optimizer.update(module, grads)

        finite_loss, finite_grad = jnp.isfinite(loss), jnp.isfinite(grad_norm)
        healthy = finite_loss & finite_grad
        consecutive = jnp.where(healthy, 0, health["consecutive"] + 1)
        diverged = ~healthy if not skip_nonfinite else consecutive > skip_nonfinite
        first_bad = (health["step"] < 0) & diverged
        health = {"step": jnp.where(first_bad, health["steps"] + 1, health["step"]),
                  "what": jnp.where(first_bad, jnp.where(finite_loss, 2, 1), health["what"]),
                  "skipped": health["skipped"] + (~healthy if skip_nonfinite else 0),
                  "consecutive": consecutive, "steps": health["steps"] + 1}
        sums = {"metrics": metric_sums, "grad_norm": sums["grad_norm"] + grad_norm,
                "steps": sums["steps"] + 1}
        outputs = {**{k: v for k, v in metrics.items() if k != WEIGHT}, "loss": loss,
                   "grad_norm": grad_norm}
        new_state = {"model": nnx.state(module), "optimizer": nnx.state(optimizer)}
        if skip_nonfinite:
            new_state = jax.tree.map(lambda new, old: jnp.where(healthy, new, old), new_state, previous)
        if state_shardings is not None:
            new_state = jax.lax.with_sharding_constraint(new_state, state_shardings)
        return new_state, sums, health, outputs

    return jax.jit(step, donate_argnums=(0, 1, 2))


def make_eval_step(model_def: nnx.GraphDef, *, seed: int, precision: str) -> Callable:
    """Build ``eval_step(model_state, sums, batch, index) -> sums``, jitted, sums donated."""
    dtype = _compute_dtype(precision)
    base_key = jax.random.key(seed)

    def eval_step(model_state, sums, batch, index):
        split_def, params, rest = nnx.split(nnx.merge(model_def, model_state), nnx.Param, ...)
        module = _merge_for_compute(split_def, params, rest, dtype)
        metrics = module.validation_step(batch, nnx.Rngs(jax.random.fold_in(base_key, index)))
        if not isinstance(metrics, Mapping) or "loss" not in metrics:
            raise ValueError(f"{type(module).__name__}.validation_step must return a dict with a "
                             f"'loss' key; got {metrics!r:.200}")
        return MetricSums.add(sums, with_weight(metrics))

    return jax.jit(eval_step, donate_argnums=(1,))


def eval_metric_shapes(model_def, model_state, batch, seed: int) -> dict[str, Any]:
    """Metric keys of ``validation_step`` from an abstract trace (no compile)."""
    def probe(state, batch):
        metrics = nnx.merge(model_def, state).validation_step(batch, nnx.Rngs(jax.random.key(seed)))
        return with_weight(metrics) if isinstance(metrics, Mapping) else metrics
    return jax.eval_shape(probe, model_state, batch)
