"""TransformerAR generation: cache == no cache, exact samplers, beam search, speculative, prefix tuning."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from artrainer import Trainer
from artrainer.data import DataLoader
from artrainer.models import PrefixTunedTransformer, TransformerAR
from artrainer.sampling.decode import decode
from artrainer.sampling.speculative import speculative_sampling
from tiny_lm import cyclic_sequences


def tiny(vocab=8, length=16, hidden=32, layers=2, heads=4, seed=0, **kwargs):
    return TransformerAR(vocab, length, hidden, layers, heads, rngs=nnx.Rngs(seed), **kwargs)


def numpy_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def total_variation(counts, probs):
    return 0.5 * np.abs(counts / counts.sum() - probs).sum()


@pytest.mark.parametrize("kwargs", [{}, {"position_encoding": "rotary"}, {"tie_embeddings": True}])
def test_incremental_cache_reproduces_the_full_forward(kwargs):
    model = tiny(**kwargs)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 8)
    full = model(tokens)["logits"]
    outputs, cache = model.forward_with_cache(tokens[:, :5], model.init_cache(2, 12), index=0)
    pieces = [outputs["logits"]]
    for t in range(5, 12):
        outputs, cache = model.forward_with_cache(tokens[:, t:t + 1], cache, index=t)
        pieces.append(outputs["logits"])
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kwargs", [{}, {"position_encoding": "rotary"}])
def test_cached_greedy_equals_full_recomputation(kwargs):
    model = tiny(**kwargs)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    cached = model.generate(max_length=16, temperature=0, prompt=prompt, rngs=nnx.Rngs(0))
    recomputed = model.generate(max_length=16, temperature=0, prompt=prompt, rngs=nnx.Rngs(0), use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)
    # and both equal greedy decoding written out by hand (a fixed-size buffer: one compile)
    logits_of = jax.jit(lambda t: model(t)["logits"])
    tokens = np.zeros((2, 16), np.int32)
    tokens[:, :3] = prompt
    for t in range(3, 16):
        tokens[:, t] = np.asarray(logits_of(jnp.asarray(tokens))[:, t - 1]).argmax(-1)
    np.testing.assert_array_equal(cached, tokens)


def test_top_k_one_and_beam_one_are_greedy():
    model = tiny()
    greedy = model.generate(1, 12, temperature=0, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(model.generate(1, 12, top_k=1, rngs=nnx.Rngs(5)), greedy)
    beams, _ = model.beam_search(beam_size=1, max_length=12)
    np.testing.assert_array_equal(beams, greedy)


def test_generate_compiles_once_per_shape():
    model = tiny()
    model.generate(4, 10, rngs=nnx.Rngs(0))
    size = decode._cache_size()
    model.generate(4, 10, rngs=nnx.Rngs(1))
    model.generate(4, 10, rngs=nnx.Rngs(2))
    assert decode._cache_size() == size


@pytest.mark.parametrize("settings", [
    {"temperature": 0.7}, {"temperature": 1.0, "top_k": 3}, {"temperature": 1.3, "top_p": 0.6},
    {"temperature": 0.9, "top_k": 5, "top_p": 0.8}, {"repetition_penalty": 2.0},
])
def test_first_token_frequencies_match_the_exact_distribution(settings):
    """10^4 first tokens against the filtered distribution computed here in numpy."""
    model = tiny(vocab=8, seed=3)
    prompt = np.array([2, 5, 5])
    logits = np.asarray(model(jnp.asarray(prompt)[None])["logits"][0, -1], np.float64) * 3.0
    # scale the model's logits through its head so the distribution is far from uniform
    model.head.kernel[...] = model.head.kernel[...] * 3.0
    logits = np.where(np.isin(np.arange(8), prompt) & (settings.get("repetition_penalty", 1.0) != 1.0),
                      np.where(logits > 0, logits / 2.0, logits * 2.0), logits)
    logits = logits / settings.get("temperature", 1.0)
    order = np.argsort(-logits, kind="stable")
    keep = np.ones(8, bool)
    if "top_k" in settings:
        keep[order[settings["top_k"]:]] = False
    probs = np.exp(numpy_log_softmax(np.where(keep, logits, -np.inf)))
    if "top_p" in settings:
        mass_before = np.cumsum(probs[order]) - probs[order]
        keep[order[mass_before >= settings["top_p"]]] = False
        probs = np.exp(numpy_log_softmax(np.where(keep, logits, -np.inf)))
    samples = model.generate(10_000, 4, prompt=prompt, rngs=nnx.Rngs(7), **settings)[:, 3]
    counts = np.bincount(np.asarray(samples), minlength=8)
    assert counts[~keep].sum() == 0
    assert total_variation(counts, probs) < 0.02


def test_eos_pads_the_rest_and_stops():
    model = tiny(vocab=8, pad_token_id=7)
    samples = np.asarray(model.generate(200, 16, rngs=nnx.Rngs(1), eos_token_id=3))
    for row in samples:
        hits = np.flatnonzero(row[1:] == 3)
        if hits.size:
            assert (row[hits[0] + 2:] == 7).all()
    assert (samples[:, 1:] == 3).any()


def exhaustive_best(model, prompt, steps, vocab):
    best, best_score = None, -np.inf
    for tail in itertools.product(range(vocab), repeat=steps):
        seq = np.array(list(prompt) + list(tail))
        log_probs = numpy_log_softmax(model(jnp.asarray(seq)[None])["logits"][0])
        score = sum(log_probs[len(prompt) - 1 + i, t] for i, t in enumerate(tail))
        if score > best_score:
            best, best_score = seq, score
    return best, best_score


def test_large_beam_finds_the_exhaustive_optimum():
    model = tiny(vocab=4, seed=11)
    model.head.kernel[...] = model.head.kernel[...] * 4.0  # peaked but not greedy-trivial
    best, best_score = exhaustive_best(model, [0], 3, 4)
    sequences, scores = model.beam_search(beam_size=16, max_length=4, length_penalty=0.0)
    np.testing.assert_array_equal(sequences[0], best)
    assert float(scores[0]) == pytest.approx(best_score, abs=1e-4)
    assert len({tuple(s) for s in np.asarray(sequences)}) == 16  # distinct beams
    assert np.all(np.diff(np.asarray(scores)) <= 1e-6)  # best first


def test_beam_search_keeps_eos_hypotheses_with_hf_length_penalty():
    model = tiny(vocab=5, seed=2, pad_token_id=4)
    sequences, scores = model.beam_search(beam_size=6, max_length=8, eos_token_id=1, length_penalty=1.0)
    sequences, scores = np.asarray(sequences), np.asarray(scores)
    for seq, score in zip(sequences, scores):
        log_probs = numpy_log_softmax(model(jnp.asarray(seq)[None])["logits"][0])
        eos_at = np.flatnonzero(seq[1:] == 1)
        end = eos_at[0] + 1 if eos_at.size else len(seq) - 1
        total = sum(log_probs[i, seq[i + 1]] for i in range(end))
        length = end - 1 if eos_at.size else end  # HF: EOS hypotheses do not count the EOS
        assert score == pytest.approx(total / max(length, 1), abs=1e-4)
        if eos_at.size:
            assert (seq[end + 1:] == 4).all()


def test_speculative_greedy_equals_target_greedy():
    target, draft = tiny(vocab=8, length=32, seed=0), tiny(vocab=8, length=32, hidden=16, layers=1, seed=1)
    sequences, rate = speculative_sampling(target, draft, 3, 24, k=3, temperature=0.0, prompt=[1, 2],
                                           rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(sequences, target.generate(3, 24, temperature=0.0, prompt=[1, 2],
                                                             rngs=nnx.Rngs(0)))
    assert 0.0 <= rate <= 1.0


def test_speculative_distribution_equals_the_target():
    """Three generated tokens over a vocabulary of 4: 64 sequences, enumerated exactly."""
    target = tiny(vocab=4, length=8, seed=5)
    target.head.kernel[...] = target.head.kernel[...] * 3.0
    draft = tiny(vocab=4, length=8, hidden=16, layers=1, seed=9)
    exact = {}
    for tail in itertools.product(range(4), repeat=3):
        seq = np.array([0, *tail])
        log_probs = numpy_log_softmax(target(jnp.asarray(seq)[None])["logits"][0])
        exact[tail] = np.exp(sum(log_probs[i, t] for i, t in enumerate(tail)))
    sequences, rate = speculative_sampling(target, draft, 20_000, 4, k=2, rngs=nnx.Rngs(3))
    index = {tail: i for i, tail in enumerate(exact)}
    counts = np.zeros(len(exact))
    for row in np.asarray(sequences)[:, 1:]:
        counts[index[tuple(row)]] += 1
    assert total_variation(counts, np.array(list(exact.values()))) < 0.03
    assert 0.0 < rate < 1.0  # the draft disagrees often: rejections were exercised


def test_trained_model_continues_a_prompt_without_off_by_one(tmp_path):
    model = tiny(vocab=10, length=16, hidden=32, layers=2, heads=2)
    model.learning_rate = 3e-3
    data = DataLoader({"sequences": cyclic_sequences(512, 16, 10)}, 32, seed=0)
    Trainer(max_steps=300, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path)).fit(model, data)
    out = model.sample_with_conditioning(jnp.array([[3, 4, 5]]), n_samples=2, max_length=12, temperature=0,
                                         rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(out, np.tile((np.arange(3, 15) % 10)[None], (2, 1)))


def test_prefix_tuning_trains_only_the_prefix(tmp_path):
    base = tiny(vocab=10, length=16)
    model = PrefixTunedTransformer.from_pretrained(base, prefix_length=4, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(model.embedding.embedding[...], base.embedding.embedding[...])
    frozen = jax.tree.map(np.array, nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.OfType(type(model.prefix_keys))))))
    prefix = np.array(model.prefix_keys[...])
    model.learning_rate = 1e-2
    data = DataLoader({"sequences": cyclic_sequences(256, 16, 10)}, 32, seed=0)
    trainer = Trainer(max_steps=60, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      log_every_n_steps=10)
    before = trainer.validate(model, data)["val/loss"]
    trainer.fit(model, data)
    after = trainer.validate(model, data)["val/loss"]
    jax.tree.map(np.testing.assert_array_equal, frozen,
                 nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.OfType(type(model.prefix_keys))))))
    assert not np.array_equal(model.prefix_keys[...], prefix)
    assert after < before - 0.2
    prompt = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(model.generate(max_length=10, temperature=0, prompt=prompt, rngs=nnx.Rngs(0)),
                                  model.generate(max_length=10, temperature=0, prompt=prompt, rngs=nnx.Rngs(0),
                                                 use_cache=False))


@pytest.mark.parametrize("call, match", [
    (lambda m: m.generate(2, 8, temperature=-1.0, rngs=nnx.Rngs(0)), "temperature"),
    (lambda m: m.generate(2, 8, top_k=99, rngs=nnx.Rngs(0)), "top_k"),
    (lambda m: m.generate(2, 8, top_p=1.5, rngs=nnx.Rngs(0)), "top_p"),
    (lambda m: m.generate(2, 8, top_p=0.0, rngs=nnx.Rngs(0)), "top_p"),
    (lambda m: m.generate(2, 8, prompt=[1.5, 2.0], rngs=nnx.Rngs(0)), "integer"),
    (lambda m: m.generate(2, 8, prompt=[1, 8], rngs=nnx.Rngs(0)), "outside the vocabulary"),
    (lambda m: m.generate(2, 17, rngs=nnx.Rngs(0)), r"max_length must be an int in \[2, 16\]; got 17 \(int\)"),
    (lambda m: m.generate(0, 8, rngs=nnx.Rngs(0)), r"n_samples must be an int >= 1; got 0 \(int\)"),
    (lambda m: m.generate(2, 8, eos_token_id=8, rngs=nnx.Rngs(0)),
     r"eos_token_id must be a token id in \[0, 8\) or None; got 8"),
    (lambda m: m.beam_search(0, 8), r"beam_size must be an int >= 1; got 0 \(int\)"),
    (lambda m: m.sample_with_conditioning(np.zeros((2, 3), np.int32), n_samples=3, max_length=8,
                                          rngs=nnx.Rngs(0)), "n_samples=3"),
])
def test_bad_generation_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(tiny())
