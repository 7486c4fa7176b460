"""Model zoo: ARModule subclasses the Trainer runs as-is."""

from artrainer.models.transformer import TransformerAR

__all__ = ["TransformerAR"]
