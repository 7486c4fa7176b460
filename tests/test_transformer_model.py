import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from artrainer import Trainer  # noqa: E402
from artrainer.models import TransformerAR  # noqa: E402
from artrainer.models.transformer import apply_rope  # noqa: E402
from tests.tiny_lm import cyclic_sequences  # noqa: E402

VOCAB, LENGTH = 16, 8
ENCODINGS = ["learned", "rotary"]


def make(seed=0, **overrides):
    config = dict(vocab_size=VOCAB, sequence_length=LENGTH, hidden_dim=16, num_layers=2, num_heads=2)
    config.update(overrides)
    return TransformerAR(**config, rngs=nnx.Rngs(seed))


def tokens(batch=3, length=LENGTH, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)), jnp.int32)


def reference_metrics(logits, sequences, weights):
    """Float64 numpy next-token cross-entropy, independent of artrainer.metrics."""
    logits = np.asarray(logits, np.float64)[:, :-1]
    targets = np.asarray(sequences)[:, 1:]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == targets
    total = weights.sum()
    return {"loss": (nll * weights).sum() / total, "accuracy": (correct * weights).sum() / total,
            "weight": total}


# --------------------------------------------------------------------------- forward pass
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("tie", [False, True])
def test_logits_shape_for_full_and_short_inputs(encoding, tie):
    model = make(position_encoding=encoding, tie_embeddings=tie)
    assert model(tokens())["logits"].shape == (3, LENGTH, VOCAB)
    assert model(tokens(length=3))["logits"].shape == (3, 3, VOCAB)


def test_defaults_and_hparams_are_json():
    model = make()
    assert model.input_key == "sequences"
    assert model.feedforward_dim == 4 * 16
    assert json.loads(json.dumps(model.hparams)) == {
        "vocab_size": VOCAB, "sequence_length": LENGTH, "hidden_dim": 16, "num_layers": 2,
        "num_heads": 2, "feedforward_dim": 64, "dropout_rate": 0.0, "position_encoding": "learned",
        "tie_embeddings": False, "pad_token_id": None, "bos_token_id": None, "remat": False}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_future_tokens_cannot_change_past_logits(encoding):
    model = make(position_encoding=encoding)
    x = tokens()
    logits = model(x)["logits"]
    for t in range(LENGTH - 1):
        changed = x.at[:, t + 1:].set((x[:, t + 1:] + 1 + t) % VOCAB)
        other = model(changed)["logits"]
        np.testing.assert_array_equal(other[:, :t + 1], logits[:, :t + 1])
        assert not np.array_equal(other[:, t + 1:], logits[:, t + 1:])


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_jacobian_wrt_input_embeddings_is_causal(encoding):
    """With tokens 0..T-1, row r of each embedding table is an input at position r only,
    so d logits[t] / d row r is the Jacobian w.r.t. the input embedding at position r."""
    model = make(position_encoding=encoding)
    x = jnp.arange(LENGTH)[None]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tables = ["embedding"] + (["position_embedding"] if encoding == "learned" else [])

    def per_position(rows):
        m = nnx.merge(graphdef, params, rest)
        for name in tables:
            getattr(m, name).embedding = nnx.Param(rows[name])
        return m(x)["logits"][0].sum(-1)

    jac = jax.jacrev(per_position)({name: getattr(model, name).embedding[...] for name in tables})
    for name, table_jac in jac.items():
        row_norms = np.linalg.norm(np.asarray(table_jac), axis=-1)  # [T, rows]
        for t in range(LENGTH):
            assert np.all(row_norms[t, t + 1:] == 0.0), f"{name}: logits at {t} depend on a later input"
            assert np.all(row_norms[t, :t + 1] > 0.0), f"{name}: logits at {t} ignore an earlier input"


def test_rope_scores_depend_only_on_relative_position():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 5, 1, 8))
    pos = jnp.arange(5)

    def scores(offset):
        return jnp.einsum("bqhd,bkhd->bqk", apply_rope(q, pos + offset), apply_rope(k, pos + offset))

    np.testing.assert_allclose(scores(37), scores(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(apply_rope(q, jnp.zeros(5, jnp.int32)), q)
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(q, pos), axis=-1), jnp.linalg.norm(q, axis=-1),
                               rtol=1e-5)
    assert not np.allclose(apply_rope(q, pos), q)
    assert not hasattr(make(position_encoding="rotary"), "position_embedding")


