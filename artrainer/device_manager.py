"""Pick the accelerator to run on, and say what it is, before anything is placed on it.

JAX already puts arrays on its default device; this names that choice (a GPU if
there is one, else a TPU, else the CPU), lets a script force a platform, and
reports the memory a batch-size search has to fit in.
"""

from __future__ import annotations

import logging

import jax

#: Platforms in order of preference.
PLATFORMS = ("gpu", "tpu", "cpu")

logger = logging.getLogger("artrainer")


def available_platforms() -> list[str]:
    """The platforms of :data:`PLATFORMS` this process has devices for, best first."""
    found = []
    for platform in PLATFORMS:
        try:
            jax.devices(platform)
        except RuntimeError:  # JAX's answer for a backend that is absent or failed to start
            continue
        found.append(platform)
    return found


class DeviceManager:
    """The best available device (``prefer`` forces ``"cpu"``, ``"gpu"`` or ``"tpu"``).

    ``jax.device_put(model, device_manager.get_device())`` places an ``nnx.Module``
    (a pytree in Flax 0.12) or a batch dict there.
    """

    def __init__(self, prefer: str | None = None):
        if prefer is not None and not isinstance(prefer, str):
            raise TypeError(f"prefer must be None or one of {PLATFORMS}; got {prefer!r} "
                            f"({type(prefer).__name__})")
        if prefer is not None and prefer not in PLATFORMS:
            raise ValueError(f"prefer={prefer!r} is not a platform; use None or one of {PLATFORMS}")
        available = available_platforms()
        if prefer is not None and prefer not in available:
            raise ValueError(f"prefer={prefer!r}, but this process has no {prefer} device; "
                             f"available platforms: {available}")
        # A backend outside PLATFORMS (a plugin) is used as JAX's default device.
        self.platform: str = prefer or (available[0] if available else jax.default_backend())
        self.devices: list[jax.Device] = jax.devices(self.platform)
        self._announced = False

    @property
    def device_count(self) -> int:
        return len(self.devices)

    def get_device(self) -> jax.Device:
        """The first device of the platform; the first call logs :meth:`describe`."""
        if not self._announced:
            logger.info("DeviceManager: %s", self.describe())
            self._announced = True
        return self.devices[0]

    def memory_limit_bytes(self) -> int | None:
        """Bytes XLA may allocate on the device, or None where it does not say (the CPU)."""
        stats = self.devices[0].memory_stats()
        return None if not stats or "bytes_limit" not in stats else int(stats["bytes_limit"])

    def describe(self) -> str:
        """One line, e.g. ``"gpu: 1 x NVIDIA H100 80GB HBM3, 79.2 GiB"``."""
        kinds = sorted({device.device_kind for device in self.devices})
        limit = self.memory_limit_bytes()
        memory = "memory limit unknown" if limit is None else f"{limit / 2**30:.1f} GiB"
        if limit is not None and self.device_count > 1:
            memory += " each"
        return f"{self.platform}: {self.device_count} x {', '.join(kinds)}, {memory}"
