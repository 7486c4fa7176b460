"""Several devices and hosts through JAX's own machinery: a device mesh, ``NamedSharding``
for the train state and the batches, and ``jax.distributed`` for multi-host runs.

Strategies (``Trainer(strategy=...)``), all over one mesh axis named ``data``:

- ``"single"``: one device, nothing placed explicitly (the default).
- ``"dp"``: data parallel. Parameters and optimizer state are replicated, each batch is
  split along its batch axis; XLA inserts the gradient all-reduce.
- ``"fsdp"``: fully sharded data parallel. As ``dp``, but every parameter and optimizer
  leaf is also split along its largest axis that divides the device count, so each device
  holds 1/N of the state; XLA gathers a layer's weights where they are used.

The same compiled step serves all three: only the shardings of its inputs differ, and
the step pins its output state to the input shardings.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from artrainer.validation import require_choice, require_int

STRATEGIES = ("single", "dp", "fsdp")
DATA_AXIS = "data"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: int | Sequence[int] | None = None) -> None:
    """Join a multi-host run: :func:`jax.distributed.initialize`, arguments first, then the
    environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; on
    SLURM, Open MPI or a TPU pod JAX finds them itself when all three are unset).

    Call it once per process, before anything touches a device. CPU processes exchange
    collectives over gloo, JAX's default CPU implementation.
    """
    num_processes = require_int("num_processes", num_processes, minimum=1, optional=True)
    process_id = require_int("process_id", process_id, minimum=0, optional=True)
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = _env_int("JAX_NUM_PROCESSES", minimum=1)
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = _env_int("JAX_PROCESS_ID", minimum=0)
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        raise ValueError(f"initialize needs coordinator_address, num_processes and process_id together (as "
                         f"arguments or JAX_* environment variables); missing {missing}")
    if process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids)


def is_main_process() -> bool:
    """Whether this process writes logs and draws progress bars (process 0)."""
    return jax.process_index() == 0


def make_mesh(strategy: str, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: every device of every
    process), or None for ``"single"``."""
    if require_choice("strategy", strategy, STRATEGIES) == "single":
        return None
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {DATA_AXIS!r} (the batch axis); "
                         f"it has {mesh.axis_names}")
    return mesh


def fsdp_spec(shape: tuple[int, ...], shards: int) -> PartitionSpec:
    """Split the largest axis of ``shape`` that ``shards`` divides; replicate if none does."""
    candidates = [axis for axis in np.argsort(shape)[::-1] if shape[axis] % shards == 0 and shape[axis] >= shards]
    if not candidates or shards == 1:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[int(candidates[0])] = DATA_AXIS
    return PartitionSpec(*spec)


def state_shardings(state: Any, mesh: Mesh, strategy: str) -> Any:
    """A ``NamedSharding`` per leaf of ``state``: replicated for ``dp``, :func:`fsdp_spec` for ``fsdp``."""
    shards = mesh.shape[DATA_AXIS]

    def sharding(leaf):
        shape = getattr(leaf, "shape", ())
        spec = fsdp_spec(tuple(shape), shards) if strategy == "fsdp" else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, state)


def batch_sharding(mesh: Mesh, *, accumulate: int = 1) -> NamedSharding:
    """Rows split over ``data``; with accumulation the leading micro-batch axis is not split."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS) if accumulate > 1 else PartitionSpec(DATA_AXIS))


def place_batch(batch: Mapping[str, Any], sharding: NamedSharding, *, accumulate: int = 1) -> dict[str, jax.Array]:
    """Global arrays from this process's rows of ``batch`` (all of them on one host).

    Each process passes the rows it read (see ``DataLoader(num_shards=, shard_index=)``);
    the global batch is their concatenation in process order.
    """
    axis = 1 if accumulate > 1 else 0
    devices_here = sum(1 for d in sharding.mesh.devices.flat if d.process_index == jax.process_index())
    placed = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim <= axis or value.shape[axis] % devices_here:
            raise ValueError(f"batch[{key!r}] has {value.shape[axis] if value.ndim > axis else 'no'} rows on "
                             f"this process, which must split evenly over its {devices_here} device(s) of the "
                             f"mesh; use a batch size divisible by the device count")
        spec = sharding.spec if value.ndim > axis else PartitionSpec()
        placed[key] = jax.make_array_from_process_local_data(NamedSharding(sharding.mesh, spec), value)
    return placed


def bytes_per_device(tree: Any) -> dict[str, int]:
    """Bytes of ``tree``'s arrays held by each device (addressable shards only)."""
    totals: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            totals[str(shard.device)] = totals.get(str(shard.device), 0) + shard.data.nbytes
    return totals


def _env_int(name: str, *, minimum: int) -> int:
    value = os.environ[name]
    if not value.isdigit() or int(value) < minimum:
        raise ValueError(f"environment variable {name}={value!r} must be an int >= {minimum}")
    return int(value)
