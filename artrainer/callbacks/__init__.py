"""Callback base class and the built-in callbacks."""

from artrainer.callbacks.base import HOOKS, Callback
from artrainer.callbacks.early_stopping import EarlyStopping
from artrainer.callbacks.gradient_clipping import GradientClipping
from artrainer.callbacks.loading import load_callback
from artrainer.callbacks.lr_monitor import LearningRateMonitor
from artrainer.callbacks.lr_warmup import LRWarmup
from artrainer.callbacks.metrics_logger import MetricsLogger
from artrainer.callbacks.model_checkpoint import ModelCheckpoint
from artrainer.callbacks.progress_bar import ProgressBar
from artrainer.callbacks.sample_generator import SampleGenerator
from artrainer.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "HOOKS", "Callback", "EarlyStopping", "GradientClipping", "LRWarmup", "LearningRateMonitor",
    "MetricsLogger", "ModelCheckpoint", "ProgressBar", "SampleGenerator", "TerminateOnNaN",
    "load_callback",
]
