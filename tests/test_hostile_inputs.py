"""Hostile input at every public entry point: a clear ValueError / TypeError naming the
argument, never a crash deep inside XLA and never silent garbage.

Three layers:

* hypothesis fuzzing of ``SamplingConfig.create``, of every sampler of the three models
  (``generate``, ``sample_with_conditioning``, ``beam_search``, ``generate_conditional``,
  ``inpaint``, ``speculative_sampling``) and of ``DataLoader``;
* tables of hostile inputs per entry point: the ``Trainer`` and ``fit`` / ``validate``,
  each model's ``__call__``, the logits processors, the audio / image / text readers and
  loaders (unreadable files included) and the three recipes' flags;
* the samplers' compiled loops are replaced by a tripwire (:func:`compiled_loops_tripped`),
  so an argument that gets past the host-side checks shows up as "reached the compiled
  loop" instead of compiling or running anything. One test also runs refusals against the
  real jitted loops and checks that their caches did not grow.

Every case is expected to be refused (or handled) correctly; the 77 this file first found
mishandled were fixed. ``HOSTILE_INPUT_COUNTS`` at the end counts the tables
per entry point, ``FUZZ_EXAMPLES`` the examples per fuzz test.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import runpy
import struct
from argparse import ArgumentError
from types import SimpleNamespace
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from artrainer import Trainer
from stop_training import TraceThenStop
from artrainer.callbacks import (EarlyStopping, GradientClipping, LearningRateMonitor, LRWarmup, ModelCheckpoint,
                                 SampleGenerator, TerminateOnNaN)
from artrainer.data import DataLoader
from artrainer.data import audio as audio_data
from artrainer.data import images as image_data
from artrainer.data import text as text_data
from artrainer.metrics import distinct_n, repetition_rate
from artrainer.models import PixelCNN, TransformerAR, WaveNet
from artrainer.models import pixelcnn as pixelcnn_module
from artrainer.models import transformer as transformer_module
from artrainer.models import wavenet as wavenet_module
from artrainer.sampling import (SamplingConfig, apply_repetition_penalty, apply_temperature, apply_top_k,
                                apply_top_p, token_log_probs)
from artrainer.sampling import beam_search as beam_search_module
from artrainer.sampling import decode as decode_module
from artrainer.sampling import speculative as speculative_module
from artrainer.sampling import speculative_sampling

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPES = {name: os.path.join(ROOT, "recipes", f"train_{name}.py") for name in ("transformer", "pixelcnn", "wavenet")}

VOCAB, SEQ = 11, 8          # the tiny TransformerAR
IMAGE_SHAPE = (3, 3, 1)     # the tiny PixelCNN
CODES = 16                  # the tiny WaveNet's mu-law channels
CLASSES = 3                 # the conditional models' classes
KEY = jax.random.key(0)
LEGACY_KEY = jax.random.PRNGKey(1)


def fuzz(max_examples: int):
    """Deterministic hypothesis settings: the same examples on every run, no database."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


#: hypothesis examples per fuzz test (reported in the summary).
FUZZ_EXAMPLES = {
    "SamplingConfig.create": 1000,
    "TransformerAR.generate": 500,
    "TransformerAR.sample_with_conditioning": 200,
    "TransformerAR.beam_search": 300,
    "speculative_sampling": 300,
    "PixelCNN.generate": 300,
    "PixelCNN.generate (conditional)": 200,
    "PixelCNN.generate_conditional": 200,
    "PixelCNN.inpaint": 300,
    "WaveNet.generate": 400,
    "WaveNet.generate (conditional)": 200,
    "sampling processors on valid configs": 80,
    "DataLoader valid configurations": 100,
    "DataLoader hostile arguments": 500,
}


# --------------------------------------------------------------------------- the tripwire
class ReachedCompiledLoop(Exception):
    """A sampler got past its host-side checks and called its compiled loop."""


COMPILED_LOOPS = ((transformer_module, "decode"), (transformer_module, "beam_search"),
                  (pixelcnn_module, "sample_pixels"), (wavenet_module, "sample_waveform"),
                  (speculative_module, "_speculative_decode"))
JITTED = (decode_module.decode, beam_search_module.beam_search, pixelcnn_module.sample_pixels,
          wavenet_module.sample_waveform, speculative_module._speculative_decode)


def _tripwire(*args, **kwargs):
    raise ReachedCompiledLoop()


@contextlib.contextmanager
def compiled_loops_tripped():
    with contextlib.ExitStack() as stack:
        for module, name in COMPILED_LOOPS:
            stack.enter_context(mock.patch.object(module, name, _tripwire))
        yield


def outcome(call):
    """None when ``call`` reached a compiled loop (its arguments were accepted), else the
    ValueError / TypeError it raised; any other exception propagates and fails the test."""
    with compiled_loops_tripped():
        try:
            call()
        except ReachedCompiledLoop:
            return None
        except (ValueError, TypeError) as error:
            return error
    raise AssertionError("the sampler returned without reaching its compiled loop")


def check(call, name: str, valid: bool, names: str | None = None) -> None:
    """Valid arguments reach the compiled loop; hostile ones are refused on the host with an
    error naming the argument (``names``: a regex, default the argument's name)."""
    event(f"{name}: {'valid' if valid else 'hostile'}")
    error = outcome(call)
    if valid:
        assert error is None, f"a valid {name} was refused: {type(error).__name__}: {error}"
    else:
        assert error is not None, f"a hostile {name} was accepted and reached the compiled loop"
        assert re.search(names or re.escape(name), str(error)), f"the error does not name {name}: {error}"


# --------------------------------------------------------------------------- oracles
def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def finite_real(value) -> bool:
    return is_real(value) and math.isfinite(value)


def count_ok(value, low: int = 1, high: int | None = None) -> bool:
    return is_int(value) and low <= value and (high is None or value <= high)


def temperature_ok(value) -> bool:
    return finite_real(value) and value >= 0


def top_k_ok(value, vocab) -> bool:
    return value is None or (is_int(value) and 1 <= value and (vocab is None or value <= vocab))


def top_p_ok(value) -> bool:
    return value is None or (finite_real(value) and 0 < value <= 1)


def penalty_ok(value) -> bool:
    return finite_real(value) and value > 0


def token_ok(value, vocab: int) -> bool:
    return value is None or (is_int(value) and 0 <= value < vocab)


def prompt_ok(prompt, *, n_samples, max_length: int, vocab: int) -> bool:
    """The README's contract: int ids [P] or [n, P], 1 <= P < max_length, ids in the vocabulary."""
    array = np.asarray(prompt)
    if array.dtype.kind not in "iu":
        return False
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[0] == 0:
        return False
    if array.min() < 0 or array.max() >= vocab or array.shape[1] >= max_length:
        return False
    return n_samples is None or array.shape[0] in (1, n_samples)


def labels_ok(class_label, n_samples: int, num_classes: int | None) -> bool:
    if class_label is None:
        return True
    if num_classes is None:
        return False
    labels = np.asarray(class_label)
    labels = np.full(n_samples, labels) if labels.ndim == 0 else labels
    return (labels.dtype.kind in "iu" and labels.shape == (n_samples,)
            and int(labels.min()) >= 0 and int(labels.max()) < num_classes)


# --------------------------------------------------------------------------- strategies
JUNK = st.sampled_from([None, True, False, np.bool_(False), "1", "", b"\x01", [1], (0.5,), {"k": 1},
                        1 + 2j, np.array(0.5), np.array([1, 2]), Ellipsis])
INTS = st.one_of(st.integers(-4, 20), st.integers(-(2**70), 2**70), st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
                 st.builds(np.int8, st.integers(-128, 127)), st.builds(np.uint32, st.integers(0, 2**32 - 1)))
FLOATS = st.one_of(st.floats(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                   st.builds(np.float64, st.floats()), st.builds(np.float32, st.floats(width=32)))
SCALARS = st.one_of(INTS, FLOATS, JUNK)
OPTIONAL_SCALARS = st.one_of(st.none(), SCALARS)
#: counts that are small when valid: a valid n_samples of 2**60 would allocate for real.
COUNTS = st.one_of(st.integers(1, 3), st.integers(-(2**70), 0), st.builds(np.int64, st.integers(-(2**63), 0)),
                   FLOATS, JUNK)
ARRAY_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
                "float64", "bool", "complex64", "object", "<U3"]
JAX_DTYPES = {"int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "float32", "bool"}


@st.composite
def id_arrays(draw, high: int, max_rank: int = 3, max_dim: int = 4):
    """Arrays of any rank, shape, dtype and values around [0, high), as numpy, list or jax."""
    shape = tuple(draw(st.lists(st.integers(0, max_dim), max_size=max_rank)))
    size = math.prod(shape)
    values = draw(st.lists(st.one_of(st.integers(-3, high + 3), st.integers(0, high - 1)),
                           min_size=size, max_size=size))
    dtype = draw(st.sampled_from(ARRAY_DTYPES))
    array = np.asarray(values, np.int64).reshape(shape).astype(dtype)
    form = draw(st.sampled_from(["numpy", "numpy", "list", "jax"]))
    if form == "list":
        return array.tolist()
    if form == "jax" and dtype in JAX_DTYPES:
        return jnp.asarray(array)
    return array


RNGS = st.sampled_from([
    ("valid", lambda: nnx.Rngs(0)), ("valid", lambda: nnx.Rngs(sample=3)), ("valid", lambda: KEY),
    ("valid", lambda: LEGACY_KEY), ("hostile", lambda: None), ("hostile", lambda: 0), ("hostile", lambda: "seed"),
    ("hostile", lambda: [0, 1]), ("hostile", lambda: np.array([0, 1], np.uint32)),
    ("hostile", lambda: jnp.zeros((3,), jnp.uint32)), ("hostile", lambda: jnp.zeros((2, 2), jnp.uint32))])


def one_hostile_argument(arguments: dict):
    """(name, value) with the name drawn from ``arguments`` and the value from its strategy."""
    return st.sampled_from(sorted(arguments)).flatmap(lambda name: st.tuples(st.just(name), arguments[name]))


# --------------------------------------------------------------------------- tiny models, built once
@pytest.fixture(scope="module")
def models():
    return SimpleNamespace(
        lm=TransformerAR(VOCAB, SEQ, 16, 1, 2, rngs=nnx.Rngs(0)),
        draft=TransformerAR(VOCAB, SEQ, 16, 1, 2, rngs=nnx.Rngs(1)),   # same sizes: no new init compiles
        other_vocab=TransformerAR(VOCAB + 1, SEQ, 16, 1, 2, rngs=nnx.Rngs(2)),
        pixelcnn=PixelCNN(IMAGE_SHAPE, 1, 4, 0, kernel_size=3, rngs=nnx.Rngs(0)),
        pixelcnn_cond=PixelCNN(IMAGE_SHAPE, 1, 4, 0, kernel_size=3, num_classes=CLASSES, rngs=nnx.Rngs(0)),
        wavenet=WaveNet(2, 1, 4, 4, 4, CODES, rngs=nnx.Rngs(0)),
        wavenet_cond=WaveNet(2, 1, 4, 4, 4, CODES, num_classes=CLASSES, rngs=nnx.Rngs(0)),
    )


# =========================================================================== 1. SamplingConfig.create
def _valid_or(valid, hostile=SCALARS):
    return st.one_of(valid, hostile)


@fuzz(FUZZ_EXAMPLES["SamplingConfig.create"])
@given(temperature=_valid_or(st.one_of(st.just(0.0), st.floats(0, 1e6), st.integers(0, 5))),
       top_k=_valid_or(st.one_of(st.none(), st.integers(1, 300))),
       top_p=_valid_or(st.one_of(st.none(), st.floats(1e-6, 1.0), st.just(1))),
       repetition_penalty=_valid_or(st.floats(1e-6, 1e6)),
       vocab_size=_valid_or(st.one_of(st.none(), st.integers(1, 300))))
def test_sampling_config_create_accepts_exactly_the_documented_values(temperature, top_k, top_p,
                                                                      repetition_penalty, vocab_size):
    vocab_ok = vocab_size is None or count_ok(vocab_size)
    invalid = [name for name, ok in (
        ("temperature", temperature_ok(temperature)),
        ("top_k", top_k_ok(top_k, vocab_size if vocab_ok else None)),
        ("top_p", top_p_ok(top_p)),
        ("repetition_penalty", penalty_ok(repetition_penalty)),
        ("vocab_size", vocab_ok)) if not ok]
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                  vocab_size=vocab_size)
    event("hostile" if invalid else "valid")
    try:
        config = SamplingConfig.create(**kwargs)
    except (ValueError, TypeError) as error:
        assert invalid, f"valid settings refused: {error}"
        assert any(name in str(error) for name in invalid), f"{error} names none of {invalid}"
        return
    assert not invalid, f"hostile {invalid} accepted: {config}"
    assert type(config.temperature) is float and math.isfinite(config.temperature) and config.temperature >= 0
    assert config.top_k is None or (type(config.top_k) is int and 1 <= config.top_k
                                    and (vocab_size is None or config.top_k <= vocab_size))
    assert config.top_p is None or (type(config.top_p) is float and 0 < config.top_p < 1)
    assert type(config.repetition_penalty) is float and math.isfinite(config.repetition_penalty)
    assert config.repetition_penalty > 0
    assert config == SamplingConfig.create(**kwargs) and hash(config) == hash(SamplingConfig.create(**kwargs))


#: SamplingConfig / processors: hostile values that are not ValueError / TypeError today,
#: or whose message is wrong (id, call, expected exception, match).
SAMPLING_CONFIG_CASES = [
    pytest.param(lambda: SamplingConfig.create(temperature=-0.5), ValueError, "temperature", id="temperature<0"),
    pytest.param(lambda: SamplingConfig.create(temperature="hot"), TypeError, "temperature", id="temperature-str"),
    pytest.param(lambda: SamplingConfig.create(top_k=2.0), TypeError, "top_k", id="top_k-float"),
    pytest.param(lambda: SamplingConfig.create(top_p=float("nan")), ValueError, "top_p", id="top_p-nan"),
    pytest.param(lambda: SamplingConfig.create(repetition_penalty=np.inf), ValueError, "repetition_penalty",
                 id="penalty-inf"),
    pytest.param(lambda: SamplingConfig.create(vocab_size=0), ValueError, "vocab_size", id="vocab_size-0"),
    pytest.param(lambda: SamplingConfig.create(temperature=10**400), ValueError, "temperature",
                 id="temperature-int-beyond-float"),
    pytest.param(lambda: SamplingConfig.create(top_p=-(10**400)), ValueError, "top_p",
                 id="top_p-int-beyond-float"),
    pytest.param(lambda: SamplingConfig.create(repetition_penalty=10**400), ValueError, "repetition_penalty",
                 id="penalty-int-beyond-float"),
    pytest.param(lambda: SamplingConfig.create(top_k=12, vocab_size=11), ValueError, r"top_k.*\[1, ",
                 id="top_k>vocab-message-range"),
]


