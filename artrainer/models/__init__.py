"""Model zoo: ARModule subclasses the Trainer runs as-is."""

from artrainer.models.transformer import PrefixParam, PrefixTunedTransformer, TransformerAR

__all__ = ["PrefixParam", "PrefixTunedTransformer", "TransformerAR"]