def test_tied_embeddings_share_the_table():
    tied, untied = make(tie_embeddings=True), make()
    assert not hasattr(tied, "head") and hasattr(untied, "head")
    def n_params(model):
        return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))

    assert n_params(untied) - n_params(tied) == VOCAB * 16

    final_hidden = []

    class Tap(nnx.Module):
        def __init__(self, norm):
            self.norm = norm

        def __call__(self, h):
            final_hidden.append(self.norm(h))
            return final_hidden[-1]

    tied.final_norm = Tap(tied.final_norm)
    logits = tied(tokens())["logits"]
    table = tied.embedding.embedding[...]
    np.testing.assert_allclose(logits, final_hidden[0] @ table.T, rtol=1e-5, atol=1e-6)


def test_jit_matches_eager():
    model, x = make(position_encoding="rotary"), tokens()
    jitted = nnx.jit(lambda m, x: m(x)["logits"])(model, x)
    np.testing.assert_allclose(jitted, model(x)["logits"], rtol=1e-5, atol=1e-5)


def test_bf16_params_compute_in_bf16_with_an_fp32_loss():
    """What the Trainer does under precision='bf16': the same module, params cast to bf16."""
    model, x = make(position_encoding="rotary"), tokens()
    eager = model(x)["logits"]
    bf16 = nnx.clone(model)
    nnx.update(bf16, jax.tree.map(lambda p: p.astype(jnp.bfloat16), nnx.state(bf16, nnx.Param)))
    logits = bf16(x)["logits"]
    assert logits.dtype == jnp.bfloat16
    full = model.loss_fn({"sequences": x}, {"logits": eager})["loss"]
    half = bf16.loss_fn({"sequences": x}, {"logits": logits})["loss"]
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(half, full, rtol=2e-2)


# ---------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("x, match", [
    (jnp.zeros((2, LENGTH + 1), jnp.int32), "exceeds the model's sequence_length=8"),
    (jnp.zeros((LENGTH,), jnp.int32), r"shape \[batch, length\]"),
    (jnp.zeros((2, 3, 4), jnp.int32), r"shape \[batch, length\]"),
    (jnp.zeros((2, LENGTH), jnp.float32), "integer token ids"),
    (jnp.zeros((2, LENGTH), bool), "integer token ids"),
])
def test_bad_inputs_raise_eagerly_and_under_jit(x, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        model(x)
    with pytest.raises(ValueError, match=match):
        nnx.jit(lambda m, x: m(x))(model, x)


@pytest.mark.parametrize("value", [VOCAB, -3])
def test_out_of_vocabulary_ids_are_refused(value):
    """Eagerly (a traced batch cannot be read; the data loaders check ids on the host)."""
    with pytest.raises(ValueError, match=f"token ids in \\[0, {VOCAB}\\); got {value}"):
        make()(jnp.full((2, LENGTH), value))


# ---------------------------------------------------------------------------------- loss
def test_loss_matches_numpy_cross_entropy_over_shifted_targets():
    model, x = make(), tokens()
    logits = model(x)["logits"]
    metrics = model.loss_fn({"sequences": x}, {"logits": logits})
    assert set(metrics) == {"loss", "nll_loss", "perplexity", "accuracy", "weight"}
    want = reference_metrics(logits, x, np.ones((3, LENGTH - 1)))
    np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["perplexity"], np.exp(want["loss"]), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], want["accuracy"], rtol=1e-6)
    assert float(metrics["weight"]) == 3 * (LENGTH - 1)


def test_mask_excludes_targets_whatever_their_value():
    model, x = make(), tokens()
    mask = np.ones((3, LENGTH), np.int32)
    mask[0, 5:] = 0
    mask[2, 2:] = 0

    def loss_of(seqs):
        metrics = model.loss_fn({"sequences": seqs, "mask": mask}, model(seqs))
        return metrics, model(seqs)["logits"]

    metrics, logits = loss_of(x)
    want = reference_metrics(logits, x, mask[:, 1:].astype(np.float64))
    np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-5)
    assert float(metrics["weight"]) == want["weight"] == 4 + 7 + 1

    scrambled = jnp.where(mask == 0, (x + 7) % VOCAB, x)
    assert not np.array_equal(scrambled, x)
    again, _ = loss_of(scrambled)
    np.testing.assert_array_equal(again["loss"], metrics["loss"])
    np.testing.assert_array_equal(again["accuracy"], metrics["accuracy"])