@pytest.mark.parametrize("call,exc,match", SAMPLING_CONFIG_CASES)
def test_sampling_config_hostile_values(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# -- absurd but valid settings: a proper distribution, or a refusal up front --------------------------
LOGITS = np.array([1.0, 3.0, -np.inf, 2.0, 0.5, -1.0], np.float32)   # token 2 is masked
SEEN = np.array([True, True, False, False, True, True])


def assert_proper_distribution(config: SamplingConfig) -> None:
    log_probs = np.asarray(token_log_probs(jnp.asarray(LOGITS), config, jnp.asarray(SEEN)))
    probs = np.exp(log_probs)
    assert not np.isnan(log_probs).any(), f"{config}: NaN log-probabilities {log_probs}"
    assert probs[2] == 0, f"{config}: the masked token got probability {probs[2]}"
    assert abs(probs.sum() - 1) < 1e-4, f"{config}: probabilities sum to {probs.sum()}"
    if config.top_k is not None:
        assert (probs > 0).sum() <= config.top_k
    if config.greedy:
        assert (probs > 0).sum() == 1


@fuzz(FUZZ_EXAMPLES["sampling processors on valid configs"])
@given(temperature=st.one_of(st.just(0.0), st.floats(1e-12, 1e12)),
       top_k=st.one_of(st.none(), st.integers(1, 8)),
       top_p=st.one_of(st.none(), st.floats(1e-12, 1.0)),
       repetition_penalty=st.one_of(st.just(1.0), st.floats(1e-12, 1e12)))
def test_valid_sampling_configs_give_proper_distributions(temperature, top_k, top_p, repetition_penalty):
    """Within float32's comfortable range (see ABSURD_SAMPLING_CASES for beyond it)."""
    assert_proper_distribution(SamplingConfig.create(temperature=temperature, top_k=top_k, top_p=top_p,
                                                     repetition_penalty=repetition_penalty))


ABSURD_SAMPLING_CASES = [
    pytest.param({"temperature": 1e-6}, id="temperature-1e-6"),
    pytest.param({"temperature": 1e30}, id="temperature-1e30"),
    pytest.param({"top_p": 1e-30}, id="top_p-1e-30"),
    pytest.param({"temperature": 1e-300}, id="temperature-1e-300"),
    pytest.param({"temperature": 1e-40}, id="temperature-1e-40-subnormal"),
    pytest.param({"temperature": 1e300}, id="temperature-1e300"),
    pytest.param({"top_p": 1e-300}, id="top_p-1e-300"),
    pytest.param({"repetition_penalty": 1e-300}, id="penalty-1e-300"),
    pytest.param({"temperature": 1e-20, "repetition_penalty": 1e-20}, id="temperature*penalty-overflow"),
]


@pytest.mark.parametrize("settings_", ABSURD_SAMPLING_CASES)
def test_absurd_sampling_settings_are_refused_or_sampled_properly(settings_):
    try:
        config = SamplingConfig.create(**settings_)
    except ValueError as error:
        assert any(name in str(error) for name in settings_)
        return
    assert_proper_distribution(config)


#: the public logits processors, called directly with hostile parameters.
PROCESSOR_CASES = [
    pytest.param(lambda: apply_top_k(jnp.asarray(LOGITS), 0), ValueError, r"\bk\b", id="apply_top_k-0"),
    pytest.param(lambda: apply_top_k(jnp.asarray(LOGITS), -2), ValueError, r"\bk\b", id="apply_top_k-negative"),
    pytest.param(lambda: apply_top_k(jnp.asarray(LOGITS), 2.5), TypeError, r"\bk\b", id="apply_top_k-float"),
    pytest.param(lambda: apply_top_p(jnp.asarray(LOGITS), 0.0), ValueError, r"\bp\b", id="apply_top_p-0"),
    pytest.param(lambda: apply_top_p(jnp.asarray(LOGITS), 2.0), ValueError, r"\bp\b", id="apply_top_p-2"),
    pytest.param(lambda: apply_top_p(jnp.asarray(LOGITS), float("nan")), ValueError, r"\bp\b", id="apply_top_p-nan"),
    pytest.param(lambda: apply_temperature(jnp.asarray(LOGITS), -1.0), ValueError, "temperature",
                 id="apply_temperature-negative"),
    pytest.param(lambda: apply_temperature(jnp.asarray(LOGITS), 0.0), ValueError, "temperature",
                 id="apply_temperature-0"),
    pytest.param(lambda: apply_repetition_penalty(jnp.asarray(LOGITS), jnp.asarray(SEEN), 0.0), ValueError,
                 "penalty", id="apply_repetition_penalty-0"),
    pytest.param(lambda: apply_repetition_penalty(jnp.asarray(LOGITS), jnp.asarray(SEEN), -2.0), ValueError,
                 "penalty", id="apply_repetition_penalty-negative"),
]


@pytest.mark.parametrize("call,exc,match", PROCESSOR_CASES)
def test_logits_processors_refuse_hostile_parameters(call, exc, match):
    with pytest.raises(exc, match=match):
        np.asarray(call())


# =========================================================================== 2. the samplers, fuzzed
TRANSFORMER_GENERATE_ARGS = {
    "n_samples": COUNTS,
    "max_length": st.one_of(st.none(), INTS, FLOATS, JUNK),
    "temperature": SCALARS,
    "top_k": OPTIONAL_SCALARS,
    "top_p": OPTIONAL_SCALARS,
    "repetition_penalty": SCALARS,
    "prompt": st.one_of(id_arrays(VOCAB), JUNK),
    "eos_token_id": OPTIONAL_SCALARS,
    "rngs": RNGS,
}


def _transformer_valid(name, value, kwargs):
    n, max_length = kwargs["n_samples"], kwargs["max_length"]
    return {
        "n_samples": lambda: value is None or count_ok(value),
        "max_length": lambda: value is None or count_ok(value, 2, SEQ),
        "temperature": lambda: temperature_ok(value),
        "top_k": lambda: top_k_ok(value, VOCAB),
        "top_p": lambda: top_p_ok(value),
        "repetition_penalty": lambda: penalty_ok(value),
        "prompt": lambda: value is None or prompt_ok(value, n_samples=n, max_length=max_length, vocab=VOCAB),
        "eos_token_id": lambda: token_ok(value, VOCAB),
        "rngs": lambda: value[0] == "valid",
    }[name]()


@fuzz(FUZZ_EXAMPLES["TransformerAR.generate"])
@given(one_hostile_argument(TRANSFORMER_GENERATE_ARGS))
def test_transformer_generate_fuzz(models, argument):
    name, value = argument
    kwargs = dict(n_samples=2, max_length=6, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                  prompt=None, eos_token_id=None, rngs=KEY)
    valid = _transformer_valid(name, value, kwargs)
    kwargs[name] = value[1]() if name == "rngs" else value
    check(lambda: models.lm.generate(**kwargs), name, valid)


@fuzz(FUZZ_EXAMPLES["TransformerAR.sample_with_conditioning"])
@given(conditioning=st.one_of(id_arrays(VOCAB), JUNK.filter(lambda v: v is not None)),
       n_samples=st.one_of(st.none(), st.integers(1, 3)))
def test_transformer_sample_with_conditioning_fuzz(models, conditioning, n_samples):
    valid = prompt_ok(conditioning, n_samples=n_samples, max_length=SEQ, vocab=VOCAB)
    check(lambda: models.lm.sample_with_conditioning(conditioning, n_samples, rngs=KEY), "conditioning", valid,
          names="conditioning")


BEAM_ARGS = {
    "beam_size": COUNTS,
    "max_length": st.one_of(st.none(), INTS, FLOATS, JUNK),
    "prompt": st.one_of(id_arrays(VOCAB), JUNK),
    "length_penalty": SCALARS,
    "eos_token_id": OPTIONAL_SCALARS,
}


@fuzz(FUZZ_EXAMPLES["TransformerAR.beam_search"])
@given(one_hostile_argument(BEAM_ARGS))
def test_transformer_beam_search_fuzz(models, argument):
    name, value = argument
    kwargs = dict(beam_size=2, max_length=6, prompt=None, length_penalty=1.0, eos_token_id=None)
    kwargs[name] = value
    valid = {
        "beam_size": lambda: count_ok(value),
        "max_length": lambda: value is None or count_ok(value, 2, SEQ),
        "prompt": lambda: value is None or (prompt_ok(value, n_samples=None, max_length=6, vocab=VOCAB)
                                            and (np.ndim(value) == 1 or np.shape(value)[0] == 1)),
        "length_penalty": lambda: finite_real(value),
        "eos_token_id": lambda: token_ok(value, VOCAB),
    }[name]()
    check(lambda: models.lm.beam_search(**kwargs), name, valid)


SPECULATIVE_ARGS = {
    "n_samples": COUNTS,
    "max_length": st.one_of(INTS, FLOATS, JUNK),
    "k": st.one_of(st.integers(1, 6), INTS, FLOATS, JUNK),
    "prompt": st.one_of(id_arrays(VOCAB), JUNK),
    "temperature": SCALARS,
    "top_k": OPTIONAL_SCALARS,
    "top_p": OPTIONAL_SCALARS,
    "rngs": RNGS,
    "target": st.sampled_from(["lm", "pixelcnn", "wavenet", "other_vocab", None, "a model"]),
    "draft": st.sampled_from(["draft", "pixelcnn", "wavenet", "other_vocab", None, 3]),
}


@fuzz(FUZZ_EXAMPLES["speculative_sampling"])
@given(one_hostile_argument(SPECULATIVE_ARGS))
def test_speculative_sampling_fuzz(models, argument):
    name, value = argument
    kwargs = dict(target=models.lm, draft=models.draft, n_samples=2, max_length=6, k=3, prompt=None,
                  temperature=1.0, top_k=None, top_p=None, rngs=KEY)
    names = None
    if name in ("target", "draft"):
        valid = value in ("lm", "draft")
        names = "target|draft"
        value = getattr(models, value) if isinstance(value, str) and hasattr(models, value) else value
    else:
        valid = {
            "n_samples": lambda: count_ok(value),
            "max_length": lambda: count_ok(value, 2, SEQ),
            "k": lambda: count_ok(value, 1, 6),  # at most max_length
            "prompt": lambda: value is None or prompt_ok(value, n_samples=2, max_length=6, vocab=VOCAB),
            "temperature": lambda: temperature_ok(value),
            "top_k": lambda: top_k_ok(value, VOCAB),
            "top_p": lambda: top_p_ok(value),
            "rngs": lambda: value[0] == "valid",
        }[name]()
        value = value[1]() if name == "rngs" else value
    kwargs[name] = value
    target, draft = kwargs.pop("target"), kwargs.pop("draft")
    n_samples, max_length = kwargs.pop("n_samples"), kwargs.pop("max_length")
    check(lambda: speculative_sampling(target, draft, n_samples, max_length, **kwargs), name, valid, names)


PIXELCNN_GENERATE_ARGS = {
    "n_samples": COUNTS,
    "temperature": SCALARS,
    "top_k": OPTIONAL_SCALARS,
    "top_p": OPTIONAL_SCALARS,
    "class_label": st.one_of(id_arrays(CLASSES, max_rank=2), SCALARS),
    "rngs": RNGS,
}


def _sampler_valid(name, value, n_samples, vocab, num_classes):
    return {
        "n_samples": lambda: count_ok(value),
        "temperature": lambda: temperature_ok(value),
        "top_k": lambda: top_k_ok(value, vocab),
        "top_p": lambda: top_p_ok(value),
        "class_label": lambda: labels_ok(value, n_samples, num_classes),
        "rngs": lambda: value[0] == "valid",
    }[name]()


@fuzz(FUZZ_EXAMPLES["PixelCNN.generate"])
@given(one_hostile_argument(PIXELCNN_GENERATE_ARGS))
def test_pixelcnn_generate_fuzz(models, argument):
    name, value = argument
    kwargs = dict(n_samples=2, temperature=1.0, top_k=None, top_p=None, class_label=None, rngs=KEY)
    valid = _sampler_valid(name, value, 2, 256, None)
    kwargs[name] = value[1]() if name == "rngs" else value
    check(lambda: models.pixelcnn.generate(**kwargs), name, valid)


@fuzz(FUZZ_EXAMPLES["PixelCNN.generate (conditional)"])
@given(class_label=st.one_of(id_arrays(CLASSES, max_rank=2), SCALARS), n_samples=st.integers(1, 3))
def test_conditional_pixelcnn_generate_class_label_fuzz(models, class_label, n_samples):
    valid = labels_ok(class_label, n_samples, CLASSES)
    check(lambda: models.pixelcnn_cond.generate(n_samples, class_label=class_label, rngs=KEY), "class_label", valid)


@fuzz(FUZZ_EXAMPLES["PixelCNN.generate_conditional"])
@given(class_label=st.one_of(id_arrays(CLASSES, max_rank=2), SCALARS), n_samples=st.one_of(st.none(), COUNTS))
def test_pixelcnn_generate_conditional_fuzz(models, class_label, n_samples):
    n_ok = n_samples is None or count_ok(n_samples)
    n = max(np.size(class_label), 1) if n_samples is None else n_samples
    label_ok = class_label is not None and n_ok and labels_ok(class_label, n, CLASSES)
    expected = "|".join(name for name, bad in (("class_label", class_label is None or (n_ok and not label_ok)),
                                               ("n_samples", not n_ok)) if bad)
    error = outcome(lambda: models.pixelcnn_cond.generate_conditional(class_label, n_samples, rngs=KEY))
    if not expected:
        assert error is None, f"valid call refused: {error}"
    else:
        assert error is not None, "a hostile class_label / n_samples reached the compiled loop"
        assert re.search(expected, str(error)), str(error)
    error = outcome(lambda: models.pixelcnn.generate_conditional(class_label, n_samples, rngs=KEY))
    assert error is not None and "num_classes=None" in str(error)


@st.composite
def masks(draw):
    shape = draw(st.sampled_from([(3, 3, 1), (3, 3), (3,), (1, 3, 3, 1), (3, 3, 2), (), (3, 1, 3)]))
    values = draw(st.lists(st.sampled_from([0, 1, 0, 1, 2, -1, 0.5, float("nan")]),
                           min_size=math.prod(shape), max_size=math.prod(shape)))
    dtype = draw(st.sampled_from(["bool", "int8", "int64", "float32", "float64"]))
    with np.errstate(invalid="ignore"):
        return np.asarray(values, np.float64).reshape(shape).astype(dtype)


INPAINT_ARGS = {
    "conditioning": id_arrays(256, max_rank=5, max_dim=3),
    "mask": masks(),
    "n_samples": st.one_of(st.none(), COUNTS),
    "temperature": SCALARS,
}


def _conditioning_ok(value, n_samples) -> bool:
    images = np.asarray(value)
    if images.dtype.kind not in "iu":
        return False
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] == 0:
        return False
    if images.min() < 0 or images.max() > 255:
        return False
    return n_samples is None or images.shape[0] in (1, n_samples)


