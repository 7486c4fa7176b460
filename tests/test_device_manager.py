"""DeviceManager: which device, what it is, and the user guide's placement snippet."""

from __future__ import annotations

import logging
import re

import jax
import numpy as np
import pytest
from flax import nnx

from artrainer.device_manager import DeviceManager, available_platforms
from tiny_lm import BigramLM


def test_default_is_jaxs_best_device():
    manager = DeviceManager()
    assert manager.platform == jax.default_backend()  # JAX prefers accelerators over the CPU too
    assert manager.get_device() == jax.devices()[0]
    assert manager.devices == jax.devices()
    assert manager.device_count == len(jax.devices())


def test_cpu_has_no_memory_limit():
    manager = DeviceManager(prefer="cpu")
    assert manager.get_device().platform == "cpu"
    assert manager.memory_limit_bytes() is None
    count = len(jax.devices("cpu"))
    assert manager.describe() == f"cpu: {count} x cpu, memory limit unknown"


def test_describe_reads_the_accelerators_memory_limit():
    class FakeGPU:
        device_kind = "NVIDIA H100 80GB HBM3"

        def memory_stats(self):
            return {"bytes_limit": 85_000_000_000, "bytes_in_use": 0}

    manager = DeviceManager(prefer="cpu")
    manager.platform, manager.devices = "gpu", [FakeGPU()]
    assert manager.memory_limit_bytes() == 85_000_000_000
    assert manager.describe() == "gpu: 1 x NVIDIA H100 80GB HBM3, 79.2 GiB"


def test_absent_platform_names_the_available_ones():
    available = available_platforms()
    if "gpu" in available:
        pytest.skip("this machine has a GPU")
    listed = re.escape(str(available))
    with pytest.raises(ValueError, match=rf"prefer='gpu'.*no gpu device.*available platforms: {listed}"):
        DeviceManager(prefer="gpu")


@pytest.mark.parametrize("prefer, error, match", [
    ("cuda", ValueError, r"prefer='cuda' is not a platform; use None or one of \('gpu', 'tpu', 'cpu'\)"),
    (0, TypeError, r"prefer must be None or one of .* got 0 \(int\)"),
])
def test_bad_prefer(prefer, error, match):
    with pytest.raises(error, match=match):
        DeviceManager(prefer=prefer)


def test_get_device_logs_the_description_once(caplog):
    manager = DeviceManager()
    with caplog.at_level(logging.INFO, logger="artrainer"):
        manager.get_device()
        manager.get_device()
    assert [r.getMessage() for r in caplog.records] == [f"DeviceManager: {manager.describe()}"]


def test_user_guide_snippet_places_model_and_batch():
    model = BigramLM(16, rngs=nnx.Rngs(0))
    batch = {"sequences": np.arange(12, dtype=np.int32).reshape(2, 6) % 16}

    device_manager = DeviceManager()
    device = device_manager.get_device()
    model = jax.device_put(model, device)
    batch = jax.device_put(batch, device)

    assert isinstance(model, BigramLM)
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(leaf.devices() == {device} for leaf in leaves)
    assert batch["sequences"].devices() == {device}
    assert model(batch["sequences"])["logits"].shape == (2, 6, 16)
