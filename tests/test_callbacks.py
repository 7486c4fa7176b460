"""Built-in callbacks: schedules, clipping, early stopping, logging, sampling, progress."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from artrainer import Callback, DivergenceError, Trainer
from artrainer.callbacks import (EarlyStopping, GradientClipping, LearningRateMonitor, LRWarmup,
                                 ProgressBar, SampleGenerator, TerminateOnNaN, load_callback)
from artrainer.data import DataLoader
from artrainer.loggers import TensorBoardLogger
from tiny_lm import BigramLM, cyclic_sequences

VOCAB = 16


def loader(n=128, batch=16, seed=0):
    return DataLoader({"sequences": cyclic_sequences(n, 10, VOCAB, seed=seed)}, batch, seed=seed)


def sgd_bigram(lr=0.1):
    model = BigramLM(VOCAB, rngs=nnx.Rngs(0))
    model.learning_rate = lr
    model.configure_optimizers = lambda: optax.sgd(lr)
    return model


class CaptureUpdates(Callback):
    """Records the parameter change of each update: with SGD that is -lr_t * clipped grad."""

    uses_module = False

    def __init__(self):
        self.params = []

    def on_train_start(self, trainer, module):
        self.params.append(jax.tree.map(np.asarray, nnx.filter_state(trainer.model_state, nnx.Param)))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.params.append(jax.tree.map(np.asarray, nnx.filter_state(trainer.model_state, nnx.Param)))

    def deltas(self):
        flat = [np.concatenate([x.ravel() for x in jax.tree.leaves(p)]) for p in self.params]
        return [b - a for a, b in zip(flat, flat[1:])]


def fit(tmp_path, model, callbacks, data=None, **kwargs):
    kwargs.setdefault("max_steps", 6)
    trainer = Trainer(callbacks=callbacks, logger=kwargs.pop("logger", False), enable_progress_bar=False,
                      default_root_dir=str(tmp_path), **kwargs)
    trainer.fit(model, data if data is not None else loader())
    return trainer


@pytest.mark.parametrize("decay", ["constant", "cosine", "linear", "inverse_sqrt"])
def test_lr_warmup_schedule_shapes(decay):
    warmup, total, floor = 4, 20, 0.1
    schedule = LRWarmup(warmup, decay=decay, decay_steps=total, min_ratio=floor)
    for step in range(total + 3):
        n = step + 1  # the update's 1-based number
        if n < warmup:
            expected = n / warmup
        elif decay == "constant":
            expected = 1.0
        elif decay == "inverse_sqrt":
            expected = math.sqrt(warmup / n)
        else:
            progress = min(max((n - warmup) / (total - warmup), 0.0), 1.0)
            shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
            expected = floor + (1 - floor) * shape
        assert float(schedule.lr_scale(step)) == pytest.approx(expected, rel=1e-6), step


def test_lr_warmup_scales_the_real_updates(tmp_path):
    """Under SGD an update is lr_t * grad: its ratio to an unscheduled run is lr_t / lr."""
    plain, scheduled = CaptureUpdates(), CaptureUpdates()
    data = [{"sequences": cyclic_sequences(16, 10, VOCAB)}] * 6
    fit(tmp_path, sgd_bigram(1e-3), [plain], data=data)
    warmup = LRWarmup(3, decay="linear", decay_steps=6)
    trainer = fit(tmp_path, sgd_bigram(1e-3), [scheduled, warmup, LearningRateMonitor()], data=data)
    for step, (a, b) in enumerate(zip(plain.deltas(), scheduled.deltas())):
        ratio = np.dot(a, b) / np.dot(a, a)  # gradients differ slightly as params diverge
        assert ratio == pytest.approx(float(warmup.lr_scale(step)), rel=0.05, abs=1e-4)
    assert trainer.current_lr() == pytest.approx(1e-3 * float(warmup.lr_scale(5)))


def test_gradient_clipping_by_norm_bounds_each_update(tmp_path):
    capture = CaptureUpdates()
    lr, limit = 1.0, 1e-3
    fit(tmp_path, sgd_bigram(lr), [capture, GradientClipping(limit)])
    norms = [np.linalg.norm(d) for d in capture.deltas()]
    assert max(norms) == pytest.approx(lr * limit, rel=1e-3)


def test_gradient_clipping_by_value(tmp_path):
    capture = CaptureUpdates()
    fit(tmp_path, sgd_bigram(1.0), [capture, GradientClipping(max_value=1e-4)])
    largest = max(np.abs(d).max() for d in capture.deltas())
    assert largest == pytest.approx(1e-4, rel=1e-3)  # float32 rounding of param - param


@pytest.mark.parametrize("kwargs", [{}, {"max_norm": 1.0, "max_value": 1.0}, {"max_norm": -1.0}])
def test_gradient_clipping_arguments(kwargs):
    with pytest.raises(ValueError, match="max_norm|max_value"):
        GradientClipping(**kwargs)


def test_early_stopping_patience(tmp_path):
    scores = iter([3.0, 2.0, 2.5, 2.1, 2.05, 1.0])

    class Score(Callback):
        uses_module = False

        def on_validation_end(self, trainer, module):
            trainer.callback_metrics["val/score"] = next(scores)

    early = EarlyStopping("val/score", patience=3)
    val = [{"sequences": cyclic_sequences(8, 10, VOCAB)}]
    trainer = Trainer(max_steps=50, val_check_interval=2, callbacks=[Score(), early], logger=False,
                      enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(sgd_bigram(), loader(), val)
    # best 2.0 at the 2nd validation; 3 more without improvement stop at the 5th (step 10)
    assert trainer.global_step == 10
    assert early.best_score == 2.0 and early.wait_count == 3
    assert "did not improve" in early.stopping_reason


def test_early_stopping_strict_unknown_metric(tmp_path):
    trainer = Trainer(max_steps=4, val_check_interval=2, callbacks=[EarlyStopping("val/nope")], logger=False,
                      enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="val/nope.*available"):
        trainer.fit(sgd_bigram(), loader(), [{"sequences": cyclic_sequences(8, 10, VOCAB)}])


def read_scalars(log_dir):
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events, {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_metrics_reach_tensorboard(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    val = [{"sequences": cyclic_sequences(16, 10, VOCAB, seed=4)}]
    trainer = Trainer(max_steps=8, log_every_n_steps=4, val_check_interval=4, logger=logger,
                      callbacks=[LRWarmup(2), LearningRateMonitor()], enable_progress_bar=False,
                      default_root_dir=str(tmp_path))
    trainer.fit(sgd_bigram(0.05), loader(), val)
    logger.close()
    _, scalars = read_scalars(logger.log_dir)
    for tag in ("train/loss", "train/perplexity", "train/accuracy", "grad_norm", "throughput/items_per_sec",
                "val/loss", "val/perplexity", "val/accuracy"):
        assert [s for s, _ in scalars[tag]] == [4, 8], tag
    for tag in ("train/loss", "val/loss", "val/accuracy"):
        assert scalars[tag][-1][1] == pytest.approx(trainer.callback_metrics[tag], rel=1e-6)
    assert [s for s, _ in scalars["lr"]] == list(range(1, 9))  # LearningRateMonitor: every step
    assert scalars["lr"][0][1] == pytest.approx(0.05 * 0.5)


def test_sample_generator_logs_reproducible_samples(tmp_path):
    def run(directory):
        logger = TensorBoardLogger(str(directory), name="tb")
        sampler = SampleGenerator(every_n_steps=3, n_samples=2, generate_kwargs={"max_length": 6})
        Trainer(max_steps=6, logger=logger, callbacks=[sampler], enable_progress_bar=False,
                default_root_dir=str(directory)).fit(sgd_bigram(), loader())
        logger.close()
        return sampler, logger

    first, logger = run(tmp_path / "a")
    second, _ = run(tmp_path / "b")
    np.testing.assert_array_equal(first.last_samples, second.last_samples)
    assert first.last_samples.shape == (2, 6) and first.last_samples.dtype == jnp.int32
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("samples/text_summary")] == [3, 6]


def test_progress_bar_counts_steps(tmp_path):
    bar = ProgressBar()
    seen = []

    class Peek(Callback):
        uses_module = False

        def on_train_end(self, trainer, module):
            seen.append((bar.bar.n, bar.bar.total))

    Trainer(max_epochs=2, callbacks=[Peek(), bar], logger=False, default_root_dir=str(tmp_path)).fit(
        sgd_bigram(), loader(n=64))
    assert seen == [(8, 8)]
    assert bar.bar is None  # closed at the end


def test_terminate_on_nan_every_step(tmp_path):
    model = sgd_bigram(1e30)  # explodes within a few steps
    with pytest.raises(DivergenceError, match=r"non-finite (loss|grad_norm) at step \d"):
        fit(tmp_path, model, [TerminateOnNaN(check_every_n_steps=1)], max_steps=50, log_every_n_steps=1000)


def test_duplicate_state_keys_are_refused():
    with pytest.raises(ValueError, match="state_key"):
        Trainer(callbacks=[EarlyStopping("val/loss"), EarlyStopping("val/loss")], logger=False)


def test_load_callback_errors(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text("from artrainer import Callback\nclass Mine(Callback):\n"
                      "    def __init__(self, k=1):\n        self.k = k\nclass NotOne:\n    pass\n")
    assert load_callback(f"{source}:Mine:{{\"k\": 3}}").k == 3
    with pytest.raises(ValueError, match="path/file.py:ClassName"):
        load_callback("mine:Mine")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_callback(f"{tmp_path}/absent.py:Mine")
    with pytest.raises(TypeError, match="not an artrainer.Callback"):
        load_callback(f"{source}:NotOne")
    with pytest.raises(ValueError, match="JSON"):
        load_callback(f"{source}:Mine:{{k}}")


def test_sample_generator_logs_quality_metrics(tmp_path):
    from artrainer.metrics import generation_quality

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    reference = BigramLM(VOCAB, rngs=nnx.Rngs(5))
    sampler = SampleGenerator(every_n_steps=4, n_samples=8, generate_kwargs={"max_length": 10},
                              quality_metrics=True, reference_model=reference)
    trainer = Trainer(max_steps=4, logger=logger, callbacks=[sampler], enable_progress_bar=False,
                      default_root_dir=str(tmp_path))
    trainer.fit(sgd_bigram(), loader())
    logger.close()
    expected = generation_quality(sampler.last_samples, reference_model=reference)
    assert set(expected) == {"distinct_1", "distinct_2", "distinct_3", "repetition_rate", "fluency_perplexity"}
    for name, value in expected.items():
        assert trainer.callback_metrics[f"samples/{name}"] == pytest.approx(value)
    _, scalars = read_scalars(logger.log_dir)
    assert scalars["samples/distinct_2"] == [(4, pytest.approx(expected["distinct_2"]))]
