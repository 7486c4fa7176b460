"""Logits processors against distributions computed independently, in numpy, from the definitions."""

import dataclasses
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artrainer.sampling import (
    SamplingConfig,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample_from_logits,
    token_log_probs,
)

# ---------------------------------------------------------------------------- numpy reference
# Written from the definitions (HF semantics), deliberately unlike the implementation:
# Python loops over a ranked list instead of sort / cumsum / scatter.


def np_softmax(x):
    e = np.exp(x - np.max(x))  # -inf -> probability 0
    return e / e.sum()


def np_rank(x):
    """Token ids by decreasing logit, equal logits by lower id."""
    return sorted(range(len(x)), key=lambda i: (-x[i], i))


def np_keep(x, kept):
    out = np.full_like(x, -np.inf)
    out[kept] = x[kept]
    return out


def np_penalty(x, seen, penalty):
    return np.array([(v / penalty if v > 0 else v * penalty) if s else v for v, s in zip(x, seen)])


def np_top_k(x, k):
    return np_keep(x, np_rank(x)[:k])


def np_top_p(x, p):
    """Add tokens, most probable first, until their mass reaches p: the crossing token is kept."""
    probs, nucleus, mass = np_softmax(x), [], 0.0
    for i in np_rank(x):
        if mass >= p:
            break
        nucleus.append(i)
        mass += probs[i]
        assert abs(mass - p) > 1e-4, "test case sits on the float32 top-p boundary"
    return np_keep(x, nucleus)


def expected_probs(logits, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                   seen=None):
    """The sampling distribution, in HF's order: penalty, temperature, top-k, top-p."""
    x = np.asarray(logits, np.float64)
    if seen is not None:
        x = np_penalty(x, seen, repetition_penalty)
    if temperature == 0 or top_k == 1:
        return np.eye(len(x))[np_rank(x)[0]]
    x = x / temperature
    if top_k:
        x = np_top_k(x, top_k)
    if top_p:
        x = np_top_p(x, top_p)
    return np_softmax(x)


# ---------------------------------------------------------------------------- cases

V = 6
PROBS = np.array([0.42, 0.23, 0.16, 0.09, 0.06, 0.04])  # cumulative 0.42 .65 .81 .90 .96 1
PERM = [3, 0, 5, 1, 4, 2]  # ranked tokens sit at scattered ids, so scatter-back is exercised
BASE = np.log(PROBS)[PERM]
PENALISED = np.array([2.0, -0.5, 1.0, -1.5, 0.3, -3.0])
SEEN = np.array([True, True, False, True, False, False])
MASKED = np.array([1.0, -np.inf, 0.5, 2.0, -np.inf, 0.0])

CASES = {
    "temperature_0.5": (BASE, dict(temperature=0.5)),
    "temperature_2": (BASE, dict(temperature=2.0)),
    "top_k_2": (BASE, dict(top_k=2)),
    "top_k_3": (BASE, dict(top_k=3)),
    # 0.42 < 0.5: the second token crosses p and must be kept ("cumsum <= p" keeps one).
    "top_p_0.5": (BASE, dict(top_p=0.5)),
    "top_p_0.8": (BASE, dict(top_p=0.8)),
    "top_p_0.95": (BASE, dict(top_p=0.95)),
    "temperature_top_k_top_p": (BASE, dict(temperature=2.0, top_k=4, top_p=0.7)),
    "repetition_penalty": (PENALISED, dict(repetition_penalty=1.8, seen=SEEN)),
    "penalty_temperature_top_k": (PENALISED, dict(repetition_penalty=1.8, seen=SEEN,
                                                  temperature=0.8, top_k=4)),
    "masked_tokens_top_p": (MASKED, dict(temperature=0.7, top_p=0.9)),
}

N_DRAWS = 20_000
# Chi-square critical values at p = 1e-4, by degrees of freedom.
CHI2_CRITICAL = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74}


def split_case(kwargs):
    kwargs = dict(kwargs)
    seen = kwargs.pop("seen", None)
    return SamplingConfig.create(**kwargs, vocab_size=V), seen


def sample_tokens(logits, config, seen=None, n=N_DRAWS, seed=0):
    """n samples, one key each, through a jitted vmap of sample_from_logits."""
    sample = jax.jit(jax.vmap(lambda key, logits, seen: sample_from_logits(key, logits, config, seen),
                              in_axes=(0, None, None)))
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(sample(keys, jnp.asarray(logits, jnp.float32), seen))


