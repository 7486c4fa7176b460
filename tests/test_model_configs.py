"""The models' frozen configs: keyword arguments or config=, hparams, run files read back."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import runpy
import sys

import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from artrainer.models import (PixelCNN, PixelCNNConfig, PrefixTunedTransformer, PrefixTuningConfig,  # noqa: E402
                              TransformerAR, TransformerConfig, WaveNet, WaveNetConfig)

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "recipes"

#: (model, its config, tiny keyword arguments, an int argument)
MODELS = [
    pytest.param(TransformerAR, TransformerConfig,
                 dict(vocab_size=11, sequence_length=8, hidden_dim=8, num_layers=1, num_heads=2, dropout_rate=0.1,
                      position_encoding="rotary", pad_token_id=0, bos_token_id=1), "num_heads", id="transformer"),
    pytest.param(PrefixTunedTransformer, PrefixTuningConfig,
                 dict(vocab_size=11, sequence_length=8, hidden_dim=8, num_layers=1, num_heads=2, prefix_length=3),
                 "prefix_length", id="prefix-tuned"),
    pytest.param(PixelCNN, PixelCNNConfig,
                 dict(image_shape=(3, 3, 1), num_layers=1, hidden_channels=4, num_residual_blocks=0, kernel_size=3,
                      num_classes=2, gated=True), "hidden_channels", id="pixelcnn"),
    pytest.param(WaveNet, WaveNetConfig,
                 dict(num_layers=2, num_stacks=1, residual_channels=4, dilation_channels=4, skip_channels=4,
                      quantization_channels=16, num_classes=3, sample_rate=8000), "num_stacks", id="wavenet"),
]


@pytest.mark.parametrize("model_class, config_class, kwargs, int_argument", MODELS)
def test_config_round_trip(model_class, config_class, kwargs, int_argument):
    model = model_class(**kwargs, rngs=nnx.Rngs(0))
    assert type(model.config) is config_class
    assert model.hparams == dataclasses.asdict(model.config)
    assert {key: model.hparams[key] for key in kwargs} == {**kwargs, **{
        key: tuple(value) for key, value in kwargs.items() if isinstance(value, list)}}
    rebuilt = model_class(config=model.config, rngs=nnx.Rngs(0))
    assert rebuilt.hparams == model.hparams and rebuilt.config == model.config
    # JSON and back (what a run's model_config.json holds) gives an equal config.
    assert config_class(**json.loads(json.dumps(model.hparams))) == model.config
    # The fields are the model's attributes too.
    assert all(getattr(model, name) == value for name, value in model.hparams.items())


@pytest.mark.parametrize("model_class, config_class, kwargs, int_argument", MODELS)
def test_config_is_frozen_and_attributes_revalidate(model_class, config_class, kwargs, int_argument):
    model = model_class(**kwargs, rngs=nnx.Rngs(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(model.config, int_argument, 5)
    before = model.config
    with pytest.raises(ValueError, match=f"{int_argument} must be an int"):
        setattr(model, int_argument, -1)  # through the attribute: a validated replace, refused here
    assert model.config is before
    assert hash(model.config) == hash(config_class(**model.hparams))  # static, so usable as a jit key


@pytest.mark.parametrize("model_class, config_class, kwargs, int_argument", MODELS)
def test_a_bool_for_an_int_is_refused(model_class, config_class, kwargs, int_argument):
    with pytest.raises(TypeError, match=f"{int_argument} must be an int.*; got True \\(bool\\)"):
        model_class(**{**kwargs, int_argument: True}, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=f"{int_argument} must be an int.*; got np.False_ \\(bool\\)"):
        config_class(**{**kwargs, int_argument: np.False_})


@pytest.mark.parametrize("model_class, config_class, kwargs, int_argument", MODELS)
def test_config_or_keyword_arguments_not_both(model_class, config_class, kwargs, int_argument):
    config = config_class(**kwargs)
    with pytest.raises(TypeError, match=f"either as config= or as keyword arguments.*{int_argument}=7"):
        model_class(config=config, **{int_argument: 7}, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=f"config must be a {config_class.__name__}; got dict"):
        model_class(config=dict(kwargs), rngs=nnx.Rngs(0))


def test_numpy_values_are_stored_as_python_values():
    config = PixelCNNConfig(image_shape=[np.int64(3), 3, 1], num_layers=np.int32(1), hidden_channels=4,
                            num_residual_blocks=0, kernel_size=3)
    assert config.image_shape == (3, 3, 1) and type(config.image_shape[0]) is int
    assert type(config.num_layers) is int
    config = TransformerConfig(vocab_size=11, sequence_length=8, hidden_dim=8, num_layers=1, num_heads=2,
                               dropout_rate=np.float32(0.5))
    assert type(config.dropout_rate) is float and config.feedforward_dim == 32
    with pytest.raises(TypeError, match="TransformerAR needs vocab_size"):
        TransformerAR(sequence_length=8, hidden_dim=8, num_layers=1, num_heads=2, rngs=nnx.Rngs(0))


def test_prefix_tuning_from_pretrained_keeps_the_base_config():
    base = TransformerAR(11, 8, 8, 1, 2, dropout_rate=0.1, tie_embeddings=True, rngs=nnx.Rngs(0))
    tuned = PrefixTunedTransformer.from_pretrained(base, prefix_length=4, rngs=nnx.Rngs(1))
    assert tuned.config == PrefixTuningConfig(**base.hparams, prefix_length=4)
    assert tuned.hparams == {**base.hparams, "prefix_length": 4}
    again = PrefixTunedTransformer.from_pretrained(tuned, prefix_length=4, rngs=nnx.Rngs(1))
    assert again.config == tuned.config
    with pytest.raises(TypeError, match="base must be a TransformerAR; got PixelCNN"):
        PrefixTunedTransformer.from_pretrained(PixelCNN((3, 3, 1), 1, 4, 0, kernel_size=3, rngs=nnx.Rngs(0)),
                                               rngs=nnx.Rngs(1))


#: (recipe, model, what the recipe writes to model_config.json before the configs came: a
#: subset of the fields, plus the transformer recipe's own "tokenizer")
RUN_FILES = [
    pytest.param("train_transformer.py", TransformerAR,
                 {"tokenizer": "char", "vocab_size": 11, "sequence_length": 8, "hidden_dim": 8, "num_layers": 1,
                  "num_heads": 2, "dropout_rate": 0.0, "position_encoding": "learned", "pad_token_id": 0,
                  "bos_token_id": 1}, id="transformer"),
    pytest.param("train_pixelcnn.py", PixelCNN,
                 {"image_shape": [3, 3, 1], "num_layers": 1, "hidden_channels": 4, "num_residual_blocks": 0,
                  "kernel_size": 3, "gated": False, "output": "categorical", "num_mixtures": 5, "num_classes": None},
                 id="pixelcnn"),
    pytest.param("train_wavenet.py", WaveNet,
                 {"num_layers": 2, "num_stacks": 1, "residual_channels": 4, "dilation_channels": 4,
                  "skip_channels": 4, "num_classes": 10, "sample_rate": 8000}, id="wavenet"),
]


@pytest.mark.parametrize("recipe, model_class, saved", RUN_FILES)
def test_saved_run_files_restore_an_equal_config(recipe, model_class, saved, tmp_path):
    build_model = runpy.run_path(str(RECIPES / recipe))["build_model"]
    fields = {key: value for key, value in saved.items() if key != "tokenizer"}
    expected = model_class(**fields, rngs=nnx.Rngs(0)).config
    path = os.path.join(tmp_path, "model_config.json")
    with open(path, "w") as file:
        json.dump(saved, file)
    with open(path) as file:
        restored = build_model(json.load(file), 0)
    assert type(restored) is model_class and restored.config == expected
    # The full config written out (every field) reads back the same.
    with open(path, "w") as file:
        json.dump({**saved, **restored.hparams}, file)
    with open(path) as file:
        assert build_model(json.load(file), 0).config == expected
    # A key that is no field is an error naming it, not silently dropped.
    with pytest.raises(TypeError, match="hidden_size"):
        build_model({**saved, "hidden_size": 8}, 0)
