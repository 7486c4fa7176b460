"""Input pipeline: fixed-shape, resumable numpy batches."""

from artrainer.data.loader import DataLoader

__all__ = ["DataLoader"]
