"""Scale-out: dp / fsdp on 8 virtual CPU devices equal the single-device run and resume from
each other's checkpoints; two processes on loopback train, checkpoint and resume; the
data loader's per-process shards; rematerialisation changes nothing but memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sharded_runs
from artrainer import Trainer, distributed
from artrainer.data import DataLoader
from artrainer.models import TransformerAR, WaveNet

SCRIPT = os.path.join(os.path.dirname(__file__), "sharded_runs.py")


def cpu_env(devices: int) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def assert_same_params(path, reference, *, what):
    other = np.load(path)
    assert sorted(other) == sorted(reference)
    for key in reference:
        np.testing.assert_allclose(other[key], reference[key], rtol=2e-5, atol=2e-6, err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory):
    """Parameters after STEPS single-device steps, trained in this process."""
    out = tmp_path_factory.mktemp("single")
    _, model = sharded_runs.fit("single", str(out), max_steps=sharded_runs.STEPS)
    sharded_runs.save_params(model, out / "single.npz")
    initial = sharded_runs.make_model()
    sharded_runs.save_params(initial, out / "initial.npz")
    return dict(np.load(out / "single.npz")), dict(np.load(out / "initial.npz"))


def test_dp_and_fsdp_on_8_devices_match_one_device_and_resume_from_each_other(tmp_path, single_reference):
    result = subprocess.run([sys.executable, SCRIPT, "devices", str(tmp_path)], env=cpu_env(8),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    reference, initial = single_reference
    assert any(not np.allclose(reference[k], initial[k]) for k in reference), "training did not move the weights"
    assert_same_params(tmp_path / "single.npz", reference, what="single in the 8-device process")
    for name in ("dp", "fsdp", "dp_then_fsdp", "fsdp_then_dp"):
        assert_same_params(tmp_path / f"{name}.npz", reference, what=name)
    dp_bytes, fsdp_bytes = (int(np.load(tmp_path / f"{s}_bytes.npy")) for s in ("dp", "fsdp"))
    assert fsdp_bytes < dp_bytes / 4, (dp_bytes, fsdp_bytes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_on_loopback_train_checkpoint_and_resume(tmp_path, single_reference):
    port = free_port()
    processes = [subprocess.Popen([sys.executable, SCRIPT, "multihost", str(tmp_path), str(i), str(port)],
                                  env=cpu_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            process.kill()
    for i, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i}:\n{output[-4000:]}"
    assert_same_params(tmp_path / "multihost.npz", single_reference[0], what="2 processes x 2 devices, resumed")
    assert sorted(os.listdir(tmp_path / "ckpt")) == [str(sharded_runs.STEPS)]


def test_dp_on_a_one_device_mesh_resumes_exactly(tmp_path, single_reference):
    """The sharded code path (placement, pinned shardings, sharded restore) in this process."""
    ckpt = str(tmp_path / "ckpt")
    sharded_runs.fit("dp", str(tmp_path), max_steps=sharded_runs.HALF, ckpt_dir=ckpt)
    _, model = sharded_runs.fit("dp", str(tmp_path), max_steps=sharded_runs.STEPS, ckpt_dir=ckpt, resume="last")
    sharded_runs.save_params(model, tmp_path / "dp.npz")
    assert_same_params(tmp_path / "dp.npz", single_reference[0], what="dp on one device, resumed")


def test_loader_shards_partition_every_global_batch():
    data = {"x": np.arange(20)}
    whole = [b["x"] for b in DataLoader(data, 8, seed=3, last_batch="pad")]
    shards = [[b for b in DataLoader(data, 8, seed=3, last_batch="pad", num_shards=4, shard_index=i)]
              for i in range(4)]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([shard[step]["x"] for shard in shards]), batch)
    masks = np.concatenate([shard[-1]["example_mask"] for shard in shards])
    assert masks.tolist() == [1.0] * 4 + [0.0] * 4
    with pytest.raises(ValueError, match="divisible by num_shards=3"):
        DataLoader(data, 8, num_shards=3)
    with pytest.raises(ValueError, match="shard_index=2 must be < num_shards=2"):
        DataLoader(data, 8, num_shards=2, shard_index=2)


def test_fsdp_splits_the_largest_divisible_axis():
    assert distributed.fsdp_spec((16, 64), 8) == jax.sharding.PartitionSpec(None, "data")
    assert distributed.fsdp_spec((24, 12), 8) == jax.sharding.PartitionSpec("data", None)
    assert distributed.fsdp_spec((7, 5), 8) == jax.sharding.PartitionSpec()
    assert distributed.fsdp_spec((), 8) == jax.sharding.PartitionSpec()


def test_bad_strategy_mesh_and_initialize_arguments():
    with pytest.raises(ValueError, match="strategy must be one of 'single', 'dp', 'fsdp'; got 'ddp'"):
        Trainer(max_steps=1, strategy="ddp")
    with pytest.raises(ValueError, match="strategy='dp' or 'fsdp'"):
        Trainer(max_steps=1, mesh=jax.make_mesh((1,), ("data",)))
    with pytest.raises(ValueError, match="axis named 'data'"):
        Trainer(max_steps=1, strategy="dp", mesh=jax.make_mesh((1,), ("batch",)))
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        Trainer(max_steps=1, strategy="dp", mesh="data")
    with pytest.raises(ValueError, match=r"missing \['num_processes', 'process_id'\]"):
        distributed.initialize("localhost:1234")
    with pytest.raises(ValueError, match="process_id=2"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(TypeError, match=r"num_processes must be an int >= 1 or None; got True \(bool\)"):
        distributed.initialize("localhost:1234", True, 0)
    with pytest.raises(ValueError, match=r"strategy must be one of 'single', 'dp', 'fsdp'; got 'ddp' \(str\)"):
        distributed.make_mesh("ddp")


def grads_of(model, batch):
    def loss(model):
        return model.loss_fn(batch, model(batch[model.input_key], training=True))["loss"]
    return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize("build, batch", [
    (lambda remat: TransformerAR(vocab_size=32, sequence_length=16, hidden_dim=16, num_layers=2, num_heads=2,
                                 remat=remat, rngs=nnx.Rngs(0)),
     {"sequences": np.random.default_rng(0).integers(0, 32, (2, 16)).astype(np.int32)}),
    (lambda remat: WaveNet(num_layers=4, num_stacks=2, residual_channels=8, dilation_channels=8,
                           skip_channels=8, remat=remat, rngs=nnx.Rngs(0)),
     {"waveform": np.random.default_rng(0).integers(0, 256, (2, 32)).astype(np.int32)}),
])
def test_remat_gives_the_same_loss_and_gradients(build, batch):
    (loss, grads), (loss_remat, grads_remat) = (grads_of(build(flag), batch) for flag in (False, True))
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-6 * float(np.abs(a).max()))
    jaxpr = str(jax.make_jaxpr(lambda m: grads_of(m, batch)[0])(build(True)))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