@pytest.mark.parametrize("case", CASES)
def test_samples_follow_expected_distribution(case):
    logits, kwargs = CASES[case]
    config, seen = split_case(kwargs)
    expected = expected_probs(logits, **kwargs)
    tokens = sample_tokens(logits, config, seen)
    assert tokens.dtype == np.int32
    counts = np.bincount(tokens, minlength=V)
    support = expected > 0
    assert np.all(counts[~support] == 0), f"sampled outside the kept set: {counts} vs {expected}"
    assert support.sum() >= 2, "a distribution test needs at least two kept tokens"
    want = N_DRAWS * expected[support]
    chi2 = np.sum((counts[support] - want) ** 2 / want)
    assert chi2 < CHI2_CRITICAL[support.sum() - 1], (counts, want)


@pytest.mark.parametrize("case", CASES)
def test_token_log_probs_match_reference(case):
    logits, kwargs = CASES[case]
    config, seen = split_case(kwargs)
    expected = expected_probs(logits, **kwargs)
    log_probs = np.asarray(token_log_probs(jnp.asarray(logits), config, seen))
    assert log_probs.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(log_probs), expected == 0)
    np.testing.assert_allclose(np.exp(log_probs), expected, rtol=1e-5, atol=1e-7)


def test_hf_order_is_distinguishable_from_other_orders():
    """The combined case only proves the order if other orders would give another distribution."""
    x = np.asarray(BASE)
    hf = expected_probs(x, temperature=2.0, top_k=4, top_p=0.7)
    top_p_before_temperature = np_softmax(np_top_p(np_top_k(x, 4), 0.7) / 2.0)
    top_p_before_top_k = np_softmax(np_top_k(np_top_p(x / 2.0, 0.7), 4))
    assert (hf > 0).sum() == 3
    assert (top_p_before_temperature > 0).sum() == 2
    assert (top_p_before_top_k > 0).sum() == 4


@pytest.mark.parametrize("greedy", [dict(temperature=0.0), dict(top_k=1, temperature=0.7)],
                         ids=["temperature_0", "top_k_1"])
def test_greedy_is_argmax_after_repetition_penalty(greedy):
    logits = np.array([1.0, 3.0, 2.0, -1.0, 0.5, 2.5])
    seen = np.array([False, True, False, False, False, True])  # 3 -> 1.0 and 2.5 -> ~0.83
    config = SamplingConfig.create(**greedy, repetition_penalty=3.0)
    assert config.greedy
    assert np.argmax(logits) == 1 and np.argmax(expected_probs(logits, **greedy, seen=seen,
                                                               repetition_penalty=3.0)) == 2
    tokens = sample_tokens(logits, config, seen, n=64)
    np.testing.assert_array_equal(tokens, np.full(64, 2))
    np.testing.assert_array_equal(np.exp(token_log_probs(logits, config, seen)), np.eye(V)[2])


def test_ties_follow_lax_top_k_lower_id_first():
    logits = jnp.array([1.0, 3.0, 3.0, 0.0, 3.0])
    kept = lambda x: np.flatnonzero(np.isfinite(np.asarray(x))).tolist()
    assert kept(apply_top_k(logits, 2)) == [1, 2]  # exactly k, although three tie
    assert kept(apply_top_p(jnp.zeros(4), 0.5)) == [0, 1]  # uniform: the lower ids form the nucleus
    assert int(sample_from_logits(jax.random.key(0), logits, SamplingConfig(temperature=0))) == 1


def test_leading_batch_dims_match_row_by_row():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, V)).astype(np.float32)
    seen = rng.random((2, 3, V)) < 0.5
    config = SamplingConfig.create(temperature=0.8, top_k=4, top_p=0.9, repetition_penalty=1.3)
    batched = np.asarray(process_logits(jnp.asarray(logits, jnp.bfloat16), config, seen))
    assert batched.dtype == np.float32
    rows = [process_logits(jnp.asarray(logits[i, j], jnp.bfloat16), config, seen[i, j])
            for i in range(2) for j in range(3)]
    np.testing.assert_array_equal(batched, np.stack(rows).reshape(2, 3, V))
    assert sample_from_logits(jax.random.key(0), logits, config, seen).shape == (2, 3)


def test_jit_compiles_once_per_config():
    traces = 0

    def counted(key, logits, config):
        nonlocal traces
        traces += 1
        return sample_from_logits(key, logits, config)

    sample = jax.jit(counted, static_argnames="config")
    logits = jnp.asarray(BASE, jnp.float32)
    config = SamplingConfig.create(temperature=0.9, top_p=0.8)
    sample(jax.random.key(0), logits, config=config)
    sample(jax.random.key(1), logits, config=config)
    # The same settings spelled differently canonicalise to an equal, equally hashed config.
    sample(jax.random.key(2), logits, config=SamplingConfig(np.float64(0.9), None, np.float64(0.8), 1))
    assert traces == 1
    sample(jax.random.key(3), logits, config=SamplingConfig.create(temperature=0.9, top_p=0.7))
    assert traces == 2


