"""Speculative sampling: a small draft model proposes, the target model verifies.

Each round the draft samples ``k`` tokens one by one (distributions ``q``); the target
scores all of them in one cached forward pass (distributions ``p``). Draft token ``j``
is accepted with probability ``min(1, p_j / q_j)``; at the first rejection a token is
drawn from ``norm(max(0, p_j - q_j))`` and the round ends; if all ``k`` are accepted a
bonus token comes from the target's next distribution. Every emitted token is then
distributed exactly as the target's (Leviathan et al. 2023; Chen et al. 2023), with
``p`` and ``q`` being the *processed* distributions (temperature, top-k, top-p), so
temperature 0 reproduces the target's greedy output.

Rows accept different numbers of tokens, so each row decodes on its own (batch 1,
``vmap``-ed over rows); slots past a row's length in its caches are stale but masked,
and get overwritten before any query can see them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from artrainer.sampling.decode import as_key, check_prompt
from artrainer.sampling.processors import SamplingConfig, token_log_probs
from artrainer.validation import require_int


@functools.partial(jax.jit, static_argnames=("target_def", "draft_def", "max_length", "k", "config"))
def _speculative_decode(target_def, target_state, draft_def, draft_state, prompts, keys, *,
                        max_length: int, k: int, config: SamplingConfig):
    target, draft = nnx.merge(target_def, target_state), nnx.merge(draft_def, draft_state)
    prompt_length = prompts.shape[1]
    slots = max_length + k + 1  # the last round may run up to k + 1 tokens past max_length

    def decode_row(prompt, key):
        tokens = jnp.zeros((slots,), jnp.int32).at[:prompt_length].set(prompt)
        target_cache, draft_cache = target.init_cache(1, slots), draft.init_cache(1, slots)
        if prompt_length > 1:  # every prompt token but the last, which opens the first round
            _, target_cache = target.forward_with_cache(prompt[None, :-1], target_cache, index=0)
            _, draft_cache = draft.forward_with_cache(prompt[None, :-1], draft_cache, index=0)

        def propose(carry, offset):
            cache, token, key, start = carry
            outputs, cache = draft.forward_with_cache(token[None, None], cache, index=start + offset)
            log_q = token_log_probs(outputs["logits"][0, 0], config)
            key, draw = jax.random.split(key)
            token = jax.random.categorical(draw, log_q).astype(jnp.int32)
            return (cache, token, key, start), (token, log_q)

        def round_(carry):
            tokens, target_cache, draft_cache, length, accepted, rounds, key = carry
            last = tokens[length - 1]
            key, draft_key, accept_key, extra_key = jax.random.split(key, 4)
            # k + 1 draft steps: the last only writes d_k into the draft's cache, which the
            # next round needs when all k are accepted; its proposal is dropped.
            (draft_cache, _, _, _), (proposal, log_q) = jax.lax.scan(
                propose, (draft_cache, last, draft_key, length - 1), jnp.arange(k + 1))
            proposal, log_q = proposal[:k], log_q[:k]
            outputs, target_cache = target.forward_with_cache(
                jnp.concatenate([last[None], proposal])[None], target_cache, index=length - 1)
            log_p = token_log_probs(outputs["logits"][0], config)               # [k + 1, V]
            ratio = log_p[jnp.arange(k), proposal] - log_q[jnp.arange(k), proposal]
            accept = jnp.log(jax.random.uniform(accept_key, (k,))) < ratio
            n_accepted = jnp.argmin(jnp.append(accept, False))                  # first rejection, or k
            p = jnp.exp(log_p[n_accepted])
            q = jnp.where(n_accepted < k, jnp.exp(log_q[jnp.minimum(n_accepted, k - 1)]), 0.0)
            residual = jnp.maximum(p - q, 0.0)
            residual = jnp.where(residual.sum() > 0, residual, p)  # p == q: nothing left to correct
            extra = jax.random.categorical(extra_key, jnp.log(residual)).astype(jnp.int32)
            emitted = jnp.where(jnp.arange(k + 1) < n_accepted, jnp.append(proposal, 0), extra)
            tokens = jax.lax.dynamic_update_slice(tokens, emitted, (length,))
            return (tokens, target_cache, draft_cache, length + n_accepted + 1, accepted + n_accepted,
                    rounds + 1, key)

        carry = (tokens, target_cache, draft_cache, jnp.asarray(prompt_length), jnp.asarray(0), jnp.asarray(0), key)
        tokens, _, _, _, accepted, rounds, _ = jax.lax.while_loop(lambda c: c[3] < max_length, round_, carry)
        return tokens[:max_length], accepted, rounds

    return jax.vmap(decode_row)(prompts, keys)


def speculative_sampling(target, draft, n_samples: int, max_length: int, *, k: int = 4, prompt=None,
                         temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                         rngs) -> tuple[jax.Array, float]:
    """Sample ``[n_samples, max_length]`` sequences from ``target`` with ``draft`` proposing ``k`` at a time.

    Both models need the KV-cache interface (``init_cache``, ``forward_with_cache``) and
    the same vocabulary; ``k`` is in ``[1, max_length]``. Returns
    ``(sequences, acceptance_rate)``: the fraction of drafted tokens the target accepted.
    """
    for name, model in (("target", target), ("draft", draft)):
        if not (callable(getattr(model, "forward_with_cache", None)) and callable(getattr(model, "init_cache", None))):
            raise TypeError(f"{name} must have init_cache() and forward_with_cache(); got {type(model).__name__}")
    if target.vocab_size != draft.vocab_size:
        raise ValueError(f"target and draft vocabularies differ: {target.vocab_size} vs {draft.vocab_size}")
    n_samples = require_int("n_samples", n_samples, minimum=1)
    limit = min(target.sequence_length, draft.sequence_length)
    max_length = require_int("max_length", max_length, minimum=2, maximum=limit,
                             why="the shorter sequence_length of target and draft")
    # Drafting more tokens than a whole sequence holds would only grow the caches
    # (max_length + k + 1 slots) and the draft scan.
    k = require_int("k", k, minimum=1, maximum=max_length)
    config = SamplingConfig.create(temperature=temperature, top_k=top_k, top_p=top_p,
                                   vocab_size=target.vocab_size)
    start = [getattr(target, "bos_token_id", None) or 0] if prompt is None else prompt
    prompts = check_prompt(start, n_samples=n_samples, vocab_size=target.vocab_size, max_length=max_length)
    target_def, target_state = nnx.split(target)
    draft_def, draft_state = nnx.split(draft)
    keys = jax.random.split(as_key(rngs), n_samples)
    sequences, accepted, rounds = _speculative_decode(
        target_def, target_state, draft_def, draft_state, jnp.asarray(prompts), keys,
        max_length=max_length, k=k, config=config)
    accepted, rounds = jax.device_get((accepted, rounds))
    return sequences, float(accepted.sum()) / float(k * rounds.sum())
