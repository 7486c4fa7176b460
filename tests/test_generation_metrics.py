"""Generation-quality metrics (artrainer.metrics): distinct-n, repetition and fluency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artrainer.metrics import distinct_n, generation_quality, repetition_rate, sample_perplexity
from artrainer.models.transformer import TransformerAR

EOS, PAD = 6, 7


@pytest.fixture(scope="module")
def model() -> TransformerAR:
    return TransformerAR(8, 8, 16, 1, 2, rngs=nnx.Rngs(0), pad_token_id=PAD)


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 1, 2]], 1) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[1, 2, 1, 2]], 3) == pytest.approx(2 / 2)
    # Pooled over the batch: (1, 2) in both rows counts once.
    assert distinct_n(np.array([[1, 2, 3], [1, 2, 4]]), 2) == pytest.approx(3 / 4)
    assert distinct_n([[1, 2, 3], [1]], 1) == pytest.approx(3 / 4)  # ragged rows
    assert distinct_n([[1]], 2) == 0.0  # no bigram at all


def test_repetition_rate_by_hand():
    assert repetition_rate([[1, 2, 1, 2]], 2) == pytest.approx(1 / 3)  # (1, 2) again at the end
    assert repetition_rate([[1, 2, 1, 2]], 1) == pytest.approx(2 / 4)
    assert repetition_rate([[1, 1, 1, 1], [1, 2, 3, 4]], 1) == pytest.approx((3 / 4 + 0) / 2)
    # A row without any n-gram does not count towards the mean.
    assert repetition_rate([[1, 1, 1], [5]], 2) == pytest.approx(1 / 2)
    assert repetition_rate([[3, 3, 3, 3, 3, 3]]) == pytest.approx(2 / 3)  # default n=4: 3 grams, 2 repeats


def test_eos_and_pad_end_a_sample():
    samples = jnp.array([[1, 2, EOS, 1, 1, 1],
                         [3, PAD, PAD, 3, 3, 3],
                         [4, PAD, EOS, 4, 4, 4]])
    ids = {"eos_token_id": EOS, "pad_token_id": PAD}
    # Content rows: [1, 2], [3], [4].
    assert distinct_n(samples, 1, **ids) == 1.0
    assert distinct_n(samples, 2, **ids) == 1.0
    assert repetition_rate(samples, 1, **ids) == 0.0
    assert distinct_n(samples, 1) == pytest.approx(6 / 18)  # without them, padding looks like content
    assert distinct_n(samples, 1, eos_token_id=EOS) == pytest.approx(5 / 10)  # rows [1,2], [3,7,7,3,3,3], [4,7]


def test_metrics_validate_their_arguments():
    with pytest.raises(ValueError, match=r"n must be an int >= 1; got 0 \(int\)"):
        distinct_n([[1, 2]], 0)
    with pytest.raises(ValueError, match="shape"):
        repetition_rate(np.arange(4), 2)
    with pytest.raises(ValueError, match="int token ids"):
        distinct_n([[0.5, 1.5]], 1)


def _independent_perplexity(model, samples, weights):
    log_probs = jax.nn.log_softmax(model(samples)["logits"][:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, samples[:, 1:, None], axis=-1)[..., 0]
    weights = weights * (samples[:, 1:] != PAD)
    return float(jnp.exp(jnp.sum(nll * weights) / jnp.sum(weights)))


def test_sample_perplexity_is_exp_of_the_models_mean_nll(model):
    samples = jnp.asarray(np.random.default_rng(0).integers(0, 8, (4, 8)), jnp.int32)
    mask = jnp.asarray(np.random.default_rng(1).integers(0, 2, (4, 8)), jnp.int32)
    assert sample_perplexity(model, samples) == pytest.approx(
        _independent_perplexity(model, samples, jnp.ones((4, 7))), rel=1e-5)
    assert sample_perplexity(model, samples, mask=mask) == pytest.approx(
        _independent_perplexity(model, samples, mask[:, 1:]), rel=1e-5)


def test_generation_quality_reports_every_metric(model):
    samples = np.array([[0, 1, 2, 1, 2, EOS, 3, 4],
                        [0, 3, 3, 3, PAD, PAD, PAD, PAD]])
    quality = generation_quality(samples, reference_model=model, eos_token_id=EOS, pad_token_id=PAD)
    assert set(quality) == {"distinct_1", "distinct_2", "distinct_3", "repetition_rate", "fluency_perplexity"}
    rows = [[0, 1, 2, 1, 2], [0, 3, 3, 3]]
    assert quality["distinct_2"] == distinct_n(rows, 2) == pytest.approx(5 / 7)
    assert quality["repetition_rate"] == repetition_rate(rows)
    # Fluency scores each row through its first EOS (the decision to stop) and never past PAD.
    through_eos = np.array([[1, 1, 1, 1, 1, 1, 0, 0],
                            [1, 1, 1, 1, 0, 0, 0, 0]])
    assert quality["fluency_perplexity"] == pytest.approx(sample_perplexity(model, samples, mask=through_eos))
    assert "fluency_perplexity" not in generation_quality(samples, n_values=(1,))


def test_own_greedy_samples_are_more_fluent_than_random_ones():
    """Even untrained: per step, greedy NLL = -log max p < log V <= E_uniform[-log p].

    So greedy rows score below the uniform perplexity V = 8 and random rows above it in
    expectation; with logits of std ~1 both margins are many standard errors wide.
    """
    model = TransformerAR(8, 8, 16, 1, 2, rngs=nnx.Rngs(0))
    logits = nnx.jit(lambda model, tokens: model(tokens)["logits"])
    greedy = jnp.zeros((8, 8), jnp.int32).at[:, 0].set(jnp.arange(8))
    for t in range(7):  # Causal, so the unfilled tail never affects position t.
        greedy = greedy.at[:, t + 1].set(jnp.argmax(logits(model, greedy)[:, t], axis=-1))
    random = np.random.default_rng(0).integers(0, 8, (64, 8))
    assert sample_perplexity(model, greedy) < 8 < sample_perplexity(model, random)