def test_repetition_penalty_in_a_compiled_decode_loop():
    """A greedy lax.scan that marks emitted tokens as seen walks down the ranking."""
    logits = jnp.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    config = SamplingConfig.create(temperature=0.0, repetition_penalty=100.0)

    @jax.jit
    def decode(key):
        def step(seen, key):
            token = sample_from_logits(key, logits, config, seen)
            return seen.at[token].set(True), token

        return jax.lax.scan(step, jnp.zeros(V, bool), jax.random.split(key, V))[1]

    np.testing.assert_array_equal(decode(jax.random.key(0)), np.arange(V))


# ---------------------------------------------------------------------------- validation

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(temperature=-0.5), ValueError, r"temperature must be .*>= 0.*-0\.5"),
    (dict(temperature=NAN), ValueError, r"temperature .*nan"),
    (dict(temperature=INF), ValueError, r"temperature .*inf"),
    (dict(temperature=True), TypeError, r"temperature .*True.*bool"),
    (dict(temperature="1.0"), TypeError, r"temperature .*'1\.0'"),
    (dict(top_k=-1), ValueError, r"top_k must be .*>= 1.*-1"),
    (dict(top_k=0), ValueError, r"top_k must be .*>= 1.*0"),
    (dict(top_k=2.0), TypeError, r"top_k .*2\.0.*float"),
    (dict(top_k=True), TypeError, r"top_k .*True.*bool"),
    (dict(top_k=7, vocab_size=6), ValueError, r"top_k .*vocab_size=6.*7"),
    (dict(top_p=0.0), ValueError, r"top_p .*\(0, 1\].*0\.0"),
    (dict(top_p=1.5), ValueError, r"top_p .*\(0, 1\].*1\.5"),
    (dict(top_p=NAN), ValueError, r"top_p .*nan"),
    (dict(top_p=np.bool_(True)), TypeError, r"top_p .*bool"),
    (dict(repetition_penalty=0.0), ValueError, r"repetition_penalty .*> 0.*0\.0"),
    (dict(repetition_penalty=-2.0), ValueError, r"repetition_penalty .*-2\.0"),
    (dict(repetition_penalty=INF), ValueError, r"repetition_penalty .*inf"),
    (dict(repetition_penalty=False), TypeError, r"repetition_penalty .*False"),
    (dict(vocab_size=0), ValueError, r"vocab_size .*>= 1.*0"),
    (dict(vocab_size=True), TypeError, r"vocab_size .*True"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamplingConfig.create(**kwargs)


def test_direct_construction_validates_and_canonicalises():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    config = SamplingConfig.create(temperature=1, top_k=None, top_p=1, vocab_size=6)
    assert config == SamplingConfig() and hash(config) == hash(SamplingConfig())
    assert type(SamplingConfig(top_k=np.int64(3)).top_k) is int
    assert SamplingConfig.create(top_k=6, vocab_size=6).top_k == 6
    assert not SamplingConfig().greedy
    assert SamplingConfig(temperature=0.0).greedy and SamplingConfig(top_k=1).greedy


# ---------------------------------------------------------------------------- properties


@st.composite
def logits_and_configs(draw):
    vocab = draw(st.integers(1, 12))
    finite = st.floats(-20, 20, allow_nan=False, width=32)
    logits = draw(hnp.arrays(np.float32, vocab, elements=st.one_of(finite, st.just(-np.inf))))
    logits[draw(st.integers(0, vocab - 1))] = draw(finite)  # at least one token is possible
    seen = draw(hnp.arrays(np.bool_, vocab))
    config = SamplingConfig.create(
        temperature=draw(st.one_of(st.just(0.0), st.floats(0.05, 5.0))),
        top_k=draw(st.one_of(st.none(), st.integers(1, vocab))),
        top_p=draw(st.one_of(st.none(), st.floats(0.01, 1.0))),
        repetition_penalty=draw(st.floats(0.5, 3.0)),
        vocab_size=vocab,
    )
    return logits, seen, config


@settings(max_examples=50, deadline=None)
@given(logits_and_configs())
def test_process_logits_invariants(case):
    logits, seen, config = case
    out = np.asarray(process_logits(logits, config, seen))
    assert not np.isnan(out).any()
    kept = np.isfinite(out)
    assert kept.sum() >= 1
    if config.greedy:
        assert kept.sum() == 1
    if config.top_k:
        assert kept.sum() <= config.top_k
    if config.top_p and not config.greedy:
        before_top_p = np.asarray(token_log_probs(logits, dataclasses.replace(config, top_p=None), seen))
        assert math.fsum(np.exp(before_top_p[kept])) >= config.top_p - 1e-5
    log_probs = np.asarray(token_log_probs(logits, config, seen))
    assert not np.isnan(log_probs).any()
    assert np.isclose(np.exp(log_probs).sum(), 1.0, atol=1e-5)
