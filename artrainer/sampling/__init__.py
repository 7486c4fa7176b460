"""Sampling shared by every model: logits processors and the configuration that drives them."""

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

__all__ = [
    "SamplingConfig",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "process_logits",
    "sample_from_logits",
    "token_log_probs",
]