@fuzz(FUZZ_EXAMPLES["PixelCNN.inpaint"])
@given(one_hostile_argument(INPAINT_ARGS))
def test_pixelcnn_inpaint_fuzz(models, argument):
    name, value = argument
    kwargs = dict(conditioning=np.zeros(IMAGE_SHAPE, np.int32), mask=np.zeros(IMAGE_SHAPE[:2]), n_samples=2,
                  temperature=1.0)
    if name == "conditioning":
        kwargs["mask"] = np.zeros(np.shape(value))
    kwargs[name] = value
    valid = {
        "conditioning": lambda: _conditioning_ok(value, 2),
        "mask": lambda: np.shape(value) in (IMAGE_SHAPE, IMAGE_SHAPE[:2]) and np.isin(value, (0, 1)).all(),
        "n_samples": lambda: value is None or count_ok(value),
        "temperature": lambda: temperature_ok(value),
    }[name]()
    check(lambda: models.pixelcnn.inpaint(**kwargs, rngs=KEY), name, valid)


WAVENET_GENERATE_ARGS = {
    "n_samples": COUNTS,
    "max_length": st.one_of(st.integers(-3, 10), INTS, FLOATS, JUNK),
    "temperature": SCALARS,
    "top_k": OPTIONAL_SCALARS,
    "top_p": OPTIONAL_SCALARS,
    "prompt": st.one_of(id_arrays(CODES), JUNK),
    "class_label": st.one_of(id_arrays(CLASSES, max_rank=2), SCALARS),
    "method": st.sampled_from(["fast", "naive", "slow", "", None, "FAST", 1, ["fast"]]),
    "rngs": RNGS,
}


@fuzz(FUZZ_EXAMPLES["WaveNet.generate"])
@given(one_hostile_argument(WAVENET_GENERATE_ARGS))
def test_wavenet_generate_fuzz(models, argument):
    name, value = argument
    kwargs = dict(n_samples=2, max_length=6, temperature=1.0, top_k=None, top_p=None, prompt=None,
                  class_label=None, method="fast", rngs=KEY)
    if name == "max_length":
        valid = count_ok(value, 1, wavenet_module.MAX_GENERATE_LENGTH)
    elif name == "prompt":
        valid = value is None or prompt_ok(value, n_samples=2, max_length=6, vocab=CODES)
    elif name == "method":
        valid = value in ("fast", "naive")
    else:
        valid = _sampler_valid(name, value, 2, CODES, None)
    kwargs[name] = value[1]() if name == "rngs" else value
    check(lambda: models.wavenet.generate(**kwargs), name, valid)


@fuzz(FUZZ_EXAMPLES["WaveNet.generate (conditional)"])
@given(class_label=st.one_of(id_arrays(CLASSES, max_rank=2), SCALARS), n_samples=st.integers(1, 3))
def test_conditional_wavenet_generate_class_label_fuzz(models, class_label, n_samples):
    valid = labels_ok(class_label, n_samples, CLASSES)
    check(lambda: models.wavenet_cond.generate(n_samples, 4, class_label=class_label, rngs=KEY), "class_label",
          valid)


# -- the gaps the fuzzers leave out, and other sampler inputs, one by one -------------------------------
EMPTY_ROWS = np.zeros((0, 2), np.int32)

#: (call on the models namespace, expected exception, match). The first ones are refusals the
#: fuzzers also cover; they run here against the real jitted loops (see the cache test below).
SAMPLER_CASES = [
    pytest.param(lambda m: m.lm.generate(2, 6, -1.0, rngs=KEY), ValueError, "temperature", id="lm-temperature"),
    pytest.param(lambda m: m.lm.generate(2, SEQ + 1, rngs=KEY), ValueError, "max_length", id="lm-max_length>seq"),
    pytest.param(lambda m: m.lm.generate(0, 6, rngs=KEY), ValueError, "n_samples", id="lm-n_samples-0"),
    pytest.param(lambda m: m.lm.generate(2, 6, prompt=[1.5], rngs=KEY), ValueError, "prompt", id="lm-float-prompt"),
    pytest.param(lambda m: m.lm.generate(2, 6, prompt=[VOCAB], rngs=KEY), ValueError, "prompt", id="lm-prompt-oov"),
    pytest.param(lambda m: m.lm.generate(2, 6, eos_token_id=VOCAB, rngs=KEY), ValueError, "eos_token_id",
                 id="lm-eos-oov"),
    pytest.param(lambda m: m.lm.beam_search(0, 6), ValueError, "beam_size", id="beam-0"),
    pytest.param(lambda m: m.lm.beam_search(2, 6, length_penalty=float("nan")), ValueError, "length_penalty",
                 id="beam-length_penalty-nan"),
    pytest.param(lambda m: m.lm.beam_search(2, 6, prompt=[[1], [2]]), ValueError, "prompt", id="beam-two-prompts"),
    pytest.param(lambda m: speculative_sampling(m.lm, m.draft, 2, 6, k=0, rngs=KEY), ValueError, r"\bk\b",
                 id="speculative-k-0"),
    pytest.param(lambda m: speculative_sampling(m.lm, m.other_vocab, 2, 6, rngs=KEY), ValueError, "draft",
                 id="speculative-vocab-mismatch"),
    pytest.param(lambda m: m.pixelcnn.generate(2, top_p=0.0, rngs=KEY), ValueError, "top_p", id="pixelcnn-top_p-0"),
    pytest.param(lambda m: m.pixelcnn_cond.generate(2, class_label=CLASSES, rngs=KEY), ValueError, "class_label",
                 id="pixelcnn-class_label-oov"),
    pytest.param(lambda m: m.pixelcnn.inpaint(np.full(IMAGE_SHAPE, 256), np.zeros(IMAGE_SHAPE), rngs=KEY),
                 ValueError, "conditioning", id="inpaint-pixel-256"),
    pytest.param(lambda m: m.pixelcnn.inpaint(np.zeros(IMAGE_SHAPE, int), np.full(IMAGE_SHAPE, np.nan), rngs=KEY),
                 ValueError, "mask", id="inpaint-nan-mask"),
    pytest.param(lambda m: m.wavenet.generate(2, 0, rngs=KEY), ValueError, "max_length", id="wavenet-max_length-0"),
    pytest.param(lambda m: m.wavenet.generate(2, 6, prompt=[CODES], rngs=KEY), ValueError, "prompt",
                 id="wavenet-prompt-code-oov"),
    pytest.param(lambda m: m.wavenet.generate(2, 6, method="slow", rngs=KEY), ValueError, "method",
                 id="wavenet-method"),
    pytest.param(lambda m: m.wavenet_cond.generate(2, 6, class_label=[0, 1, 2], rngs=KEY), ValueError,
                 "class_label", id="wavenet-class_label-count"),
    # ---- the gaps
    pytest.param(lambda m: m.lm.generate(2, 6, prompt=EMPTY_ROWS, rngs=KEY), ValueError, "prompt",
                 id="lm-prompt-0-rows"),
    pytest.param(lambda m: m.wavenet.generate(2, 6, prompt=EMPTY_ROWS, rngs=KEY), ValueError, "prompt",
                 id="wavenet-prompt-0-rows"),
    pytest.param(lambda m: m.lm.generate(2, 6, prompt=[[1, 2], [3]], rngs=KEY), ValueError, "prompt",
                 id="lm-ragged-prompt"),
    pytest.param(lambda m: m.lm.sample_with_conditioning(None, 2, 6, rngs=KEY), ValueError, "conditioning",
                 id="sample_with_conditioning-None"),
    pytest.param(lambda m: m.lm.sample_with_conditioning([VOCAB], 2, 6, rngs=KEY), ValueError, "conditioning",
                 id="sample_with_conditioning-oov-message"),
    pytest.param(lambda m: m.lm.generate(2, 6, use_cache="no", rngs=KEY), TypeError, "use_cache",
                 id="lm-use_cache-str"),
    pytest.param(lambda m: m.lm.generate(2, 6, rngs=jnp.zeros(2, jnp.float32)), TypeError, "rngs",
                 id="lm-rngs-float-pair"),
    pytest.param(lambda m: m.lm.generate(2, 6, rngs=jax.random.split(KEY, 3)), TypeError, "rngs",
                 id="lm-rngs-key-batch"),
    pytest.param(lambda m: m.lm.beam_search(2, 6, length_penalty=10**400), ValueError, "length_penalty",
                 id="beam-length_penalty-int-beyond-float"),
    pytest.param(lambda m: m.wavenet.generate(1, 2**31, rngs=KEY), ValueError, "max_length",
                 id="wavenet-max_length-beyond-int32"),
    pytest.param(lambda m: speculative_sampling(m.lm, m.draft, 2, 6, k=10**6, rngs=KEY), ValueError, r"\bk\b",
                 id="speculative-k-absurd"),
]


@pytest.mark.parametrize("call,exc,match", SAMPLER_CASES)
def test_sampler_hostile_inputs(models, call, exc, match):
    error = outcome(lambda: call(models))
    assert error is not None, "accepted: it reached the compiled loop"
    assert isinstance(error, exc) and re.search(match, str(error)), f"{type(error).__name__}: {error}"


def test_refusals_leave_the_jit_caches_untouched(models):
    """The real loops this time: a refusal must come before anything is traced or compiled."""
    before = [jitted._cache_size() for jitted in JITTED]
    for case in SAMPLER_CASES:
        if case.marks:
            continue  # a gap would reach the real loop (and, for some, run for ever)
        call, exc, match = case.values
        with pytest.raises(exc, match=match):
            call(models)
    assert [jitted._cache_size() for jitted in JITTED] == before


# =========================================================================== 3. the models' __call__
def _int64(value):
    return np.full((1, 4), value, np.int64)


TRANSFORMER_CALL_CASES = [
    pytest.param(np.zeros(4, np.int32), ValueError, r"shape \[batch, length\]", id="rank-1"),
    pytest.param(np.zeros((1, 4, 1), np.int32), ValueError, r"shape \[batch, length\]", id="rank-3"),
    pytest.param(np.int32(3), ValueError, r"shape \[batch, length\]", id="rank-0"),
    pytest.param(np.zeros((1, 4), np.float32), ValueError, "integer token ids", id="float"),
    pytest.param(np.full((1, 4), np.nan), ValueError, "integer token ids", id="nan"),
    pytest.param(np.zeros((1, 4), bool), ValueError, "integer token ids", id="bool"),
    pytest.param(np.zeros((1, 4), np.complex64), ValueError, "integer token ids", id="complex"),
    pytest.param(np.full((1, 4), VOCAB), ValueError, rf"token ids in \[0, {VOCAB}\); got {VOCAB}", id="id=vocab"),
    pytest.param(np.full((1, 4), -1), ValueError, r"got -1", id="id=-1"),
    pytest.param(np.zeros((1, SEQ + 1), np.int32), ValueError, "exceeds", id="too-long"),
    pytest.param(np.full((1, 4), 2**32 - 1, np.uint32), ValueError, "token ids", id="uint32-max"),
    pytest.param(_int64(2**32 + 3), ValueError, "token ids", id="int64-wraps-into-vocab"),
    pytest.param("abc", TypeError, "tokens", id="str"),
]
PIXELCNN_CALL_CASES = [
    pytest.param(np.zeros(IMAGE_SHAPE, np.int32), {}, ValueError, r"images must have shape", id="no-batch-axis"),
    pytest.param(np.zeros((1, 3, 4, 1), np.int32), {}, ValueError, r"images must have shape", id="wrong-width"),
    pytest.param(np.zeros((1, 3, 3, 3), np.int32), {}, ValueError, r"images must have shape", id="wrong-channels"),
    pytest.param(np.zeros((1, 1, 3, 3, 1), np.int32), {}, ValueError, r"images must have shape", id="rank-5"),
    pytest.param(np.full((1, *IMAGE_SHAPE), 0.5), {}, ValueError, "images must hold integer", id="float-pixels"),
    pytest.param(np.zeros((1, *IMAGE_SHAPE), bool), {}, ValueError, "images must hold integer", id="bool-pixels"),
    pytest.param(np.full((1, *IMAGE_SHAPE), 256), {}, ValueError, r"pixel values in \[0, 256\); got 256",
                 id="pixel-256"),
    pytest.param(np.full((1, *IMAGE_SHAPE), -1), {}, ValueError, r"got -1", id="pixel--1"),
    pytest.param(np.zeros((1, *IMAGE_SHAPE), np.int32), {"labels": np.array([0])}, ValueError,
                 "labels given, but the model is unconditional", id="labels-on-unconditional"),
    pytest.param(np.full((1, *IMAGE_SHAPE), 2**32 + 7, np.int64), {}, ValueError, "pixel values",
                 id="int64-wraps-into-range"),
]
PIXELCNN_COND_CALL_CASES = [
    pytest.param({"labels": np.array([CLASSES])}, ValueError, r"labels must hold class ids", id="label-oov"),
    pytest.param({"labels": np.array([-1])}, ValueError, r"labels must hold class ids", id="label--1"),
    pytest.param({"labels": np.array([0.5])}, ValueError, "labels must hold integer", id="float-label"),
    pytest.param({"labels": np.array([0, 1])}, ValueError, "one class id per example", id="two-labels"),
    pytest.param({"labels": np.array([[0]])}, ValueError, "one class id per example", id="2-d-labels"),
    pytest.param({"labels": np.array([2**32 + 1], np.int64)}, ValueError, "labels", id="int64-label-wraps"),
]
WAVENET_CALL_CASES = [
    pytest.param(np.zeros(8, np.int32), {}, ValueError, r"shape \[batch, time\]", id="rank-1"),
    pytest.param(np.zeros((1, 8, 1), np.int32), {}, ValueError, r"shape \[batch, time\]", id="rank-3"),
    pytest.param(np.zeros((1, 8), np.float32), {}, ValueError, "mu_law_encode", id="float-audio"),
    pytest.param(np.full((1, 8), np.nan), {}, ValueError, "integer mu-law codes", id="nan-audio"),
    pytest.param(np.zeros((1, 8), bool), {}, ValueError, "integer mu-law codes", id="bool"),
    pytest.param(np.full((1, 8), CODES), {}, ValueError, rf"mu-law codes in \[0, {CODES}\); got {CODES}",
                 id="code=channels"),
    pytest.param(np.full((1, 8), -1), {}, ValueError, "got -1", id="code=-1"),
    pytest.param(np.zeros((1, 8), np.int32), {"labels": np.array([0])}, ValueError, "unconditional",
                 id="labels-on-unconditional"),
    pytest.param(np.full((1, 8), 2**32 + 2, np.int64), {}, ValueError, "mu-law codes", id="int64-wraps-into-range"),
]


