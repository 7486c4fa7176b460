"""Data-parallel scaling on virtual CPU devices, and state memory per device for dp vs fsdp.

JAX is started with 8 virtual CPU devices (XLA's host-platform device count). For 1, 2,
4 and 8 devices the same TransformerAR trains with ``strategy="dp"`` on a mesh of that
many devices at a fixed global batch; items/s is the Trainer's own throughput over the
last logging interval (after compilation). On a CPU the virtual devices share the same
cores, so this checks the sharded path end to end rather than measuring speedup.

Then a model whose optimizer state dominates its memory (wide layers, tiny batch) is set
up under ``dp`` and ``fsdp`` on 8 devices, and the bytes of parameters + optimizer
state each device holds are compared.

    python bench/scaling.py [--steps 30]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402  (the device count must be set before JAX starts)
import platform  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from artrainer import Trainer, distributed  # noqa: E402
from artrainer.data import DataLoader  # noqa: E402
from artrainer.models import TransformerAR  # noqa: E402


def model(hidden: int, layers: int) -> TransformerAR:
    return TransformerAR(vocab_size=256, sequence_length=64, hidden_dim=hidden, num_layers=layers, num_heads=4,
                         rngs=nnx.Rngs(0))


def data(rows: int, length: int) -> dict:
    return {"sequences": np.random.default_rng(0).integers(0, 256, (rows, length)).astype(np.int32)}


def throughput(devices: int, steps: int, batch: int) -> float:
    mesh = Mesh(np.asarray(jax.devices()[:devices]), (distributed.DATA_AXIS,))
    trainer = Trainer(max_steps=2 * steps, strategy="dp", mesh=mesh, log_every_n_steps=steps, logger=False,
                      enable_progress_bar=False)
    trainer.fit(model(128, 2), DataLoader(data(batch * 8, 64), batch, seed=0))
    return trainer.callback_metrics["throughput/items_per_sec"]


def state_bytes(strategy: str) -> tuple[int, int]:
    """(max bytes of params + optimizer state on one device, total bytes of that state)."""
    trainer = Trainer(max_steps=1, strategy=strategy, logger=False, enable_progress_bar=False)
    module = model(512, 4)
    trainer.fit(module, DataLoader(data(8, 16), 8, seed=0))
    per_device = distributed.bytes_per_device(trainer._state)
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(trainer._state))
    return max(per_device.values()), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed interval")
    parser.add_argument("--batch", type=int, default=32, help="global batch (rows of 64 tokens)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} CPUs, "
          f"{jax.device_count()} virtual {jax.devices()[0].device_kind} devices, jax {jax.__version__}")
    base = None
    for devices in (1, 2, 4, 8):
        items = throughput(devices, args.steps, args.batch)
        base = base or items
        print(f"dp on {devices} device(s): {items:,.0f} items/s ({items / base:.2f}x of 1 device)")
    dp, total = state_bytes("dp")
    fsdp, _ = state_bytes("fsdp")
    mib = 2 ** 20
    print(f"params + optimizer state {total / mib:.1f} MiB: dp holds {dp / mib:.1f} MiB per device, "
          f"fsdp {fsdp / mib:.1f} MiB per device ({dp / fsdp:.1f}x less)")


if __name__ == "__main__":
    main()
