"""Trainer behaviour: the loop, hooks, validation, accumulation, precision and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from artrainer import Callback, DivergenceError, Trainer
from artrainer.callbacks import ModelCheckpoint
from artrainer.data import DataLoader
from artrainer.metrics import categorical_metrics
from tiny_lm import BigramLM, cyclic_sequences

VOCAB = 16


def make_trainer(tmp_path, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    return Trainer(default_root_dir=str(tmp_path), **kwargs)


def loader(n=128, batch=16, seed=0, **kwargs):
    return DataLoader({"sequences": cyclic_sequences(n, 10, VOCAB, seed=seed)}, batch, seed=seed, **kwargs)


def bigram(seed=0, **kwargs):
    model = BigramLM(VOCAB, rngs=nnx.Rngs(seed), **kwargs)
    model.learning_rate = 1e-2
    return model


class Recorder(Callback):
    """Records every hook call (name, global_step) in order."""

    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name.startswith(("on_", "setup", "teardown")) and callable(attr):
            def record(trainer, module, *args):
                self.calls.append((name, trainer.global_step))
                return attr(trainer, module, *args)
            return record
        return attr


# Hooks are dispatched only when overridden; the recorder overrides all of them.
for _hook in ("setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
              "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
              "on_validation_start", "on_validation_end", "on_exception", "on_save_checkpoint",
              "on_load_checkpoint"):
    setattr(Recorder, _hook, lambda self, trainer, module, *args: None)


def test_fit_learns_and_params_change(tmp_path):
    model = bigram()
    before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    trainer = make_trainer(tmp_path, max_steps=80, log_every_n_steps=20)
    trainer.fit(model, loader())
    assert trainer.global_step == 80
    assert trainer.callback_metrics["train/accuracy"] > 0.9
    after = nnx.state(model, nnx.Param)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    assert all(jax.tree.leaves(changed)), "the live module must hold the trained weights after fit"


def test_max_epochs_counts_batches(tmp_path):
    data = loader(n=96, batch=16)  # 6 batches per epoch
    trainer = make_trainer(tmp_path, max_epochs=3)
    trainer.fit(bigram(), data)
    assert trainer.global_step == 18
    assert trainer.current_epoch == 3


def test_hook_order(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[recorder])
    trainer.fit(bigram(), loader(n=32, batch=16), loader(n=32, batch=16, seed=1))
    names = [name for name, _ in recorder.calls]
    assert names == [
        "setup", "on_fit_start", "on_train_start", "on_train_epoch_start",
        "on_train_batch_start", "on_train_batch_end", "on_train_batch_start", "on_train_batch_end",
        "on_validation_start", "on_validation_end", "on_train_epoch_end", "on_train_end",
        "on_fit_end", "teardown"]
    steps = dict((n, s) for n, s in recorder.calls if n.startswith("on_train_batch"))
    assert steps["on_train_batch_end"] == 2  # global_step is incremented before batch_end


def test_monitoring_callbacks_run_last(tmp_path):
    order = []

    class Tag(Callback):
        def __init__(self, name, monitor=False):
            self.name, self.is_monitor = name, monitor

        @property
        def state_key(self):
            return self.name

        def on_train_end(self, trainer, module):
            order.append(self.name)

    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[Tag("monitor", True), Tag("a"), Tag("b")])
    trainer.fit(bigram(), loader())
    assert order == ["a", "b", "monitor"]


def test_validation_is_exact_over_padded_batches(tmp_path):
    """val metrics are element-weighted over all real rows, ignoring the padded ones."""
    model = bigram()
    seqs = cyclic_sequences(37, 10, VOCAB, seed=3)
    metrics = make_trainer(tmp_path).validate(
        model, DataLoader({"sequences": seqs}, 16, shuffle=False, last_batch="pad"))
    logits = np.asarray(model(jnp.asarray(seqs))["logits"], np.float64)[:, :-1]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, seqs[:, 1:, None], -1).mean()
    accuracy = (logits.argmax(-1) == seqs[:, 1:]).mean()
    assert metrics["val/loss"] == pytest.approx(nll, rel=1e-5)
    assert metrics["val/perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert metrics["val/accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_val_check_interval_and_limit(tmp_path):
    recorder = Recorder()
    val = loader(n=64, batch=16, seed=1)
    seen = []

    class CountBatches(Callback):
        def on_validation_end(self, trainer, module):
            seen.append(trainer.global_step)

    trainer = make_trainer(tmp_path, max_steps=12, val_check_interval=5, limit_val_batches=2,
                           callbacks=[recorder, CountBatches()])
    trainer.fit(bigram(), loader(n=256), val)
    assert seen == [5, 10]
    fraction = make_trainer(tmp_path, max_epochs=1, val_check_interval=0.5, callbacks=[CountBatches()])
    seen.clear()
    fraction.fit(bigram(), loader(n=128), val)  # 8 steps per epoch: validate after 4 and 8
    assert seen == [4, 8]


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """Two micro-batches of 8 accumulate to the same update as one batch of 16 (SGD)."""
    seqs = cyclic_sequences(64, 10, VOCAB, seed=5)
    results = []
    for batch, accumulate in ((16, 1), (8, 2)):
        model = bigram()
        model.configure_optimizers = lambda: optax.sgd(0.5)
        data = DataLoader({"sequences": seqs}, batch, shuffle=False)
        make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=accumulate).fit(model, data)
        results.append(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), *results)


def test_bf16_keeps_fp32_params_and_learns(tmp_path):
    compute_dtypes = []

    class Spy(BigramLM):
        def loss_fn(self, batch, outputs, *, rngs=None):
            compute_dtypes.append(outputs["logits"].dtype)  # recorded while tracing
            return super().loss_fn(batch, outputs, rngs=rngs)

    model = Spy(VOCAB, rngs=nnx.Rngs(0))
    model.learning_rate = 1e-2
    trainer = make_trainer(tmp_path, max_steps=80, precision="bf16", log_every_n_steps=20)
    trainer.fit(model, loader())
    assert compute_dtypes and set(compute_dtypes) == {jnp.dtype(jnp.bfloat16)}
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    float_leaves = [x for x in jax.tree.leaves(trainer.optimizer.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert float_leaves and all(x.dtype == jnp.float32 for x in float_leaves)
    assert trainer.callback_metrics["train/accuracy"] > 0.9


def test_metrics_stay_on_device_between_log_steps(tmp_path):
    """Callbacks receive device arrays; callback_metrics refresh only on log steps."""
    seen = []

    class Watch(Callback):
        uses_module = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, trainer.is_log_step, isinstance(outputs["loss"], jax.Array),
                         "train/loss" in trainer.callback_metrics))

    make_trainer(tmp_path, max_steps=6, log_every_n_steps=3, callbacks=[Watch()]).fit(bigram(), loader())
    assert [s[1] for s in seen] == [False, False, True, False, False, True]
    assert all(s[2] for s in seen)
    assert [s[3] for s in seen] == [False, False, True, True, True, True]


def test_train_metrics_average_the_log_interval(tmp_path):
    losses = []

    class Collect(Callback):
        uses_module = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = make_trainer(tmp_path, max_steps=4, log_every_n_steps=4, callbacks=[Collect()])
    trainer.fit(bigram(), loader())
    assert trainer.callback_metrics["train/loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_dropout_uses_fresh_keys_each_step(tmp_path):
    """With dropout the step key changes per update: identical batches give different losses."""
    losses = []

    class Collect(Callback):
        uses_module = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    model = bigram(dropout_rate=0.5)
    model.configure_optimizers = lambda: optax.sgd(0.0)
    batch = {"sequences": cyclic_sequences(16, 10, VOCAB)}
    make_trainer(tmp_path, max_steps=3, callbacks=[Collect()]).fit(model, [batch])
    assert len(set(losses)) == 3


# -- bad input ------------------------------------------------------------------------

def test_unknown_trainer_argument_suggests_the_right_one(tmp_path):
    with pytest.raises(TypeError, match="max_step.*did you mean 'max_steps'"):
        Trainer(max_step=10)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_steps": 0}, r"max_steps must be an int >= 1 or None; got 0 \(int\)"),
    ({"max_epochs": -1}, r"max_epochs must be an int >= 1 or None; got -1"),
    ({"precision": "fp16"}, "precision must be one of 'fp32', 'bf16'; got 'fp16'"),
    ({"log_every_n_steps": 0}, "log_every_n_steps must be an int >= 1; got 0"),
    ({"accumulate_grad_batches": 1.5}, r"accumulate_grad_batches must be an int >= 1; got 1.5 \(float\)"),
    ({"val_check_interval": 1.5}, r"val_check_interval must be a number in \(0.0, 1.0\] \(a fraction\)"),
    ({"limit_val_batches": -2}, r"limit_val_batches must be an int >= 0 \(a count\) or None; got -2"),
    ({"callbacks": [object()]}, "callbacks must be artrainer.Callback"),
])
def test_bad_trainer_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Trainer(logger=False, **kwargs)


def test_fit_without_a_stopping_rule(tmp_path):
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        make_trainer(tmp_path).fit(bigram(), loader())


def test_batches_missing_the_input_key(tmp_path):
    with pytest.raises(ValueError, match="input_key 'sequences'.*'tokens'"):
        make_trainer(tmp_path, max_steps=1).fit(bigram(), [{"tokens": np.zeros((4, 8), np.int32)}])


def test_changing_batch_shapes(tmp_path):
    batches = [{"sequences": np.zeros((4, 8), np.int32)}, {"sequences": np.zeros((3, 8), np.int32)}]
    with pytest.raises(ValueError, match=r"batch\['sequences'\] has shape \(3, 8\).*\(4, 8\)"):
        make_trainer(tmp_path, max_steps=2).fit(bigram(), batches)


def test_loss_fn_without_loss_key(tmp_path):
    class NoLoss(BigramLM):
        def loss_fn(self, batch, outputs, *, rngs=None):
            metrics = super().loss_fn(batch, outputs)
            metrics.pop("loss")
            return metrics

        def training_step(self, batch, rngs):
            outputs = self(batch["sequences"])
            metrics = self.loss_fn(batch, outputs)
            return metrics["nll_loss"], metrics

    with pytest.raises(ValueError, match="must return a dict with a 'loss' key"):
        make_trainer(tmp_path, max_steps=1).fit(NoLoss(VOCAB, rngs=nnx.Rngs(0)), loader())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """Step 6 poisons the weights: the run stops naming the step; 'last' stays at step 4."""

    class Poison(BigramLM):
        def loss_fn(self, batch, outputs, *, rngs=None):
            metrics = categorical_metrics(outputs["logits"][:, :-1], batch["sequences"][:, 1:])
            poison = jnp.where(batch["poison"][0] > 0, jnp.nan, 0.0)
            metrics["loss"] = metrics["loss"] + poison
            return metrics

    batches = [{"sequences": cyclic_sequences(8, 10, VOCAB, seed=i),
                "poison": np.full((8,), float(i == 5), np.float32)} for i in range(10)]
    checkpoints = ModelCheckpoint(every_n_steps=2)
    trainer = make_trainer(tmp_path, max_steps=10, log_every_n_steps=100, callbacks=[checkpoints])
    with pytest.raises(DivergenceError, match="non-finite loss at step 6"):
        trainer.fit(Poison(VOCAB, rngs=nnx.Rngs(0)), batches)
    assert checkpoints.last_saved_step == 4
    resumed = make_trainer(tmp_path, max_steps=4, callbacks=[ModelCheckpoint(every_n_steps=2)])
    resumed.fit(Poison(VOCAB, rngs=nnx.Rngs(1)), batches, ckpt_path="last")
    assert resumed.global_step == 4
    finite = [bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(resumed.model_state)]
    assert all(finite)


class Frozen(nnx.Param):
    """Marks weights the optimizer must not touch."""


def test_trainable_filter_freezes_the_rest(tmp_path):
    """Only `module.trainable` variables change; frozen ones stay fp32 and bit-identical, even in bf16."""

    class HalfFrozen(BigramLM):
        trainable = nnx.All(nnx.Param, nnx.Not(Frozen))

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.embed.embedding = Frozen(self.embed.embedding[...])

    model = HalfFrozen(VOCAB, rngs=nnx.Rngs(0))
    frozen_before = np.array(model.embed.embedding[...])
    out_before = np.array(model.out.kernel[...])
    trainer = make_trainer(tmp_path, max_steps=5, precision="bf16")
    trainer.fit(model, loader())
    np.testing.assert_array_equal(model.embed.embedding[...], frozen_before)
    assert model.embed.embedding[...].dtype == jnp.float32
    assert not np.array_equal(model.out.kernel[...], out_before)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(trainer.optimizer.opt_state)]
    assert any("out" in p for p in paths) and not any("embed" in p for p in paths)


def test_validate_after_fit_reads_the_modules_current_weights(tmp_path):
    model = bigram()
    trainer = make_trainer(tmp_path, max_steps=20)
    val = loader(n=32, seed=4)
    trainer.fit(model, loader())
    trained = trainer.validate(model, val)["val/loss"]
    model.out.kernel[...] = model.out.kernel[...] * 0.0  # the user edits the weights after fit:
    model.out.bias[...] = model.out.bias[...] * 0.0    # uniform predictions
    assert trainer.validate(model, val)["val/loss"] == pytest.approx(math.log(VOCAB), rel=1e-3)
    assert trained < math.log(VOCAB) - 0.3


def test_every_validation_sees_the_same_batches(tmp_path):
    """A limited pass over a resumable loader puts it back: validations stay comparable."""
    model = bigram()
    val = DataLoader({"sequences": cyclic_sequences(96, 10, VOCAB, seed=8)}, 16, shuffle=False)
    trainer = make_trainer(tmp_path, limit_val_batches=2)
    assert trainer.validate(model, val) == trainer.validate(model, val)
    assert val.state_dict()["batches_yielded"] == 0


def test_stopping_on_an_epochs_last_step_still_validates_it(tmp_path):
    seen = []

    class Watch(Callback):
        uses_module = False

        def on_validation_end(self, trainer, module):
            seen.append(trainer.global_step)

    trainer = make_trainer(tmp_path, max_steps=8, callbacks=[Watch()])  # 4 steps per epoch
    trainer.fit(bigram(), loader(n=64), loader(n=32, seed=2))
    assert seen == [4, 8] and trainer.current_epoch == 2