@pytest.mark.parametrize("tokens,exc,match", TRANSFORMER_CALL_CASES)
def test_transformer_call_hostile_tokens(models, tokens, exc, match):
    with pytest.raises(exc, match=match):
        models.lm(tokens)


@pytest.mark.parametrize("images,kwargs,exc,match", PIXELCNN_CALL_CASES)
def test_pixelcnn_call_hostile_images(models, images, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        models.pixelcnn(images, **kwargs)


@pytest.mark.parametrize("kwargs,exc,match", PIXELCNN_COND_CALL_CASES)
def test_conditional_pixelcnn_call_hostile_labels(models, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        models.pixelcnn_cond(np.zeros((1, *IMAGE_SHAPE), np.int32), **kwargs)


@pytest.mark.parametrize("codes,kwargs,exc,match", WAVENET_CALL_CASES)
def test_wavenet_call_hostile_codes(models, codes, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        models.wavenet(codes, **kwargs)


# =========================================================================== 4. the Trainer
TRAINER_CASES = [
    pytest.param({"max_steps": 0}, ValueError, "max_steps", id="max_steps-0"),
    pytest.param({"max_steps": -3}, ValueError, "max_steps", id="max_steps-negative"),
    pytest.param({"max_steps": 2.5}, TypeError, "max_steps", id="max_steps-float"),
    pytest.param({"max_steps": "10"}, TypeError, "max_steps", id="max_steps-str"),
    pytest.param({"max_steps": True}, TypeError, "max_steps", id="max_steps-bool"),
    pytest.param({"max_epochs": 0}, ValueError, "max_epochs", id="max_epochs-0"),
    pytest.param({"max_epochs": float("nan")}, TypeError, "max_epochs", id="max_epochs-nan"),
    pytest.param({"log_every_n_steps": 0}, ValueError, "log_every_n_steps", id="log_every-0"),
    pytest.param({"log_every_n_steps": np.int64(-1)}, ValueError, "log_every_n_steps", id="log_every-np-negative"),
    pytest.param({"accumulate_grad_batches": 0}, ValueError, "accumulate_grad_batches", id="accumulate-0"),
    pytest.param({"accumulate_grad_batches": 1.0}, TypeError, "accumulate_grad_batches", id="accumulate-float"),
    pytest.param({"seed": -1}, ValueError, "seed", id="seed-negative"),
    pytest.param({"seed": None}, TypeError, "seed", id="seed-None"),
    pytest.param({"precision": "fp16"}, ValueError, "precision", id="precision-fp16"),
    pytest.param({"precision": None}, ValueError, "precision", id="precision-None"),
    pytest.param({"strategy": "ddp"}, ValueError, "strategy", id="strategy-ddp"),
    pytest.param({"mesh": object()}, ValueError, "mesh", id="mesh-without-strategy"),
    pytest.param({"val_check_interval": 0}, ValueError, "val_check_interval", id="val_check-0"),
    pytest.param({"val_check_interval": 1.5}, ValueError, "val_check_interval", id="val_check-1.5"),
    pytest.param({"val_check_interval": -0.5}, ValueError, "val_check_interval", id="val_check-negative"),
    pytest.param({"val_check_interval": float("nan")}, ValueError, "val_check_interval", id="val_check-nan"),
    pytest.param({"val_check_interval": "1"}, TypeError, "val_check_interval", id="val_check-str"),
    pytest.param({"limit_val_batches": -1}, ValueError, "limit_val_batches", id="limit_val-negative"),
    pytest.param({"limit_val_batches": 2.0}, ValueError, "limit_val_batches", id="limit_val-2.0"),
    pytest.param({"limit_val_batches": True}, TypeError, "limit_val_batches", id="limit_val-bool"),
    pytest.param({"callbacks": [object()]}, TypeError, "callbacks", id="callbacks-object"),
    pytest.param({"logger": "tensorboard"}, TypeError, "logger", id="logger-str"),
    pytest.param({"max_step": 3}, TypeError, "did you mean 'max_steps'", id="unknown-argument"),
    pytest.param({"callbacks": None}, TypeError, "callbacks", id="callbacks-None"),
    pytest.param({"callbacks": 5}, TypeError, "callbacks", id="callbacks-int"),
    pytest.param({"default_root_dir": None}, TypeError, "default_root_dir", id="root_dir-None"),
    pytest.param({"enable_progress_bar": "no"}, TypeError, "enable_progress_bar", id="progress_bar-str"),
]


@pytest.mark.parametrize("kwargs,exc,match", TRAINER_CASES)
def test_trainer_refuses_hostile_arguments(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Trainer(**{"logger": False, "default_root_dir": str(tmp_path), "enable_progress_bar": False, **kwargs})


def _ids(value, shape=(2, SEQ), dtype=np.int32):
    return np.full(shape, value, dtype)


GOOD_BATCH = {"sequences": _ids(1)}

#: (train_data, Trainer kwargs, expected exception, match)
FIT_CASES = [
    pytest.param([], {}, ValueError, "no batches", id="empty-list"),
    pytest.param(iter([]), {}, ValueError, "no batches", id="exhausted-iterator"),
    pytest.param([[1, 2]], {}, TypeError, "dicts", id="list-of-lists"),
    pytest.param([_ids(1)], {}, TypeError, "dicts", id="list-of-arrays"),
    pytest.param([{"tokens": _ids(1)}], {}, ValueError, "input_key 'sequences'", id="missing-input-key"),
    pytest.param([{"sequences": _ids(1, dtype=np.float32)}], {}, ValueError, "integer token ids", id="float-ids"),
    pytest.param([{"sequences": _ids(1, shape=(SEQ,))}], {}, ValueError, r"shape \[batch, length\]", id="rank-1"),
    pytest.param([{"sequences": _ids(1, shape=(2, SEQ + 4))}], {}, ValueError, "exceeds", id="too-long"),
    pytest.param([GOOD_BATCH, {"sequences": _ids(1, shape=(3, SEQ))}], {"accumulate_grad_batches": 2}, ValueError,
                 "shapes must stay fixed", id="shape-changes"),
    pytest.param([GOOD_BATCH, {"sequences": _ids(1), "mask": _ids(1)}], {"accumulate_grad_batches": 2},
                 ValueError, "keys changed", id="keys-change"),
    pytest.param(GOOD_BATCH, {}, TypeError, "iterable of batch dicts", id="a-dict"),
    pytest.param("text", {}, TypeError, "iterable of batch dicts", id="a-str"),
    pytest.param(42, {}, TypeError, "iterable of batch dicts", id="an-int"),
    pytest.param([GOOD_BATCH], {"max_steps": None}, ValueError, "max_steps or max_epochs", id="no-stopping-rule"),
    pytest.param((b for b in [GOOD_BATCH]), {"val_check_interval": 0.5}, ValueError, "fraction",
                 id="fraction-without-len"),
    pytest.param(None, {}, TypeError, "train_data", id="None"),
    pytest.param([{"sequences": _ids(VOCAB)}], {}, ValueError, "token ids|sequences", id="ids=vocab"),
    pytest.param([{"sequences": _ids(-1)}], {}, ValueError, "token ids|sequences", id="ids=-1"),
    pytest.param([{"sequences": _ids(1, shape=(0, SEQ))}], {}, ValueError, "sequences|batch|empty", id="zero-rows"),
    pytest.param([{"sequences": _ids(1, shape=(2, 1))}], {}, ValueError, "sequences|length", id="length-1"),
    pytest.param([{"sequences": _ids(1), "mask": _ids(1, shape=(2, 3))}], {}, ValueError, "mask",
                 id="mask-wrong-shape"),
]


@pytest.fixture(scope="module")
def fit_lm():
    return TransformerAR(VOCAB, SEQ, 16, 1, 2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("train_data,kwargs,exc,match", FIT_CASES)
def test_fit_refuses_hostile_train_data(tmp_path, fit_lm, train_data, kwargs, exc, match):
    trainer = Trainer(**{"max_steps": 1, "logger": False, "default_root_dir": str(tmp_path),
                         "enable_progress_bar": False, "callbacks": [TraceThenStop()], **kwargs})
    with pytest.raises(exc, match=match):
        trainer.fit(fit_lm, train_data)


FIT_OTHER_CASES = [
    pytest.param(lambda t, m: t.fit(object(), [GOOD_BATCH]), TypeError, "module", id="fit-module-object"),
    pytest.param(lambda t, m: t.fit(m, [GOOD_BATCH], "val"), TypeError, "val_data", id="fit-val_data-str"),
    pytest.param(lambda t, m: t.validate(object(), [GOOD_BATCH]), TypeError, "module", id="validate-module"),
    pytest.param(lambda t, m: t.validate(m, []), ValueError, "val_data", id="validate-empty"),
]


@pytest.mark.parametrize("call,exc,match", FIT_OTHER_CASES)
def test_fit_and_validate_refuse_hostile_arguments(tmp_path, fit_lm, call, exc, match):
    trainer = Trainer(max_steps=1, logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False,
                      callbacks=[TraceThenStop()])
    with pytest.raises(exc, match=match):
        call(trainer, fit_lm)


# -- the callbacks and the generation metrics: the Trainer's vocabulary (bool is no count) ------------------
def _user_callback(file: str, name: str):
    """A callback class from the repository's callbacks/ folder (not a package)."""
    return runpy.run_path(os.path.join(ROOT, "callbacks", file))[name]


def _int_refusal(name: str, allowed: str, got: str) -> str:
    """The regex of validation.py's message: ``<name> must be <allowed>; got <got>``."""
    return rf"^{name} must be {allowed}; got {got}$"


#: (call, expected exception, match). Before validation.py several of these were accepted
#: (``every_n_steps=True`` ran as every step) or were ValueErrors where the Trainer says TypeError.
CALLBACK_CASES = [
    pytest.param(lambda: ModelCheckpoint(every_n_steps=True), TypeError,
                 _int_refusal("every_n_steps", "an int >= 1 or None", r"True \(bool\)"), id="checkpoint-every-bool"),
    pytest.param(lambda: ModelCheckpoint(every_n_steps=2.0), TypeError,
                 _int_refusal("every_n_steps", "an int >= 1 or None", r"2.0 \(float\)"), id="checkpoint-every-float"),
    pytest.param(lambda: ModelCheckpoint(every_n_steps=0), ValueError,
                 _int_refusal("every_n_steps", "an int >= 1 or None", r"0 \(int\)"), id="checkpoint-every-0"),
    pytest.param(lambda: ModelCheckpoint(save_top_k=True), TypeError, "save_top_k", id="checkpoint-top_k-bool"),
    pytest.param(lambda: ModelCheckpoint(keep_last_n="2"), TypeError, "keep_last_n", id="checkpoint-keep-str"),
    pytest.param(lambda: ModelCheckpoint(async_save="no"), TypeError, r"async_save must be a bool",
                 id="checkpoint-async-str"),
    pytest.param(lambda: ModelCheckpoint(mode="best"), ValueError, r"mode must be one of 'min', 'max'",
                 id="checkpoint-mode"),
    pytest.param(lambda: SampleGenerator(every_n_steps=True), TypeError,
                 _int_refusal("every_n_steps", "an int >= 1", r"True \(bool\)"), id="sampler-every-bool"),
    pytest.param(lambda: SampleGenerator(n_samples=2.0), TypeError, "n_samples", id="sampler-n_samples-float"),
    pytest.param(lambda: TerminateOnNaN(check_every_n_steps=True), TypeError, "check_every_n_steps",
                 id="nan-check-every-bool"),
    pytest.param(lambda: TerminateOnNaN(max_consecutive_bad_steps=1.5), TypeError, "max_consecutive_bad_steps",
                 id="nan-max-bad-float"),
    pytest.param(lambda: EarlyStopping(patience=True), TypeError, "patience", id="early-patience-bool"),
    pytest.param(lambda: EarlyStopping(min_delta=float("nan")), ValueError, "min_delta", id="early-min_delta-nan"),
    pytest.param(lambda: EarlyStopping(strict="yes"), TypeError, "strict", id="early-strict-str"),
    pytest.param(lambda: LRWarmup(True), TypeError, "warmup_steps", id="warmup-steps-bool"),
    pytest.param(lambda: LRWarmup(0, decay="cosine", decay_steps=True), TypeError, "decay_steps",
                 id="warmup-decay_steps-bool"),
    pytest.param(lambda: LRWarmup(10, min_ratio="0"), TypeError, "min_ratio", id="warmup-min_ratio-str"),
    pytest.param(lambda: GradientClipping(max_norm="1"), TypeError, "max_norm", id="clip-norm-str"),
    pytest.param(lambda: GradientClipping(max_value=float("inf")), ValueError, "max_value", id="clip-value-inf"),
    pytest.param(lambda: LearningRateMonitor("batch"), ValueError, "logging_interval", id="lr-monitor-interval"),
    pytest.param(lambda: _user_callback("ema.py", "EMA")(decay=1.0), ValueError, "decay", id="ema-decay-1"),
    pytest.param(lambda: _user_callback("ema.py", "EMA")(every_n_steps=True), TypeError, "every_n_steps",
                 id="ema-every-bool"),
    pytest.param(lambda: distinct_n([[1, 2, 3]], True), TypeError, _int_refusal("n", "an int >= 1", r"True \(bool\)"),
                 id="distinct_n-bool"),
    pytest.param(lambda: repetition_rate([[1, 2, 3]], 2.0), TypeError, r"\bn must be an int", id="repetition-float"),
]


@pytest.mark.parametrize("call,exc,match", CALLBACK_CASES)
def test_callbacks_and_metrics_refuse_hostile_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# =========================================================================== 5. DataLoader
def _source(n=10):
    return {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2), "idx": np.arange(n)}


@st.composite
def loader_configs(draw):
    n = draw(st.integers(1, 30))
    num_shards = draw(st.sampled_from([1, 1, 2, 4]))
    last_batch = draw(st.sampled_from(["drop", "pad"]))
    max_rows = 12 if last_batch == "pad" else max(n // num_shards, 1)
    batch_size = num_shards * draw(st.integers(1, max_rows))
    assume(last_batch == "pad" or batch_size <= n)
    feature_shape = draw(st.sampled_from([(), (3,), (2, 2)]))
    dtype = draw(st.sampled_from(["int32", "float32", "uint8", "bool", "float64"]))
    source = {"idx": np.arange(n) if draw(st.booleans()) else list(range(n)),
              "feature": (np.arange(n * math.prod(feature_shape)) % 7).reshape(n, *feature_shape).astype(dtype)}
    columns = draw(st.sampled_from([None, ("idx",), ("feature", "idx"), ["idx", "feature"]]))
    return dict(source=source, batch_size=batch_size if draw(st.booleans()) else np.int64(batch_size),
                shuffle=draw(st.booleans()), seed=draw(st.integers(0, 2**40)), last_batch=last_batch,
                prefetch=draw(st.integers(0, 3)), columns=columns, num_shards=num_shards)


@fuzz(FUZZ_EXAMPLES["DataLoader valid configurations"])
@given(loader_configs())
def test_valid_loader_configurations_cover_each_example_once(config):
    n = len(config["source"]["idx"])
    batch_size, num_shards, pad = int(config["batch_size"]), config["num_shards"], config["last_batch"] == "pad"
    rows = batch_size // num_shards
    expected_batches = n // batch_size + (pad and n % batch_size > 0)
    seen = []
    for shard_index in range(num_shards):
        loader = DataLoader(**config, shard_index=shard_index)
        assert len(loader) == expected_batches and loader.num_examples == n
        batches = list(loader)
        assert len(batches) == expected_batches
        for batch in batches:
            keys = set(config["columns"] or config["source"]) | ({"example_mask"} if pad else set())
            assert set(batch) == keys
            for key, value in batch.items():
                assert isinstance(value, np.ndarray) and value.shape[0] == rows
                if key != "example_mask":
                    assert value.shape[1:] == np.asarray(config["source"][key]).shape[1:]
                    assert value.dtype == np.asarray(config["source"][key]).dtype
            real = batch["example_mask"].astype(bool) if pad else np.ones(rows, bool)
            if pad:
                assert batch["example_mask"].dtype == np.float32 and set(np.unique(batch["example_mask"])) <= {0, 1}
            if "idx" in batch:
                seen += batch["idx"][real].tolist()
                if "feature" in batch:
                    np.testing.assert_array_equal(batch["feature"],
                                                  np.asarray(config["source"]["feature"])[batch["idx"]])
        assert loader.state_dict()["epoch"] == 1
    if config["columns"] is None or "idx" in config["columns"]:
        assert len(seen) == len(set(seen)), "an example appeared twice in one epoch"
        assert len(seen) == (n if pad else n // batch_size * batch_size)


LOADER_ARGS = {
    "batch_size": st.one_of(st.integers(1, 10), st.integers(-(2**70), 0), st.integers(11, 2**70), FLOATS, JUNK,
                            st.builds(np.int64, st.integers(-5, 20))),
    "seed": st.one_of(st.integers(0, 2**70), st.integers(-(2**70), -1), FLOATS, JUNK),
    "last_batch": st.sampled_from(["drop", "pad", "keep", "DROP", "", None, 1, ["drop"]]),
    "prefetch": st.one_of(st.integers(0, 8), st.integers(-(2**40), -1), FLOATS, JUNK),
    "columns": st.sampled_from([None, ["x"], ("x", "idx"), "x", [], ["nope"], ["x", "nope"], [1], [None]]),
    "num_shards": st.one_of(st.integers(-3, 6), FLOATS, JUNK),
    "shard_index": st.one_of(st.integers(-3, 4), FLOATS, JUNK),
    "source": st.sampled_from(["ok", "mismatched-lengths", "empty-dict", "zero-rows", "scalar-column",
                               "none-column", "str-column", "dict-column", "none", "list", "str", "int",
                               "jax-column", "list-column"]),
}
SOURCES = {
    "ok": (_source(), True), "mismatched-lengths": ({"x": np.zeros(4), "y": np.zeros(5)}, False),
    "empty-dict": ({}, False), "zero-rows": ({"x": np.zeros((0, 3))}, False),
    "scalar-column": ({"x": np.float32(1.0)}, False), "none-column": ({"x": None}, False),
    "str-column": ({"x": "abcd"}, False), "dict-column": ({"x": {"a": 1}}, False),
    "none": (None, False), "list": ([np.zeros(4)], False), "str": ("x", False), "int": (3, False),
    "jax-column": ({"x": jnp.arange(10)}, True), "list-column": ({"x": list(range(10))}, True),
}


def _loader_valid(name, value, kwargs):
    batch_size, num_shards, shard_index = kwargs["batch_size"], kwargs["num_shards"], kwargs["shard_index"]
    if name == "batch_size":
        return count_ok(value) and value <= 10  # drop: at most the 10 examples
    if name == "seed":
        return count_ok(value, 0)
    if name == "last_batch":
        return isinstance(value, str) and value in ("drop", "pad")
    if name == "prefetch":
        return count_ok(value, 0)
    if name == "columns":
        return value is None or (not isinstance(value, str) and len(value) > 0 and set(value) <= {"x", "idx"})
    if name == "num_shards":
        return count_ok(value) and shard_index < value and batch_size % value == 0
    if name == "shard_index":
        return count_ok(value, 0) and value < num_shards
    return SOURCES[value][1]


LOADER_NAMES = {"source": "source", "columns": "columns", "num_shards": "num_shards|shard_index|batch_size",
                "shard_index": "shard_index|num_shards"}


@fuzz(FUZZ_EXAMPLES["DataLoader hostile arguments"])
@given(one_hostile_argument(LOADER_ARGS))
def test_loader_refuses_hostile_arguments_by_name(argument):
    name, value = argument
    kwargs = dict(source=_source(), batch_size=4, seed=0, last_batch="drop", prefetch=2, columns=None,
                  num_shards=1, shard_index=0)
    valid = _loader_valid(name, value, kwargs)
    event(f"{name}: {'valid' if valid else 'hostile'}")
    kwargs[name] = SOURCES[value][0] if name == "source" else value
    try:
        loader = DataLoader(**kwargs)
    except (ValueError, TypeError) as error:
        assert not valid, f"valid {name}={value!r} refused: {error}"
        assert re.search(LOADER_NAMES.get(name, name), str(error)), f"{error} does not name {name}"
        return
    assert valid, f"hostile {name}={value!r} accepted"
    first = next(iter(loader))
    assert all(len(column) == loader.batch_size // loader.num_shards for column in first.values())


#: (call, expected exception, match)
LOADER_CASES = [
    pytest.param(lambda: DataLoader({"x": [1, [2, 3]]}, 1), ValueError, "source|'x'", id="ragged-column"),
    pytest.param(lambda: DataLoader(_source(), 4, columns=5), TypeError, "columns", id="columns-int"),
    pytest.param(lambda: DataLoader(_source(), 4, shuffle="no"), TypeError, "shuffle", id="shuffle-str"),
    pytest.param(lambda: DataLoader({"x": [None] * 4}, 2), TypeError, "source|'x'|object", id="object-column"),
    pytest.param(lambda: DataLoader({"x": np.zeros(4), "example_mask": np.ones(4)}, 2, last_batch="pad"),
                 ValueError, "example_mask", id="pad-with-own-mask"),
    pytest.param(lambda: DataLoader(_source(), 4).load_state_dict(None), TypeError, "state", id="state-None"),
    pytest.param(lambda: DataLoader(_source(), 4).load_state_dict({}), ValueError, "missing keys", id="state-empty"),
    pytest.param(lambda: DataLoader(_source(), 4).load_state_dict({"epoch": -1, "batches_yielded": 0, "seed": 0}),
                 ValueError, "epoch", id="state-negative-epoch"),
    pytest.param(lambda: DataLoader(_source(), 4).load_state_dict({"epoch": 0, "batches_yielded": 9, "seed": 0}),
                 ValueError, "batches_yielded", id="state-past-the-epoch"),
    pytest.param(lambda: DataLoader(_source(), 4).load_state_dict({"epoch": 0, "batches_yielded": 0, "seed": 1}),
                 ValueError, "seed", id="state-other-seed"),
    pytest.param(lambda: DataLoader(_source(), 4).load_state_dict({"epoch": 0.5, "batches_yielded": 0, "seed": 0}),
                 TypeError, "epoch", id="state-float-epoch"),
]


@pytest.mark.parametrize("call,exc,match", LOADER_CASES)
def test_loader_hostile_cases(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# =========================================================================== 6. files and data sets
def _idx(array: np.ndarray, code: int = 0x08, dtype: str = ">u1") -> bytes:
    return (b"\0\0" + bytes([code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + np.ascontiguousarray(array).astype(dtype).tobytes())


def _mnist_dir(root, name, images: bytes, labels: bytes, *, gz: bool = False) -> str:
    folder = root / name
    folder.mkdir()
    suffix = ".gz" if gz else ""
    (folder / f"t10k-images-idx3-ubyte{suffix}").write_bytes(images)
    (folder / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(labels)
    return str(folder)


def _write(path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return str(path)


def _float_wav(path, samples) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(samples, np.float32), 8000, subtype="FLOAT")
    return str(path)


def _good_wav(path, n=400) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio_data.write_wav(path, 0.5 * np.sin(np.arange(n) / 5.0), 8000)
    return str(path)


def _npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every unreadable, empty or malformed file the tables read, plus the fake runs the
    recipes' sampling modes load (weights are not loaded: see test_recipe_flags)."""
    root = tmp_path_factory.mktemp("hostile-files")
    images = (np.arange(40 * 8 * 8) % 256).reshape(40, 8, 8).astype(np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    f = SimpleNamespace(root=str(root), missing=str(root / "missing"), empty_dir=str((root / "empty").mkdir() or
                                                                                      root / "empty"))
    # -- audio
    f.text_wav = _write(root / "text.wav", "this is not audio\n")
    f.empty_wav = _write(root / "empty.wav", b"")
    f.nan_wav = _float_wav(root / "nan.wav", [0.1, np.nan, 0.2] * 50)
    f.loud_wav = _float_wav(root / "loud.wav", [0.1, 2.0, 0.2] * 50)
    f.zero_frames_wav = _float_wav(root / "zero-frames.wav", np.zeros(0))
    f.good_wav = _good_wav(root / "good.wav")
    f.wav_dir = str(root / "wavs")
    _good_wav(root / "wavs" / "a.wav"), _good_wav(root / "wavs" / "b.wav")
    f.wav_dir_text = str(root / "wavs-text")
    _good_wav(root / "wavs-text" / "a.wav"), _write(root / "wavs-text" / "b.wav", "not audio")
    f.wav_dir_nan = str(root / "wavs-nan")
    _good_wav(root / "wavs-nan" / "a.wav"), _float_wav(root / "wavs-nan" / "b.wav", [np.nan] * 100)
    f.wav_dir_mixed = str(root / "wavs-mixed")
    _good_wav(root / "wavs-mixed" / "a.wav"), _good_wav(root / "wavs-mixed" / "class" / "b.wav")
    f.fsdd_bad = str(root / "fsdd-bad")
    _good_wav(root / "fsdd-bad" / "hello.wav")
    f.fsdd = str(root / "fsdd")
    for name in ("0_alice_0.wav", "1_alice_0.wav", "0_bob_0.wav", "1_bob_0.wav"):
        _good_wav(root / "fsdd" / name)
    # -- images
    f.mnist_ok = _mnist_dir(root, "mnist-ok", _idx(images), _idx(labels))
    f.mnist_garbage = _mnist_dir(root, "mnist-garbage", b"hello, I am not an IDX file", _idx(labels))
    f.mnist_truncated = _mnist_dir(root, "mnist-truncated", _idx(images)[:-100], _idx(labels))
    f.mnist_bad_gzip = _mnist_dir(root, "mnist-bad-gzip", b"\x1f\x8b" + b"garbage" * 10, b"\x1f\x8b", gz=True)
    f.mnist_2d = _mnist_dir(root, "mnist-2d", _idx(images[0]), _idx(labels))
    f.mnist_label_count = _mnist_dir(root, "mnist-label-count", _idx(images), _idx(labels[:-1]))
    f.mnist_label_oov = _mnist_dir(root, "mnist-label-oov", _idx(images), _idx(labels + 1))
    f.mnist_float = _mnist_dir(root, "mnist-float", _idx(images.astype(np.float32), 0x0D, ">f4"), _idx(labels))
    f.idx_huge_header = _write(root / "huge.idx", b"\0\0\x08\x03" + struct.pack(">3I", 2**31, 2**31, 2**31) + b"x")
    grey = images[..., None]
    f.npz_text = _write(root / "text.npz", "not an archive")
    good_npz = _npz(root / "good.npz", images=grey, labels=labels)
    f.npz_truncated = _write(root / "truncated.npz", open(good_npz, "rb").read()[:200])
    f.npz_no_labels = _npz(root / "no-labels.npz", images=grey)
    f.npz_float = _npz(root / "float.npz", images=grey / 255.0, labels=labels)
    f.npz_object = _npz(root / "object.npz", images=np.array([grey, None], dtype=object), labels=labels)
    f.npz_3d = _npz(root / "3d.npz", images=images, labels=labels)
    f.npz_two_channels = _npz(root / "two-channels.npz", images=np.repeat(grey, 2, -1), labels=labels)
    f.npz_300 = _npz(root / "300.npz", images=grey.astype(np.uint16) + 200, labels=labels)
    f.npz_str_labels = _npz(root / "str-labels.npz", images=grey, labels=np.array(["cat"] * 40))
    f.npz_negative_labels = _npz(root / "negative-labels.npz", images=grey, labels=-np.ones(40, np.int64))
    np.save(root / "single.npy", grey)
    f.npy = str(root / "single.npy")
    f.image_folder_bad = str(root / "images-bad")
    _write(root / "images-bad" / "cat" / "a.png", "I am not a PNG")
    _write(root / "images-bad" / "dog" / "b.png", "neither am I")
    # -- text
    f.garbage_json = _write(root / "garbage.json", "{{{{ not json")
    f.binary_json = _write(root / "binary.json", b"\xff\xfe\x00\x80")
    f.list_json = _write(root / "list.json", "[]")
    f.byte_json = _write(root / "byte.json", json.dumps({"type": "ByteTokenizer"}))
    f.unsorted_json = _write(root / "unsorted.json", json.dumps({"type": "CharTokenizer", "chars": "ba"}))
    f.int_chars_json = _write(root / "int-chars.json", json.dumps({"type": "CharTokenizer", "chars": 5}))
    f.char_json = _write(root / "char.json", json.dumps({"type": "CharTokenizer", "chars": "ab"}))
    import tokenizers
    from tokenizers import models as tokenizer_models
    f.wordlevel_json = str(root / "wordlevel.json")
    tokenizers.Tokenizer(tokenizer_models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(f.wordlevel_json)
    f.empty_txt = _write(root / "empty.txt", "")
    f.text_txt = _write(root / "text.txt", "hello world\n" * 300)
    # -- fake runs for the recipes' sampling modes
    f.tr_run = _fake_run(root / "tr-run", {
        "tokenizer": "byte", "vocab_size": 259, "sequence_length": 16, "hidden_dim": 16, "num_layers": 1,
        "num_heads": 2, "dropout_rate": 0.0, "position_encoding": "learned", "pad_token_id": 258,
        "bos_token_id": 256})
    text_data.ByteTokenizer().save(os.path.join(f.tr_run, "tokenizer.json"))
    pixel = {"image_shape": [8, 8, 1], "num_layers": 1, "hidden_channels": 4, "num_residual_blocks": 0,
             "kernel_size": 3, "gated": False, "output": "categorical", "num_mixtures": 5}
    f.px_run = _fake_run(root / "px-run", {**pixel, "num_classes": None})
    f.px_run_cond = _fake_run(root / "px-run-cond", {**pixel, "num_classes": 10})
    wave = {"num_layers": 2, "num_stacks": 1, "residual_channels": 4, "dilation_channels": 4, "skip_channels": 4,
            "sample_rate": 8000}
    f.wn_run = _fake_run(root / "wn-run", {**wave, "num_classes": None})
    f.wn_run_cond = _fake_run(root / "wn-run-cond", {**wave, "num_classes": 10})
    return f


def _fake_run(folder, config) -> str:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "model_config.json").write_text(json.dumps(config))
    return str(folder)


AUDIO = np.linspace(-0.5, 0.5, 16).astype(np.float32)

#: (call on the files namespace, expected exception, match)
AUDIO_CASES = [
    pytest.param(lambda f: audio_data.check_audio(np.array([0.1, np.nan])), ValueError, "non-finite", id="nan"),
    pytest.param(lambda f: audio_data.check_audio(np.array([0.1, np.inf])), ValueError, "non-finite", id="inf"),
    pytest.param(lambda f: audio_data.check_audio(np.zeros((100, 2), np.float32)), ValueError, "stereo",
                 id="stereo-channels-last"),
    pytest.param(lambda f: audio_data.check_audio(np.zeros((2, 100), np.float32)), ValueError, "stereo",
                 id="stereo-channels-first"),
    pytest.param(lambda f: audio_data.check_audio(np.zeros((2, 3, 4))), ValueError, "mono", id="rank-3"),
    pytest.param(lambda f: audio_data.check_audio(np.float32(0.1)), ValueError, "mono", id="rank-0"),
    pytest.param(lambda f: audio_data.check_audio(np.zeros(0, np.float32)), ValueError, "empty", id="empty"),
    pytest.param(lambda f: audio_data.check_audio(np.array([0.5, 1.5])), ValueError, r"\[-1, 1\]", id="beyond-1"),
    pytest.param(lambda f: audio_data.check_audio(np.zeros(4, np.int16)), TypeError, "float samples", id="int16"),
    pytest.param(lambda f: audio_data.check_audio(np.zeros(4, complex)), TypeError, "float samples", id="complex"),
    pytest.param(lambda f: audio_data.check_audio(np.array(["a", "b"])), TypeError, "float samples", id="strings"),
    pytest.param(lambda f: audio_data.check_audio(AUDIO, sample_rate=8000, expected_rate=16000), ValueError,
                 "sample rate", id="rate-mismatch"),
    pytest.param(lambda f: audio_data.check_audio(AUDIO, sample_rate=0), ValueError, "sample_rate", id="rate-0"),
    pytest.param(lambda f: audio_data.check_audio(AUDIO, sample_rate=8000.0), TypeError, "sample_rate",
                 id="rate-float"),
    pytest.param(lambda f: audio_data.mu_law_encode(np.array([0.1, np.nan])), ValueError, "NaN", id="encode-nan"),
    pytest.param(lambda f: audio_data.mu_law_encode(np.zeros(4, np.int32)), TypeError, "float", id="encode-int"),
    pytest.param(lambda f: audio_data.mu_law_encode(AUDIO, 1), ValueError, "quantization_channels",
                 id="encode-channels-1"),
    pytest.param(lambda f: audio_data.mu_law_encode(AUDIO, 2**17), ValueError, "quantization_channels",
                 id="encode-channels-huge"),
    pytest.param(lambda f: audio_data.mu_law_encode(AUDIO, True), TypeError, "quantization_channels",
                 id="encode-channels-bool"),
    pytest.param(lambda f: audio_data.mu_law_encode(jnp.array([0.1, jnp.nan])), ValueError, "NaN",
                 id="encode-concrete-jax-nan"),
    pytest.param(lambda f: audio_data.mu_law_decode(np.array([0.5])), TypeError, "integer", id="decode-float"),
    pytest.param(lambda f: audio_data.mu_law_decode(np.array([256])), ValueError, r"\[0, 255\]", id="decode-256"),
    pytest.param(lambda f: audio_data.mu_law_decode(np.array([-1])), ValueError, r"\[0, 255\]", id="decode--1"),
    pytest.param(lambda f: audio_data.mu_law_decode(jnp.array([300])), ValueError, r"\[0, 255\]",
                 id="decode-concrete-jax-300"),
    pytest.param(lambda f: audio_data.fit_length(AUDIO, 0), ValueError, "length", id="fit_length-0"),
    pytest.param(lambda f: audio_data.fit_length(AUDIO, 2.0), TypeError, "length", id="fit_length-float"),
    pytest.param(lambda f: audio_data.frame_windows(AUDIO, 4, hop=0), ValueError, "hop", id="hop-0"),
    pytest.param(lambda f: audio_data.frame_windows(AUDIO, 4, hop=5), ValueError, "hop", id="hop>length"),
    pytest.param(lambda f: audio_data.resample(AUDIO, 0, 8000), ValueError, "orig_rate", id="resample-rate-0"),
    pytest.param(lambda f: audio_data.resample(AUDIO[:4], 8000, 1), ValueError, "shorter than one sample",
                 id="resample-to-nothing"),
    pytest.param(lambda f: audio_data.resample(np.array([np.nan]), 8000, 16000), ValueError, "non-finite",
                 id="resample-nan"),
    pytest.param(lambda f: audio_data.to_mono(np.zeros((4, 0), np.float32)), ValueError, "C >= 1", id="mono-0-ch"),
    pytest.param(lambda f: audio_data.to_mono(np.zeros((4, 2), np.int16)), TypeError, "float", id="mono-int"),
    pytest.param(lambda f: audio_data.read_wav(f.text_wav), ValueError, "cannot be read as audio", id="wav-is-text"),
    pytest.param(lambda f: audio_data.read_wav(f.empty_wav), ValueError, "empty.wav", id="wav-0-bytes"),
    pytest.param(lambda f: audio_data.read_wav(f.missing), ValueError, "does not exist", id="wav-missing"),
    pytest.param(lambda f: audio_data.read_wav(f.root), ValueError, "not a file", id="wav-is-a-directory"),
    pytest.param(lambda f: audio_data.read_wav(f.zero_frames_wav), ValueError, "no audio", id="wav-0-frames"),
    pytest.param(lambda f: audio_data.read_wav(f.nan_wav), ValueError, "non-finite", id="wav-with-nan"),
    pytest.param(lambda f: audio_data.read_wav(f.loud_wav), ValueError, r"\[-1, 1\]", id="wav-beyond-1"),
    pytest.param(lambda f: audio_data.read_wav(f.good_wav, sample_rate=0), ValueError, "sample_rate",
                 id="wav-rate-0"),
    pytest.param(lambda f: audio_data.read_wav(f.good_wav, sample_rate=16000, resample_to_rate=False), ValueError,
                 "sample rate", id="wav-rate-mismatch"),
    pytest.param(lambda f: audio_data.write_wav(os.path.join(f.root, "out.wav"), [np.nan], 8000), ValueError,
                 "non-finite", id="write-nan"),
    pytest.param(lambda f: audio_data.write_wav(os.path.join(f.root, "out.wav"), AUDIO, 0), ValueError,
                 "sample_rate", id="write-rate-0"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.missing, sample_rate=8000, length=64), ValueError,
                 "does not exist", id="folder-missing"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.empty_dir, sample_rate=8000, length=64), ValueError,
                 "no .wav", id="folder-empty"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.wav_dir_text, sample_rate=8000, length=64), ValueError,
                 "b.wav", id="folder-with-text-wav"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.wav_dir_nan, sample_rate=8000, length=64), ValueError,
                 "non-finite", id="folder-with-nan-wav"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.wav_dir_mixed, sample_rate=8000, length=64), ValueError,
                 "mixes", id="folder-mixed-nesting"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.wav_dir, sample_rate=8000, length=0), ValueError,
                 "length", id="folder-length-0"),
    pytest.param(lambda f: audio_data.load_wav_folder(f.wav_dir, sample_rate=-1, length=64), ValueError,
                 "sample_rate", id="folder-rate-negative"),
    pytest.param(lambda f: audio_data.load_fsdd(f.missing), ValueError, "does not exist", id="fsdd-missing"),
    pytest.param(lambda f: audio_data.load_fsdd(f.empty_dir), ValueError, "no .wav", id="fsdd-empty"),
    pytest.param(lambda f: audio_data.load_fsdd(f.fsdd_bad), ValueError, "not named like", id="fsdd-misnamed"),
    pytest.param(lambda f: audio_data.load_fsdd(f.fsdd, digits=[11]), ValueError, "digits", id="fsdd-digit-11"),
    pytest.param(lambda f: audio_data.load_fsdd(f.fsdd, speakers="carol"), ValueError, "unknown speakers",
                 id="fsdd-unknown-speaker"),
    pytest.param(lambda f: audio_data.load_fsdd(f.fsdd, length=0), ValueError, "length", id="fsdd-length-0"),
    pytest.param(lambda f: audio_data.split_by_speaker(audio_data.load_fsdd(f.fsdd, length=64), ["alice", "bob"]),
                 ValueError, "leaves train empty", id="split-all-speakers"),
    pytest.param(lambda f: audio_data.split_by_speaker({"waveform": np.zeros((2, 4))}, "alice"), TypeError,
                 "speakers", id="split-without-speakers"),
]


@pytest.mark.parametrize("call,exc,match", AUDIO_CASES)
def test_audio_hostile_inputs(files, call, exc, match):
    with pytest.raises(exc, match=match):
        call(files)


GREY = np.zeros((2, 4, 4, 1), np.uint8)

IMAGE_CASES = [
    pytest.param(lambda f: image_data.load_mnist(f.missing), FileNotFoundError, "t10k-images-idx3-ubyte",
                 id="mnist-missing-dir"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_ok, split="validation"), FileNotFoundError,
                 "validation-images", id="mnist-unknown-split"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_garbage), ValueError, "not an IDX file",
                 id="mnist-not-idx"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_truncated), ValueError, "malformed", id="mnist-truncated"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_bad_gzip), ValueError, "corrupt gzip",
                 id="mnist-corrupt-gzip"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_2d), ValueError, "not MNIST images", id="mnist-2d"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_label_count), ValueError, "entries for",
                 id="mnist-label-count"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_label_oov), ValueError, "num_classes=10",
                 id="mnist-label-10"),
    pytest.param(lambda f: image_data.load_mnist(f.mnist_float), TypeError, "integer pixel values",
                 id="mnist-float-pixels"),
    pytest.param(lambda f: image_data.read_idx(f.idx_huge_header), ValueError, "malformed", id="idx-huge-header"),
    pytest.param(lambda f: image_data.load_npz(f.npz_text), ValueError, r"text\.npz' is not", id="npz-is-text"),
    pytest.param(lambda f: image_data.load_npz(f.npz_truncated), ValueError, "truncated.npz",
                 id="npz-truncated"),
    pytest.param(lambda f: image_data.load_npz(f.missing), FileNotFoundError, "missing", id="npz-missing"),
    pytest.param(lambda f: image_data.load_npz(f.npy), ValueError, "single .npy", id="npz-is-npy"),
    pytest.param(lambda f: image_data.load_npz(f.npz_no_labels), ValueError, "labels_key=None",
                 id="npz-without-labels"),
    pytest.param(lambda f: image_data.load_npz(f.npz_float), TypeError, "integer pixel values", id="npz-float"),
    pytest.param(lambda f: image_data.load_npz(f.npz_object), ValueError, "unpickling", id="npz-pickled"),
    pytest.param(lambda f: image_data.load_npz(f.npz_3d), ValueError, "channel axis", id="npz-no-channel-axis"),
    pytest.param(lambda f: image_data.load_npz(f.npz_two_channels), ValueError, "C in", id="npz-2-channels"),
    pytest.param(lambda f: image_data.load_npz(f.npz_300), ValueError, r"\[0, 255\]", id="npz-pixel-300"),
    pytest.param(lambda f: image_data.load_npz(f.npz_str_labels), TypeError, "class ids", id="npz-str-labels"),
    pytest.param(lambda f: image_data.load_npz(f.npz_negative_labels), ValueError, ">= 0", id="npz-negative-labels"),
    pytest.param(lambda f: image_data.load_image_folder(f.missing), FileNotFoundError, "does not exist",
                 id="folder-missing"),
    pytest.param(lambda f: image_data.load_image_folder(f.image_folder_bad), OSError, "a.png",
                 id="folder-with-non-images"),  # PIL's UnidentifiedImageError (an OSError) names the file
    pytest.param(lambda f: image_data.load_image_folder(f.empty_dir), FileNotFoundError, "empty",
                 id="folder-empty"),  # datasets' EmptyDatasetError
    pytest.param(lambda f: image_data.check_images(GREY.astype(np.float32)), TypeError, "integer", id="float"),
    pytest.param(lambda f: image_data.check_images(GREY[..., 0]), ValueError, "channel axis", id="rank-3"),
    pytest.param(lambda f: image_data.check_images(GREY[:0]), ValueError, "N, H and W >= 1", id="no-images"),
    pytest.param(lambda f: image_data.check_images(np.zeros((2, 4, 4, 2), np.uint8)), ValueError, "C in",
                 id="2-channels"),
    pytest.param(lambda f: image_data.check_images(GREY.astype(np.int16) - 1), ValueError, r"\[0, 255\]",
                 id="negative-pixels"),
    pytest.param(lambda f: image_data.check_images(GREY.astype(bool)), TypeError, "integer", id="bool"),
    pytest.param(lambda f: image_data.check_images(GREY.astype(object)), TypeError, "integer", id="object"),
    pytest.param(lambda f: image_data.check_images(GREY, channels=2), ValueError, "channels", id="channels-2"),
    pytest.param(lambda f: image_data.check_images(GREY, channels=True), TypeError, "channels",
                 id="channels-bool"),  # True == 1 passed as "one of (1, 3)" before validation.py
    pytest.param(lambda f: image_data.check_images(GREY, size="ab"), TypeError, "size", id="size-str"),
    pytest.param(lambda f: image_data.check_images(GREY, size=(5, 5)), ValueError, "5x5", id="size-mismatch"),
    pytest.param(lambda f: image_data.check_labels(np.array([0.5]), 10), TypeError, "class ids", id="labels-float"),
    pytest.param(lambda f: image_data.check_labels(np.zeros((2, 2), int), 10), ValueError, r"shape \[N\]",
                 id="labels-2d"),
    pytest.param(lambda f: image_data.check_labels(np.zeros(3, int), 10, num_examples=2), ValueError,
                 "exactly one label", id="labels-count"),
    pytest.param(lambda f: image_data.check_labels(np.array([-1]), 10), ValueError, ">= 0", id="labels-negative"),
    pytest.param(lambda f: image_data.check_labels(np.array([10]), 10), ValueError, "num_classes=10",
                 id="labels-oov"),
    pytest.param(lambda f: image_data.check_labels(np.array([0]), 0), ValueError, "num_classes",
                 id="num_classes-0"),
    pytest.param(lambda f: image_data.split_train_val({"images": GREY}, 0, 1), ValueError, "n_train",
                 id="split-n_train-0"),
    pytest.param(lambda f: image_data.split_train_val({"images": GREY}, 1, -1), ValueError, "n_val",
                 id="split-n_val-negative"),
    pytest.param(lambda f: image_data.split_train_val({"images": GREY}, 2, 1), ValueError, "exceeds",
                 id="split-too-many"),
    pytest.param(lambda f: image_data.split_train_val({"images": GREY}, 1.0, 1), TypeError, "n_train",
                 id="split-float"),
    pytest.param(lambda f: image_data.split_train_val({"images": GREY}, 1, 1, seed=-1), ValueError, "seed",
                 id="split-seed"),
    pytest.param(lambda f: image_data.split_train_val({}, 1, 1), TypeError, "data", id="split-empty-dict"),
    pytest.param(lambda f: image_data.split_train_val(None, 1, 1), TypeError, "data", id="split-None"),
    pytest.param(lambda f: image_data.split_train_val({"images": GREY, "labels": np.zeros(3)}, 1, 1), ValueError,
                 "leading length", id="split-mismatched"),
]


