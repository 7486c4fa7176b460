"""Training runs on several (virtual CPU) devices or processes, for tests/test_distributed.py.

Each scenario runs in its own Python process, because the device count is fixed when
JAX starts: ``python tests/sharded_runs.py SCENARIO OUT_DIR [PROCESS_ID PORT]``. A
scenario writes the final parameters to ``OUT_DIR`` as .npz files; the test compares them.
"""

from __future__ import annotations

import os
import sys

import numpy as np

STEPS, HALF = 6, 3
GLOBAL_BATCH = 8


def make_model():
    """A small Transformer trained with SGD: Adam would turn the rounding noise of gradients
    that are exactly zero in exact arithmetic (attention's key bias) into full-size steps."""
    import optax
    from flax import nnx

    from artrainer.models import TransformerAR

    class SGDTransformer(TransformerAR):
        def configure_optimizers(self):
            return optax.sgd(0.5)

    return SGDTransformer(vocab_size=16, sequence_length=8, hidden_dim=16, num_layers=2, num_heads=2,
                          rngs=nnx.Rngs(0))


def make_data():
    return {"sequences": np.random.default_rng(0).integers(0, 16, (64, 8)).astype(np.int32)}


def loader(num_shards=1, shard_index=0):
    from artrainer.data import DataLoader
    return DataLoader(make_data(), GLOBAL_BATCH, seed=1, num_shards=num_shards, shard_index=shard_index)


def fit(strategy, out, *, max_steps, ckpt_dir=None, resume=None, num_shards=1, shard_index=0, **kwargs):
    """Train with ``strategy``; checkpoint every HALF steps into ``ckpt_dir``; return the module."""
    from artrainer import Trainer
    from artrainer.callbacks import ModelCheckpoint

    callbacks = [ModelCheckpoint(ckpt_dir, every_n_steps=HALF)] if ckpt_dir else []
    model = make_model()
    trainer = Trainer(max_steps=max_steps, strategy=strategy, callbacks=callbacks, logger=False,
                      enable_progress_bar=False, default_root_dir=out, **kwargs)
    trainer.fit(model, loader(num_shards, shard_index), ckpt_path=resume)
    return trainer, model


def save_params(model, path):
    import jax
    from flax import nnx
    params = jax.device_get(nnx.state(model, nnx.Param))
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(params)}
    np.savez(path, **flat)


def devices(out):
    """single, dp and fsdp on 8 devices; dp -> fsdp and fsdp -> dp resumes; memory per device."""
    import jax

    from artrainer import distributed

    assert jax.device_count() == 8, jax.devices()
    for strategy in ("single", "dp", "fsdp"):
        trainer, model = fit(strategy, out, max_steps=STEPS)
        save_params(model, os.path.join(out, f"{strategy}.npz"))
        leaves = jax.tree.leaves(trainer.train_state)
        if strategy == "fsdp":
            split = [leaf for leaf in leaves if not leaf.sharding.is_fully_replicated]
            assert split, "fsdp left every leaf replicated"
            assert all(len(leaf.sharding.device_set) == 8 for leaf in leaves)
        if strategy == "dp":
            assert all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8 for leaf in leaves)
        per_device = distributed.bytes_per_device(trainer.train_state)
        np.save(os.path.join(out, f"{strategy}_bytes.npy"), max(per_device.values()))
        # validation and sampling run on the sharded weights too
        metrics = trainer.validate(model, loader())
        assert np.isfinite(metrics["val/loss"]), metrics
        samples = model.generate(2, 8, rngs=jax.random.key(0))
        assert samples.shape == (2, 8)
    for first, second in (("dp", "fsdp"), ("fsdp", "dp")):
        ckpt = os.path.join(out, f"ckpt_{first}")
        fit(first, out, max_steps=HALF, ckpt_dir=ckpt)
        _, model = fit(second, out, max_steps=STEPS, ckpt_dir=ckpt, resume="last")
        save_params(model, os.path.join(out, f"{first}_then_{second}.npz"))


def multihost(out, process_id, port):
    """Two processes with two CPU devices each: dp over the 4, checkpoint at HALF, resume."""
    import jax

    from artrainer import distributed

    distributed.initialize(f"localhost:{port}", 2, process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
    ckpt = os.path.join(out, "ckpt")
    fit("dp", out, max_steps=HALF, ckpt_dir=ckpt, num_shards=2, shard_index=process_id)
    _, model = fit("dp", out, max_steps=STEPS, ckpt_dir=ckpt, resume="last", num_shards=2, shard_index=process_id)
    if distributed.is_main_process():
        save_params(model, os.path.join(out, "multihost.npz"))


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    if scenario == "devices":
        devices(out)
    elif scenario == "multihost":
        multihost(out, int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"unknown scenario {scenario!r}")