def test_pad_token_targets_do_not_count_and_match_an_explicit_mask():
    pad = 0
    model = make(pad_token_id=pad)
    x = np.array((tokens() % (VOCAB - 1)) + 1)  # no pad token among the real ones
    x[0, 6:] = pad
    x[1, 3:] = pad
    x = jnp.asarray(x)
    logits = model(x)["logits"]
    by_pad = model.loss_fn({"sequences": x}, {"logits": logits})
    real = np.asarray(x != pad)
    want = reference_metrics(logits, x, real[:, 1:].astype(np.float64))
    np.testing.assert_allclose(by_pad["loss"], want["loss"], rtol=1e-5)
    assert float(by_pad["weight"]) == 5 + 2 + 7

    by_mask = make().loss_fn({"sequences": x, "mask": real.astype(np.int32)}, {"logits": logits})
    for key in by_mask:
        np.testing.assert_allclose(by_pad[key], by_mask[key], rtol=1e-6)
    both = model.loss_fn({"sequences": x, "mask": real.astype(np.int32)}, {"logits": logits})
    np.testing.assert_allclose(both["loss"], by_pad["loss"], rtol=1e-6)


def test_example_mask_drops_padding_rows():
    model, x = make(), tokens()
    logits = model(x)["logits"]
    padded = model.loss_fn({"sequences": x, "example_mask": np.array([1.0, 0.0, 1.0])}, {"logits": logits})
    kept = model.loss_fn({"sequences": x[::2]}, {"logits": logits[::2]})
    for key in kept:
        np.testing.assert_allclose(padded[key], kept[key], rtol=1e-6)


# ------------------------------------------------------------------------------- dropout
def test_dropout_only_in_training_and_driven_by_call_rngs():
    model, x = make(dropout_rate=0.3), tokens()
    eval_a = model(x)["logits"]
    np.testing.assert_array_equal(model(x, rngs=nnx.Rngs(dropout=5), training=False)["logits"], eval_a)
    train_a = model(x, rngs=nnx.Rngs(dropout=1), training=True)["logits"]
    train_b = model(x, rngs=nnx.Rngs(dropout=1), training=True)["logits"]
    train_c = model(x, rngs=nnx.Rngs(dropout=2), training=True)["logits"]
    assert not np.allclose(train_a, eval_a)
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, train_c)
    # The Trainer passes nnx.Rngs(key): the default stream must drive dropout too.
    assert not np.allclose(model(x, rngs=nnx.Rngs(3), training=True)["logits"], eval_a)


# ------------------------------------------------------------------------ bad constructors
@pytest.mark.parametrize("overrides, error, name", [
    ({"vocab_size": 0}, ValueError, "vocab_size"),
    ({"sequence_length": 2.0}, TypeError, "sequence_length"),
    ({"hidden_dim": -4}, ValueError, "hidden_dim"),
    ({"num_layers": True}, TypeError, "num_layers"),
    ({"num_heads": 0}, ValueError, "num_heads"),
    ({"num_heads": 3}, ValueError, "divisible by num_heads=3"),
    ({"feedforward_dim": 0}, ValueError, "feedforward_dim"),
    ({"dropout_rate": 1.0}, ValueError, "dropout_rate"),
    ({"dropout_rate": "0.1"}, TypeError, "dropout_rate"),
    ({"position_encoding": "sinusoidal"}, ValueError,
     "position_encoding must be one of 'learned', 'rotary'; got 'sinusoidal'"),
    ({"position_encoding": "rotary", "num_heads": 16}, ValueError, "head size .* must be an even int"),
    ({"tie_embeddings": 1}, TypeError, "tie_embeddings"),
    ({"pad_token_id": VOCAB}, ValueError, r"pad_token_id must be a token id in \[0, 16\) or None; got 16 \(int\)"),
    ({"bos_token_id": -1}, ValueError, "bos_token_id must be .*; got -1"),
    ({"bos_token_id": 1.0}, TypeError, "bos_token_id"),
])
def test_bad_arguments_name_the_argument(overrides, error, name):
    with pytest.raises(error, match=name):
        make(**overrides)


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("encoding, precision", [("learned", "fp32"), ("rotary", "bf16")])
def test_trainer_learns_a_cyclic_sequence(encoding, precision, tmp_path):
    data = cyclic_sequences(256, LENGTH, VOCAB)
    batches = [{"sequences": data[i:i + 32]} for i in range(0, len(data), 32)]
    model = make(position_encoding=encoding, hidden_dim=32, num_heads=4)
    model.learning_rate = 3e-3
    trainer = Trainer(max_steps=150, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      precision=precision)
    trainer.fit(model, batches)
    metrics = trainer.validate(model, batches[:2])
    assert metrics["val/accuracy"] > 0.95, metrics