@pytest.mark.parametrize("call,exc,match", IMAGE_CASES)
def test_image_hostile_inputs(files, call, exc, match, tmp_path, monkeypatch):
    import datasets  # load_image_folder's builder cache stays out of the home directory

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(exc, match=match):
        call(files)


TEXT_CASES = [
    pytest.param(lambda f: text_data.ByteTokenizer.load(f.garbage_json), ValueError, "not a JSON", id="byte-garbage"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.garbage_json), ValueError, "not a JSON", id="char-garbage"),
    pytest.param(lambda f: text_data.BPETokenizer.load(f.garbage_json), ValueError, "not a tokenizers JSON",
                 id="bpe-garbage"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.binary_json), ValueError, "UTF-8", id="char-binary"),
    pytest.param(lambda f: text_data.BPETokenizer.load(f.binary_json), ValueError, "UTF-8", id="bpe-binary"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.list_json), ValueError, "JSON list", id="char-list"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.byte_json), ValueError, "ByteTokenizer", id="char-wrong-type"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.unsorted_json), ValueError, "sorted", id="char-unsorted"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.int_chars_json), ValueError, "chars", id="char-int-chars"),
    pytest.param(lambda f: text_data.CharTokenizer.load(f.missing), FileNotFoundError, "missing", id="char-missing"),
    pytest.param(lambda f: text_data.BPETokenizer.load(f.char_json), ValueError, "char.json", id="bpe-char-file"),
    pytest.param(lambda f: text_data.BPETokenizer.load(f.wordlevel_json), ValueError, "WordLevel", id="bpe-wordlevel"),
    pytest.param(lambda f: text_data.CharTokenizer.fit(""), ValueError, "empty", id="fit-empty"),
    pytest.param(lambda f: text_data.CharTokenizer.fit(None), TypeError, "text", id="fit-None"),
    pytest.param(lambda f: text_data.CharTokenizer("ba"), ValueError, "sorted", id="chars-unsorted"),
    pytest.param(lambda f: text_data.CharTokenizer.fit("ab").encode("abc"), ValueError, "'c'", id="encode-unknown"),
    pytest.param(lambda f: text_data.BPETokenizer.train(["abc"], 100), ValueError, "vocab_size", id="bpe-vocab-100"),
    pytest.param(lambda f: text_data.BPETokenizer.train("abc", 300), TypeError, "single str", id="bpe-str"),
    pytest.param(lambda f: text_data.BPETokenizer.train([], 300), ValueError, "empty", id="bpe-no-texts"),
    pytest.param(lambda f: text_data.BPETokenizer.train([1, 2], 300), TypeError, "strings", id="bpe-ints"),
    pytest.param(lambda f: text_data.BPETokenizer.train(["ab"], 300, min_frequency=0), ValueError,
                 "min_frequency", id="bpe-min_frequency-0"),
    pytest.param(lambda f: text_data.preprocess(["a"], text_data.ByteTokenizer(), 1), ValueError, "max_length",
                 id="preprocess-max_length-1"),
    pytest.param(lambda f: text_data.preprocess("abc", text_data.ByteTokenizer(), 8), TypeError, "single str",
                 id="preprocess-str"),
    pytest.param(lambda f: text_data.preprocess([], text_data.ByteTokenizer(), 8), ValueError, "empty",
                 id="preprocess-empty"),
    pytest.param(lambda f: text_data.preprocess([None], text_data.ByteTokenizer(), 8), TypeError, "texts|str",
                 id="preprocess-None-text"),
    pytest.param(lambda f: text_data.preprocess([b"abc"], text_data.ByteTokenizer(), 8), TypeError, "texts|str",
                 id="preprocess-bytes-text"),
    pytest.param(lambda f: text_data.token_windows(range(10), 1), ValueError, "length", id="windows-length-1"),
    pytest.param(lambda f: text_data.token_windows(range(10), -3), ValueError, "length", id="windows-length-neg"),
    pytest.param(lambda f: text_data.token_windows(range(10), 2.5), TypeError, "length", id="windows-length-float"),
    pytest.param(lambda f: text_data.token_windows(range(3), 8), ValueError, "too short", id="windows-too-short"),
    pytest.param(lambda f: text_data.token_windows([], 4), ValueError, "too short", id="windows-no-ids"),
    pytest.param(lambda f: text_data.token_windows([0.5, 1.7, 2.2, 3.9], 2), TypeError, "ids",
                 id="windows-float-ids"),
    pytest.param(lambda f: text_data.token_windows(range(10), np.int64(4)), None, None,
                 id="windows-numpy-int-length"),
    pytest.param(lambda f: text_data.token_windows(np.zeros((4, 4), int), 2), ValueError, "ids",
                 id="windows-2d-ids"),
    pytest.param(lambda f: text_data.read_text_files([f.missing]), OSError, "cannot read text file",
                 id="read-missing"),
    pytest.param(lambda f: text_data.read_text_files([]), ValueError, "no text", id="read-no-files"),
    pytest.param(lambda f: text_data.read_text_files([f.empty_txt]), ValueError, "no text", id="read-empty-file"),
    pytest.param(lambda f: text_data.read_text_files([f.root]), OSError, "cannot read text file", id="read-a-dir"),
    pytest.param(lambda f: text_data.read_text_files(f.text_txt), TypeError, "paths", id="read-a-str"),
    pytest.param(lambda f: text_data.stdlib_corpus(-1), ValueError, "max_bytes", id="corpus-negative"),
    pytest.param(lambda f: text_data.preprocess(["a"], text_data.ByteTokenizer(), True), TypeError,
                 r"max_length must be an int >= 2 \(room for BOS and EOS\); got True \(bool\)",
                 id="preprocess-max_length-bool"),  # a ValueError before validation.py
]


