"""Sampling shared by every model: logits processors, the configuration that drives them, and
speculative sampling."""

from artrainer.sampling.processors import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample_from_logits,
    token_log_probs,
)
from artrainer.sampling.speculative import speculative_sampling

__all__ = [
    "SamplingConfig",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "process_logits",
    "sample_from_logits",
    "speculative_sampling",
    "token_log_probs",
]
