"""Checkpoints: resume equals an uninterrupted run, bit for bit, and best/last selection."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

from artrainer import Callback, Trainer
from artrainer.callbacks import EarlyStopping, LRWarmup, ModelCheckpoint
from artrainer.data import DataLoader
from tiny_lm import BigramLM, cyclic_sequences

VOCAB = 16


class Crash(Callback):
    """Simulates a crash: raises after step ``at`` finished (the step's checkpoint, if any, is done)."""

    uses_module = False

    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def run(tmp_path, max_steps, *, data, extra=(), ckpt_path=None, accumulate=1, max_epochs=None, val=None,
        every_n_steps=3):
    model = BigramLM(VOCAB, dropout_rate=0.3, rngs=nnx.Rngs(0))
    model.learning_rate = 5e-3
    callbacks = [ModelCheckpoint(every_n_steps=every_n_steps), LRWarmup(4, decay="cosine", decay_steps=40),
                 EarlyStopping("val/loss", patience=100), *extra]
    trainer = Trainer(max_steps=max_steps, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                      enable_progress_bar=False, default_root_dir=str(tmp_path), log_every_n_steps=4,
                      accumulate_grad_batches=accumulate, val_check_interval=5 if val is not None else None)
    trainer.fit(model, data(), val, ckpt_path=ckpt_path)
    return trainer, model


def snapshot(trainer):
    return jax.tree.map(np.asarray, {"model": nnx.state(trainer.module), "optimizer": nnx.state(trainer.optimizer)})


def assert_same_run(a, b):
    jax.tree.map(np.testing.assert_array_equal, snapshot(a), snapshot(b))
    assert (a.global_step, a.current_epoch) == (b.global_step, b.current_epoch)
    def timeless(metrics):
        return {k: v for k, v in metrics.items() if not k.startswith("throughput/")}

    assert timeless(a.callback_metrics) == timeless(b.callback_metrics)
    early_a = next(cb for cb in a.callbacks if isinstance(cb, EarlyStopping))
    early_b = next(cb for cb in b.callbacks if isinstance(cb, EarlyStopping))
    assert early_a.state_dict() == early_b.state_dict()


def shuffled_loader():
    return DataLoader({"sequences": cyclic_sequences(100, 12, VOCAB)}, 8, seed=7, prefetch=2)


def plain_batches():
    seqs = cyclic_sequences(56, 12, VOCAB, seed=2)
    return [{"sequences": seqs[i:i + 8]} for i in range(0, 56, 8)]


VAL = [{"sequences": cyclic_sequences(16, 12, VOCAB, seed=9)}]


@pytest.mark.parametrize("data, accumulate, crash_at", [
    (shuffled_loader, 1, 20),   # resumable loader, mid-epoch (12 batches per epoch)
    (plain_batches, 1, 16),     # plain list: fast-forwarded
    (shuffled_loader, 2, 11),   # gradient accumulation
    (shuffled_loader, 1, 13),   # checkpoint at step 12 = exactly an epoch end
])
def test_resume_after_crash_equals_uninterrupted(tmp_path, data, accumulate, crash_at):
    full, _ = run(tmp_path / "full", 26, data=data, accumulate=accumulate, val=VAL)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crashed", 26, data=data, accumulate=accumulate, val=VAL, extra=[Crash(crash_at)],
            every_n_steps=3 if crash_at != 13 else 12)
    resumed, _ = run(tmp_path / "crashed", 26, data=data, accumulate=accumulate, val=VAL, ckpt_path="last",
                     every_n_steps=3 if crash_at != 13 else 12)
    assert resumed.resumed_step == (crash_at // 3) * 3 if crash_at != 13 else 12
    assert_same_run(full, resumed)


def test_resume_at_epoch_end_with_max_epochs(tmp_path):
    full, _ = run(tmp_path / "full", None, data=shuffled_loader, max_epochs=3, every_n_steps=None)
    run(tmp_path / "part", None, data=shuffled_loader, max_epochs=1, every_n_steps=None)
    resumed, _ = run(tmp_path / "part", None, data=shuffled_loader, max_epochs=3, every_n_steps=None,
                     ckpt_path="last")
    assert resumed.resumed_step == 12 and resumed.global_step == 36
    assert_same_run(full, resumed)


def test_best_and_last_are_kept_and_best_is_restorable(tmp_path):
    scores = {2: 5.0, 4: 1.0, 6: 9.0, 8: 0.5, 10: 7.0}

    class FakeScore(Callback):
        uses_module = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step in scores:
                trainer.callback_metrics["score"] = scores[trainer.global_step]

    checkpoint = ModelCheckpoint(every_n_steps=2, monitor="score", save_top_k=2, async_save=False)
    trainer = Trainer(max_steps=10, callbacks=[FakeScore(), checkpoint], logger=False, enable_progress_bar=False,
                      default_root_dir=str(tmp_path))
    model = BigramLM(VOCAB, rngs=nnx.Rngs(0))
    trainer.fit(model, shuffled_loader())
    kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert kept == [4, 8, 10]
    assert checkpoint.best_step == 8 and checkpoint.best_model_score == 0.5

    again = Trainer(max_steps=10, callbacks=[ModelCheckpoint(every_n_steps=2, monitor="score", save_top_k=2)],
                    logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    again.fit(BigramLM(VOCAB, rngs=nnx.Rngs(1)), shuffled_loader(), ckpt_path="best")
    assert again.resumed_step == 8


def test_ckpt_path_to_a_step_directory(tmp_path):
    run(tmp_path, 9, data=shuffled_loader)
    resumed, _ = run(tmp_path / "other", 12, data=shuffled_loader, ckpt_path=tmp_path / "checkpoints" / "9")
    assert resumed.resumed_step == 9 and resumed.global_step == 12


def test_missing_last_starts_fresh_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="starting from scratch"):
        trainer, _ = run(tmp_path, 3, data=shuffled_loader, ckpt_path="last")
    assert trainer.resumed_step is None and trainer.global_step == 3


def test_bad_ckpt_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path, 3, data=shuffled_loader, ckpt_path=tmp_path / "nope")