@pytest.mark.parametrize("call,exc,match", TEXT_CASES)
def test_text_hostile_inputs(files, call, exc, match):
    if exc is None:
        call(files)  # must simply work
        return
    with pytest.raises(exc, match=match):
        call(files)


# =========================================================================== 7. the recipes' flags
#: Stops a recipe run that passed every check at the start of training, as a user's callback.
STOP_BEFORE_TRAINING = ["--callback", os.path.join(os.path.dirname(__file__), "stop_training.py:StopBeforeTraining")]
TR = ["--corpus-bytes", "3000", "--seq-len", "16", "--hidden-dim", "16", "--num-layers", "1", "--num-heads", "2",
      "--batch-size", "4", "--no-progress-bar", "--max-steps", "2", "--out", "{out}"]
TR_GEN = ["--generate", "--out", "{tr_run}", "--max-length", "12", "--n-samples", "2"]
PX = ["--mnist-dir", "{mnist_ok}", "--n-train", "24", "--n-val", "8", "--batch-size", "8", "--hidden-channels", "4",
      "--num-layers", "1", "--num-residual-blocks", "0", "--kernel-size", "3", "--max-steps", "1",
      "--no-progress-bar", "--out", "{out}"]
PX_GEN = ["--generate", "--out", "{px_run}", "--n-samples", "2", "--mnist-dir", "{mnist_ok}", "--n-train", "24",
          "--n-val", "8"]
