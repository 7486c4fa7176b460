"""Model zoo: ARModule subclasses the Trainer runs as-is."""

from artrainer.models.pixelcnn import PixelCNN
from artrainer.models.transformer import PrefixParam, PrefixTunedTransformer, TransformerAR
from artrainer.models.wavenet import WaveNet

__all__ = ["PixelCNN", "PrefixParam", "PrefixTunedTransformer", "TransformerAR", "WaveNet"]
