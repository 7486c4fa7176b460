"""The user guide's Transformer snippets, run as written (only the import path changed)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from artrainer.models import TransformerAR


def test_quick_start_and_generation_strategies():
    # Initialize RNGs
    rngs = nnx.Rngs(params=0, dropout=1, sample=2)

    # Create Transformer autoregressive model
    model = TransformerAR(
        vocab_size=10000,
        sequence_length=512,
        hidden_dim=512,
        num_layers=6,
        num_heads=8,
        rngs=rngs
    )

    # Training
    sequences = jnp.array([[1, 2, 3, 4, 5]])  # [batch, seq_len]
    outputs = model(sequences, rngs=rngs)
    logits = outputs['logits']  # [batch, seq_len, vocab_size]
    assert logits.shape == (1, 5, 10000)

    # Generation
    samples = model.generate(
        n_samples=4,
        max_length=128,
        temperature=0.8,
        top_p=0.9,
        rngs=rngs
    )
    assert samples.shape == (4, 128)

    # Top-k sampling
    samples = model.generate(n_samples=4, max_length=128, temperature=1.0, top_k=40, rngs=rngs)
    assert samples.shape == (4, 128)

    # Beam search
    samples = model.beam_search(
        beam_size=5,
        max_length=128,
        rngs=rngs
    )
    assert samples[0].shape == (5, 128)

    # Start with a prompt
    prompt = jnp.array([[1, 45, 23, 89]])  # Token IDs

    # Continue from prompt
    continuation = model.sample_with_conditioning(
        conditioning=prompt,
        n_samples=4,  # 4 completions for same prompt
        temperature=0.8,
        top_p=0.9,
        rngs=rngs
    )
    assert continuation.shape == (4, 512)
    assert (continuation[:, :4] == prompt).all()


def test_training_snippet_loss_keys():
    rngs = nnx.Rngs(params=0, dropout=1, sample=2)
    model = TransformerAR(
        vocab_size=50000,         # Vocabulary size
        sequence_length=1024,     # Maximum sequence length
        hidden_dim=768,           # Model dimension
        num_layers=2,             # (the guide's 12 layers, trimmed for CI time)
        num_heads=12,             # Attention heads
        feedforward_dim=3072,     # FFN hidden dimension
        dropout_rate=0.1,         # Dropout probability
        rngs=rngs
    )
    sequences = jnp.zeros((8, 512), dtype=jnp.int32)  # [batch, seq_len]
    outputs = model(sequences, rngs=rngs, training=True)
    batch = {"sequences": sequences}
    loss_dict = model.loss_fn(batch, outputs, rngs=rngs)
    print(f"NLL Loss: {loss_dict['nll_loss']:.4f}")
    print(f"Perplexity: {loss_dict['perplexity']:.2f}")
    print(f"Accuracy: {loss_dict['accuracy']:.4f}")
    assert float(loss_dict["perplexity"]) > 1.0