WN = ["--wav-folder", "{wav_dir}", "--window", "64", "--n-val", "2", "--batch-size", "2", "--num-layers", "2",
      "--num-stacks", "1", "--residual-channels", "4", "--dilation-channels", "4", "--skip-channels", "4",
      "--max-steps", "1", "--no-progress-bar", "--out", "{out}", "--seconds", "0.001"]
WN_GEN = ["--generate", "--out", "{wn_run}", "--seconds", "0.001", "--n-samples", "2"]

def flag(recipe, base, extra, exc, match, id):
    return pytest.param(recipe, [*base, *extra], exc, match, id=f"{recipe}:{id}")


#: (recipe, argv, expected exception, match). ArgumentError is the parser's refusal of a flag.
RECIPE_CASES = [
    # -- transformer, training
    flag("transformer", TR, ["--max-steps", "0"], ValueError, "max_steps", "max-steps-0"),
    flag("transformer", TR, ["--max-steps", "-5"], ValueError, "max_steps", "max-steps-negative"),
    flag("transformer", TR, ["--max-epochs", "0"], ValueError, "max_epochs", "max-epochs-0"),
    flag("transformer", TR, ["--batch-size", "0"], ValueError, "batch_size", "batch-size-0"),
    flag("transformer", TR, ["--batch-size", "-4"], ValueError, "batch_size", "batch-size-negative"),
    flag("transformer", TR, ["--batch-size", "four"], ArgumentError, "--batch-size", "batch-size-word"),
    flag("transformer", TR, ["--seq-len", "1"], ValueError, "length", "seq-len-1"),
    flag("transformer", TR, ["--hidden-dim", "0"], ValueError, "hidden_dim", "hidden-dim-0"),
    flag("transformer", TR, ["--num-heads", "3"], ValueError, "num_heads", "heads-not-dividing"),
    flag("transformer", TR, ["--dropout", "1.5"], ValueError, "dropout", "dropout-1.5"),
    flag("transformer", TR, ["--val-fraction", "0"], ValueError, "--val-fraction", "val-fraction-0"),
    flag("transformer", TR, ["--val-fraction", "nan"], ArgumentError, "--val-fraction", "val-fraction-nan"),
    flag("transformer", TR, ["--text-files", "{missing}"], OSError, "missing", "text-files-missing"),
    flag("transformer", TR, ["--text-files", "{empty_txt}"], ValueError, "no text", "text-files-empty"),
    flag("transformer", TR, ["--tokenizer", "bpe", "--bpe-vocab", "10"], ValueError, "vocab_size", "bpe-vocab-10"),
    flag("transformer", TR, ["--tokenizer", "morse"], ArgumentError, "--tokenizer", "tokenizer-unknown"),
    flag("transformer", TR, ["--accumulate", "0"], ValueError, "accumulate_grad_batches", "accumulate-0"),
    flag("transformer", TR, ["--log-every", "0"], ValueError, "log_every_n_steps", "log-every-0"),
    flag("transformer", TR, ["--val-every", "0"], ValueError, "val_check_interval", "val-every-0"),
    flag("transformer", TR, ["--limit-val-batches", "-1"], ValueError, "limit_val_batches", "limit-val-negative"),
    flag("transformer", TR, ["--warmup-steps", "-1"], ValueError, "warmup_steps", "warmup-negative"),
    flag("transformer", TR, ["--clip-norm", "-1"], ValueError, "max_norm", "clip-norm-negative"),
    flag("transformer", TR, ["--ckpt-every", "0"], ValueError, "every_n_steps", "ckpt-every-0"),
    flag("transformer", TR, ["--seed", "-1"], ValueError, "seed", "seed-negative"),
    flag("transformer", TR, ["--precision", "fp8"], ArgumentError, "--precision", "precision-fp8"),
    flag("transformer", TR, ["--callback", "{missing}.py:Nope"], FileNotFoundError, "no file", "callback-missing"),
    flag("transformer", TR, ["--resume", "{missing}"], FileNotFoundError, "missing", "resume-missing"),
    flag("transformer", TR, ["--sample-every", "1", "--n-samples", "0"], ValueError, "n_samples", "n-samples-0"),
    flag("transformer", TR, ["--corpus-bytes", "0"], ValueError, "too short", "corpus-bytes-0"),
    flag("transformer", TR, ["--sample-every", "1", "--temperature", "-1"], ValueError, "temperature",
         "sampling-temperature-negative"),
    flag("transformer", TR, ["--sample-every", "1", "--top-p", "2"], ValueError, "top_p", "sampling-top-p-2"),
    flag("transformer", TR, ["--sample-every", "1", "--top-k", "0"], ValueError, "top_k", "sampling-top-k-0"),
    flag("transformer", TR, ["--sample-every", "1", "--max-length", "1"], ValueError, "max_length",
         "sampling-max-length-1"),
    flag("transformer", TR, ["--temperature", "-1"], ValueError, "temperature", "temperature-ignored"),
    flag("transformer", TR, ["--lr", "-1"], ValueError, "lr|learning_rate", "lr-negative"),
    flag("transformer", TR, ["--lr", "nan"], ArgumentError, "--lr expects a float; got 'nan'", "lr-nan"),
    flag("transformer", TR, ["--corpus-bytes", "-1"], ValueError, "corpus", "corpus-bytes-negative"),
    # -- transformer, sampling from a run
    flag("transformer", TR_GEN, ["--temperature", "-1"], ValueError, "temperature", "generate-temperature"),
    flag("transformer", TR_GEN, ["--top-p", "2"], ValueError, "top_p", "generate-top-p-2"),
    flag("transformer", TR_GEN, ["--top-k", "0"], ValueError, "top_k", "generate-top-k-0"),
    flag("transformer", TR_GEN, ["--top-k", "100000"], ValueError, "top_k", "generate-top-k-huge"),
    flag("transformer", TR_GEN, ["--repetition-penalty", "0"], ValueError, "repetition_penalty",
         "generate-penalty-0"),
    flag("transformer", TR_GEN, ["--max-length", "1"], ValueError, "max_length", "generate-max-length-1"),
    flag("transformer", TR_GEN, ["--max-length", "1000"], ValueError, "--max-length 1000 exceeds .* the largest "
         "allowed is", "generate-max-length-1000"),
    flag("transformer", TR_GEN, ["--n-samples", "0"], ValueError, "n_samples", "generate-n-samples-0"),
    flag("transformer", TR_GEN, ["--prompt", "x" * 40], ValueError, "--prompt is 40 tokens.*--truncate-prompt",
         "generate-prompt-too-long"),
    flag("transformer", TR_GEN, ["--beam-size", "-1"], ValueError, "beam_size", "generate-beam-negative"),
    flag("transformer", TR_GEN, ["--beam-size", "2", "--length-penalty", "nan"], ArgumentError, "--length-penalty",
         "generate-length-penalty-nan"),
    flag("transformer", TR_GEN, ["--checkpoint", "{missing}"], FileNotFoundError, "missing|checkpoint",
         "generate-checkpoint-missing"),
    flag("transformer", ["--generate", "--out", "{empty_dir}"], [], FileNotFoundError, "model_config.json",
         "generate-without-a-run"),
    flag("transformer", TR_GEN, ["--beam-size", "0"], ValueError, "beam_size", "generate-beam-0"),
    # -- pixelcnn, training
    flag("pixelcnn", PX, ["--mnist-dir", "{missing}"], FileNotFoundError, "t10k-images", "mnist-missing"),
    flag("pixelcnn", PX, ["--mnist-dir", "{mnist_garbage}"], ValueError, "not an IDX file", "mnist-garbage"),
    flag("pixelcnn", PX, ["--npz", "{npz_text}"], ValueError, "text.npz", "npz-is-text"),
    flag("pixelcnn", PX, ["--npz", "{missing}"], FileNotFoundError, "missing", "npz-missing"),
    flag("pixelcnn", PX, ["--image-folder", "{missing}"], FileNotFoundError, "missing", "image-folder-missing"),
    flag("pixelcnn", PX, ["--npz", "{npz_no_labels}"], ValueError, "labels", "npz-without-labels"),
    flag("pixelcnn", PX, ["--n-train", "0"], ValueError, "n_train", "n-train-0"),
    flag("pixelcnn", PX, ["--n-val", "-1"], ValueError, "n_val", "n-val-negative"),
    flag("pixelcnn", PX, ["--n-train", "100000"], ValueError, "exceeds", "n-train-too-many"),
    flag("pixelcnn", PX, ["--batch-size", "0"], ValueError, "batch_size", "batch-size-0"),
    flag("pixelcnn", PX, ["--hidden-channels", "1"], ValueError, "hidden_channels", "hidden-channels-1"),
    flag("pixelcnn", PX, ["--kernel-size", "4"], ValueError, "kernel_size", "kernel-size-even"),
    flag("pixelcnn", PX, ["--num-layers", "0"], ValueError, "num_layers", "num-layers-0"),
    flag("pixelcnn", PX, ["--output", "logistic_mixture", "--num-mixtures", "0"], ValueError, "num_mixtures",
         "num-mixtures-0"),
    flag("pixelcnn", PX, ["--n-samples", "0"], ValueError, "n_samples", "n-samples-0"),
    flag("pixelcnn", PX, ["--sample-every", "0"], ValueError, "every_n_steps", "sample-every-0"),
    flag("pixelcnn", PX, ["--max-steps", "0"], ValueError, "max_steps", "max-steps-0"),
    flag("pixelcnn", PX, ["--temperature", "-1"], ValueError, "temperature", "sampling-temperature-negative"),
    # -- pixelcnn, sampling from a run
    flag("pixelcnn", PX_GEN, ["--temperature", "-1"], ValueError, "temperature", "generate-temperature"),
    flag("pixelcnn", PX_GEN, ["--n-samples", "0"], ValueError, "n_samples", "generate-n-samples-0"),
    flag("pixelcnn", PX_GEN, ["--class-label", "3"], ValueError, "train one with --conditional",
         "class-label-unconditional"),
    flag("pixelcnn", [*PX_GEN, "--out", "{px_run_cond}"], ["--class-label", "10"], ValueError, "class_label",
         "class-label-10"),
    flag("pixelcnn", [*PX_GEN, "--out", "{px_run_cond}"], ["--class-label", "-1"], ValueError, "class_label",
         "class-label-negative"),
    flag("pixelcnn", PX_GEN, ["--inpaint", "--n-samples", "5000"], ValueError, "--n-samples 5000 is more than",
         "inpaint-n-samples"),
    flag("pixelcnn", PX_GEN, ["--inpaint", "--n-samples", "0"], ValueError, "n_samples|conditioning",
         "inpaint-n-samples-0"),
    # -- wavenet, training
    flag("wavenet", WN, ["--sample-rate", "0"], ValueError, "sample_rate", "sample-rate-0"),
    flag("wavenet", WN, ["--window", "0"], ValueError, "length", "window-0"),
    flag("wavenet", WN, ["--n-val", "0"], ValueError, "n_val", "n-val-0"),
    flag("wavenet", WN, ["--n-val", "1000"], ValueError, "n_val|n-val|exceeds", "n-val-too-many"),
    flag("wavenet", WN, ["--batch-size", "0"], ValueError, "batch_size", "batch-size-0"),
    flag("wavenet", WN, ["--num-layers", "3", "--num-stacks", "2"], ValueError, "num_stacks", "layers-not-stacking"),
    flag("wavenet", WN, ["--residual-channels", "0"], ValueError, "residual_channels", "residual-channels-0"),
    flag("wavenet", WN, ["--wav-folder", "{missing}"], ValueError, "does not exist", "wav-folder-missing"),
    flag("wavenet", WN, ["--wav-folder", "{wav_dir_text}"], ValueError, "cannot be read as audio",
         "wav-folder-text-wav"),
    flag("wavenet", WN, ["--wav-folder", "{wav_dir_nan}"], ValueError, "non-finite", "wav-folder-nan-wav"),
    flag("wavenet", WN, ["--conditional"], ValueError, "labels", "conditional-without-classes"),
    flag("wavenet", [*WN, "--wav-folder", ""], ["--fsdd-dir", "{missing}"], ValueError, "does not exist",
         "fsdd-missing"),
    flag("wavenet", [*WN, "--wav-folder", ""], ["--fsdd-dir", "{fsdd_bad}"], ValueError, "not named like",
         "fsdd-misnamed"),
    flag("wavenet", [*WN, "--wav-folder", ""], ["--fsdd-dir", "{fsdd}", "--val-speakers", "carol"], ValueError,
         "unknown speakers", "fsdd-unknown-speaker"),
    flag("wavenet", WN, ["--n-samples", "0"], ValueError, "n_samples", "n-samples-0"),
    flag("wavenet", WN, ["--sample-every", "0"], ValueError, "every_n_steps", "sample-every-0"),
    flag("wavenet", WN, ["--seconds", "0"], ValueError, "max_length|seconds", "sampling-seconds-0"),
    flag("wavenet", WN, ["--seconds", "-1"], ValueError, "max_length|seconds", "sampling-seconds-negative"),
    flag("wavenet", WN, ["--temperature", "-1"], ValueError, "temperature", "sampling-temperature-negative"),
    flag("wavenet", WN, ["--seconds", "nan"], ArgumentError, "--seconds", "sampling-seconds-nan"),
    # -- wavenet, sampling from a run
    flag("wavenet", WN_GEN, ["--seconds", "0"], ValueError, "max_length|seconds", "generate-seconds-0"),
    flag("wavenet", WN_GEN, ["--seconds", "-1"], ValueError, "max_length|seconds", "generate-seconds-negative"),
    flag("wavenet", WN_GEN, ["--temperature", "-1"], ValueError, "temperature", "generate-temperature"),
    flag("wavenet", WN_GEN, ["--n-samples", "0"], ValueError, "n_samples", "generate-n-samples-0"),
    flag("wavenet", WN_GEN, ["--digit", "3"], ValueError, "train one with --conditional", "digit-unconditional"),
    flag("wavenet", [*WN_GEN, "--out", "{wn_run_cond}"], ["--digit", "10"], ValueError, "class_label", "digit-10"),
    flag("wavenet", WN_GEN, ["--prompt-wav", "{missing}"], ValueError, "does not exist", "prompt-wav-missing"),
    flag("wavenet", WN_GEN, ["--prompt-wav", "{text_wav}"], ValueError, "cannot be read as audio",
         "prompt-wav-text"),
    flag("wavenet", WN_GEN, ["--prompt-wav", "{nan_wav}"], ValueError, "non-finite", "prompt-wav-nan"),
    flag("wavenet", WN_GEN, ["--seconds", "inf"], ArgumentError, "--seconds", "generate-seconds-inf"),
    flag("wavenet", WN_GEN, ["--seconds", "1e9"], ValueError, "max_length|seconds", "generate-seconds-1e9"),
]


