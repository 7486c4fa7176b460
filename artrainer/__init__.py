"""artrainer: a Lightning-style trainer for autoregressive models in JAX + Flax NNX."""

from artrainer.callbacks.base import Callback
from artrainer.device_manager import DeviceManager
from artrainer.module import ARModule
from artrainer.trainer import DivergenceError, Trainer

__version__ = "0.1.0"

__all__ = ["ARModule", "Callback", "DeviceManager", "DivergenceError", "Trainer", "__version__"]
