"""Compiled beam search over a model with a KV cache (one prompt, ``beam_size`` beams).

Each step scores all ``beam_size × vocab`` extensions of the live beams and keeps the
``2 × beam_size`` best, as Hugging Face does: candidates ending in EOS within the top
``beam_size`` become finished hypotheses, the best ``beam_size`` others stay alive,
and the KV caches are reordered to follow their parent beams. A hypothesis scores
``sum log p / length ** length_penalty``, where ``length`` counts generated tokens —
for an EOS-finished one, those before the EOS (at least 1), as HF counts them.
Finished and still-live hypotheses compete at the end.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "beam_size", "max_length", "length_penalty",
                                             "eos_token_id", "pad_token_id"))
def beam_search(graphdef, state, prompt, *, beam_size: int, max_length: int, length_penalty: float,
                eos_token_id: int | None, pad_token_id: int) -> tuple[jax.Array, jax.Array]:
    """Returns ``(sequences [beam_size, max_length], scores [beam_size])``, best first."""
    model = nnx.merge(graphdef, state)
    prompt_length = prompt.shape[0]
    vocab = model.vocab_size
    neg_inf = jnp.asarray(-jnp.inf, jnp.float32)

    def normalise(log_prob, length):
        return log_prob / jnp.maximum(length, 1).astype(jnp.float32) ** length_penalty

    prompts = jnp.broadcast_to(prompt, (beam_size, prompt_length))
    outputs, cache = model.forward_with_cache(prompts, model.init_cache(beam_size, max_length), index=0)
    sequences = jnp.full((beam_size, max_length), pad_token_id, jnp.int32).at[:, :prompt_length].set(prompts)
    # Only beam 0 is live at first: identical copies would fill the beam with duplicates.
    alive_log_prob = jnp.full((beam_size,), neg_inf).at[0].set(0.0)
    finished = jnp.full((beam_size, max_length), pad_token_id, jnp.int32)
    finished_score = jnp.full((beam_size,), neg_inf)

    def step(carry, index):
        sequences, alive_log_prob, cache, last, finished, finished_score = carry
        log_probs = jax.nn.log_softmax(last.astype(jnp.float32), axis=-1)
        candidates = (alive_log_prob[:, None] + log_probs).reshape(-1)
        top_log_prob, top_index = jax.lax.top_k(candidates, 2 * beam_size)
        parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        extended = sequences[parent].at[:, index].set(token)
        is_eos = (token == eos_token_id) if eos_token_id is not None else jnp.zeros_like(token, bool)

        # Finished: EOS candidates ranked within the first beam_size, scored without the EOS.
        in_top = jnp.arange(2 * beam_size) < beam_size
        generated = index - prompt_length
        eos_score = jnp.where(is_eos & in_top & jnp.isfinite(top_log_prob),
                              normalise(top_log_prob, generated), neg_inf)
        eos_sequences = jnp.where(jnp.arange(max_length) > index, pad_token_id, extended)
        pool_score = jnp.concatenate([finished_score, eos_score])
        finished_score, keep = jax.lax.top_k(pool_score, beam_size)
        finished = jnp.concatenate([finished, eos_sequences])[keep]

        # Alive: the best beam_size candidates that did not end in EOS.
        alive_candidates = jnp.where(is_eos, neg_inf, top_log_prob)
        alive_log_prob, pick = jax.lax.top_k(alive_candidates, beam_size)
        sequences = extended[pick]
        cache = jax.tree.map(lambda c: c[parent[pick]], cache)
        outputs, cache = model.forward_with_cache(sequences[:, index][:, None], cache, index=index)
        return (sequences, alive_log_prob, cache, outputs["logits"][:, 0], finished, finished_score), None

    carry = (sequences, alive_log_prob, cache, outputs["logits"][:, -1], finished, finished_score)
    carry, _ = jax.lax.scan(step, carry, jnp.arange(prompt_length, max_length))
    sequences, alive_log_prob, _, _, finished, finished_score = carry
    alive_score = normalise(alive_log_prob, max_length - prompt_length)
    scores, order = jax.lax.top_k(jnp.concatenate([finished_score, alive_score]), beam_size)
    return jnp.concatenate([finished, sequences])[order], scores