@pytest.mark.parametrize("recipe,argv,exc,match", RECIPE_CASES)
def test_recipe_flags(recipe, argv, exc, match, files, tmp_path, monkeypatch, capsys):
    from artrainer import checkpointing

    real_load_weights = checkpointing.load_weights
    # The fake runs have no weights: a random init stands in (the checks come before any weight matters).
    monkeypatch.setattr(checkpointing, "load_weights",
                        lambda module, path: 0 if os.path.isdir(path) else real_load_weights(module, path))
    paths = {**vars(files), "out": str(tmp_path / "out")}
    argv = [arg.format(**paths) for arg in argv] + STOP_BEFORE_TRAINING
    monkeypatch.setenv("ARTRAINER_DEBUG", "1")  # the exception itself, not the one-line message
    with compiled_loops_tripped(), pytest.raises(exc) as raised:
        runpy.run_path(RECIPES[recipe])["main"](argv)
    assert re.search(match, str(raised.value)), f"{type(raised.value).__name__}: {raised.value}"


# =========================================================================== the counts
def _count(*tables) -> int:
    return sum(len(table) for table in tables)


#: hostile inputs tried per entry point (table rows; the fuzzers' examples are in FUZZ_EXAMPLES).
HOSTILE_INPUT_COUNTS = {
    "SamplingConfig.create / logits processors": _count(SAMPLING_CONFIG_CASES, ABSURD_SAMPLING_CASES,
                                                        PROCESSOR_CASES),
    "samplers (generate, beam_search, speculative, inpaint, ...)": _count(SAMPLER_CASES),
    "TransformerAR.__call__": _count(TRANSFORMER_CALL_CASES),
    "PixelCNN.__call__": _count(PIXELCNN_CALL_CASES, PIXELCNN_COND_CALL_CASES),
    "WaveNet.__call__": _count(WAVENET_CALL_CASES),
    "Trainer(...)": _count(TRAINER_CASES),
    "Trainer.fit / validate": _count(FIT_CASES, FIT_OTHER_CASES),
    "callbacks and generation metrics": _count(CALLBACK_CASES),
    "DataLoader": _count(LOADER_CASES),
    "audio data (artrainer.data.audio)": _count(AUDIO_CASES),
    "image data (artrainer.data.images)": _count(IMAGE_CASES),
    "text data (artrainer.data.text)": _count(TEXT_CASES),
    "recipes/train_transformer.py flags": sum(case.values[0] == "transformer" for case in RECIPE_CASES),
    "recipes/train_pixelcnn.py flags": sum(case.values[0] == "pixelcnn" for case in RECIPE_CASES),
    "recipes/train_wavenet.py flags": sum(case.values[0] == "wavenet" for case in RECIPE_CASES),
}
KNOWN_BUGS = sum(bool(case.marks) for table in (
    SAMPLING_CONFIG_CASES, ABSURD_SAMPLING_CASES, PROCESSOR_CASES, SAMPLER_CASES, TRANSFORMER_CALL_CASES,
    PIXELCNN_CALL_CASES, PIXELCNN_COND_CALL_CASES, WAVENET_CALL_CASES, TRAINER_CASES, FIT_CASES, FIT_OTHER_CASES,
    CALLBACK_CASES, LOADER_CASES, AUDIO_CASES, IMAGE_CASES, TEXT_CASES, RECIPE_CASES) for case in table)


def test_every_table_is_counted():
    assert sum(HOSTILE_INPUT_COUNTS.values()) == _count(
        SAMPLING_CONFIG_CASES, ABSURD_SAMPLING_CASES, PROCESSOR_CASES, SAMPLER_CASES, TRANSFORMER_CALL_CASES,
        PIXELCNN_CALL_CASES, PIXELCNN_COND_CALL_CASES, WAVENET_CALL_CASES, TRAINER_CASES, FIT_CASES,
        FIT_OTHER_CASES, CALLBACK_CASES, LOADER_CASES, AUDIO_CASES, IMAGE_CASES, TEXT_CASES, RECIPE_CASES)
    assert all(FUZZ_EXAMPLES.values())