def test_load_weights_for_inference(tmp_path):
    from artrainer.checkpointing import load_weights

    trainer, model = run(tmp_path, 6, data=shuffled_loader)
    fresh = BigramLM(VOCAB, dropout_rate=0.3, rngs=nnx.Rngs(42))
    assert load_weights(fresh, tmp_path / "checkpoints") == 6
    jax.tree.map(np.testing.assert_array_equal, nnx.state(fresh, nnx.Param), nnx.state(model, nnx.Param))


def test_resume_a_finished_run_for_more_epochs(tmp_path):
    """The final save (on_train_end, off the every-n grid) resumes at the next epoch's start."""
    full, _ = run(tmp_path / "full", None, data=shuffled_loader, max_epochs=3, every_n_steps=5, val=VAL)
    run(tmp_path / "part", None, data=shuffled_loader, max_epochs=2, every_n_steps=5, val=VAL)
    resumed, _ = run(tmp_path / "part", None, data=shuffled_loader, max_epochs=3, every_n_steps=5, val=VAL,
                     ckpt_path="last")
    assert resumed.resumed_step == 24 and resumed.global_step == 36
    assert_same_run(full, resumed)


def test_best_follows_the_monitor_mode(tmp_path):
    scores = {2: 0.5, 4: 0.9, 6: 0.7}

    class FakeAccuracy(Callback):
        uses_module = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            trainer.callback_metrics["acc"] = scores.get(trainer.global_step, 0.0)

    def trainer_with(max_steps):
        return Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                       callbacks=[FakeAccuracy(), ModelCheckpoint(every_n_steps=2, monitor="acc", mode="max",
                                                                  save_top_k=1, save_last=False)])

    trainer_with(6).fit(BigramLM(VOCAB, rngs=nnx.Rngs(0)), shuffled_loader())
    again = trainer_with(6)
    again.fit(BigramLM(VOCAB, rngs=nnx.Rngs(0)), shuffled_loader(), ckpt_path="best")
    assert again.resumed_step == 4


def test_without_monitor_only_the_latest_is_kept(tmp_path):
    trainer = Trainer(max_steps=9, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      callbacks=[ModelCheckpoint(every_n_steps=3, save_last=False)])
    trainer.fit(BigramLM(VOCAB, rngs=nnx.Rngs(0)), shuffled_loader())
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [9]
