"""A tiny ARModule for the trainer tests: a bigram language model with optional dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from artrainer import ARModule
from artrainer.metrics import categorical_metrics, element_weights


class BigramLM(ARModule):
    """logits[t] = table[x[t]] predicts x[t + 1]."""

    def __init__(self, vocab_size: int = 16, *, hidden: int = 8, dropout_rate: float = 0.0, rngs: nnx.Rngs):
        self.vocab_size = vocab_size
        self.embed = nnx.Embed(vocab_size, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, vocab_size, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)
        self.hidden, self.dropout_rate = hidden, dropout_rate

    @property
    def hparams(self):
        return {"vocab_size": self.vocab_size, "hidden": self.hidden, "dropout_rate": self.dropout_rate}

    def __call__(self, x, *, rngs=None, training=False):
        h = self.dropout(self.embed(x), deterministic=not training, rngs=rngs)
        return {"logits": self.out(h)}

    def loss_fn(self, batch, outputs, *, rngs=None):
        tokens = batch["sequences"]
        targets = tokens[:, 1:]
        mask = batch["mask"][:, 1:] if "mask" in batch else None
        weights = element_weights(batch, targets.shape, mask=mask)
        return categorical_metrics(outputs["logits"][:, :-1], targets, weights)

    def generate(self, n_samples, max_length=8, *, rngs, temperature=1.0):
        key = rngs.sample()

        def body(token, key):
            logits = self(token[:, None])["logits"][:, 0] / temperature
            nxt = jax.random.categorical(key, logits).astype(jnp.int32)
            return nxt, nxt

        start = jnp.zeros((n_samples,), jnp.int32)
        _, tokens = jax.lax.scan(body, start, jax.random.split(key, max_length - 1))
        return jnp.concatenate([start[:, None], tokens.T], axis=1)


def cyclic_sequences(n: int, length: int, vocab: int, seed: int = 0):
    """Sequences where token t+1 = (token t + 1) mod vocab, from random starts: fully learnable."""
    import numpy as np
    starts = np.random.default_rng(seed).integers(0, vocab, size=(n, 1))
    return ((starts + np.arange(length)[None, :]) % vocab).astype(np.int32)
