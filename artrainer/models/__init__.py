"""Model zoo: ARModule subclasses the Trainer runs as-is, each with its frozen config dataclass."""

from artrainer.models.config import ModelConfig
from artrainer.models.pixelcnn import PixelCNN, PixelCNNConfig
from artrainer.models.transformer import (PrefixParam, PrefixTunedTransformer, PrefixTuningConfig, TransformerAR,
                                          TransformerConfig)
from artrainer.models.wavenet import WaveNet, WaveNetConfig

__all__ = ["ModelConfig", "PixelCNN", "PixelCNNConfig", "PrefixParam", "PrefixTunedTransformer", "PrefixTuningConfig",
           "TransformerAR", "TransformerConfig", "WaveNet", "WaveNetConfig"]
