"""Nothing lost: signals, damaged and foreign checkpoints, diverging steps, failing saves,
and loading that never unpickles."""

from __future__ import annotations

import os
import pickle
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from artrainer import Callback, DivergenceError, Trainer
from artrainer.callbacks import ModelCheckpoint, TerminateOnNaN
from artrainer.checkpointing import CheckpointStore, CorruptCheckpointError, IncompatibleCheckpointError
from artrainer.data import DataLoader
from artrainer.data.text import CharTokenizer
from tiny_lm import BigramLM, cyclic_sequences

STEPS = 12


def loader():
    return DataLoader({"sequences": cyclic_sequences(64, 8, 16)}, 8, seed=0)


def trainer(tmp_path, *callbacks, max_steps=STEPS, **kwargs):
    return Trainer(max_steps=max_steps, callbacks=list(callbacks), logger=False, enable_progress_bar=False,
                   default_root_dir=str(tmp_path), **kwargs)


def params(module):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(nnx.state(module, nnx.Param)))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    module = BigramLM(rngs=nnx.Rngs(0))
    trainer(tmp_path_factory.mktemp("reference")).fit(module, loader())
    return params(module)


@pytest.fixture(autouse=True)
def default_signal_handlers():
    """The handlers an interactive run has, whatever started pytest (a background job ignores SIGINT)."""
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class SendSignal(Callback):
    """Signal this process at the end of step ``at_step`` (``times`` times in a row)."""

    def __init__(self, at_step, sig=signal.SIGINT, times=1):
        self.at_step, self.sig, self.times = at_step, sig, times

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.sig)


# -------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig, with_checkpoint_callback", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_first_signal_checkpoints_the_current_step_and_returns(tmp_path, capsys, uninterrupted, sig,
                                                               with_checkpoint_callback):
    callbacks = [ModelCheckpoint(every_n_steps=100)] if with_checkpoint_callback else []
    run = trainer(tmp_path, *callbacks, SendSignal(5, sig))
    run.fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    assert run.interrupted == sig and run.global_step == 5
    directory = os.path.join(str(tmp_path), "checkpoints")
    assert CheckpointStore(directory, read_only=True).steps() == [5]
    message = capsys.readouterr().err
    assert f"stopped by {sig.name} after step 5" in message and os.path.join(directory, "5") in message
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    resumed = BigramLM(rngs=nnx.Rngs(0))
    trainer(tmp_path, *([ModelCheckpoint(every_n_steps=100)] if with_checkpoint_callback else [])).fit(
        resumed, loader(), ckpt_path="last")
    for a, b in zip(params(resumed), uninterrupted):
        np.testing.assert_array_equal(a, b)


def test_first_signal_flushes_the_logs_and_closes_the_progress_bar(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from artrainer.callbacks import ProgressBar
    bar = ProgressBar()
    run = Trainer(max_steps=STEPS, callbacks=[bar, SendSignal(5)], log_every_n_steps=1,
                  default_root_dir=str(tmp_path))
    run.fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    assert run.interrupted == signal.SIGINT and bar.bar is None
    events = EventAccumulator(run.logger.log_dir)
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4, 5]


def test_an_ignored_sigint_stays_ignored(tmp_path):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run = trainer(tmp_path, SendSignal(5))
    run.fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    assert run.interrupted is None and run.global_step == STEPS
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_second_sigint_stops_at_once_and_leaves_only_complete_checkpoints(tmp_path):
    run = trainer(tmp_path, ModelCheckpoint(every_n_steps=2), SendSignal(5, times=2))
    with pytest.raises(KeyboardInterrupt):
        run.fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    store = CheckpointStore(os.path.join(str(tmp_path), "checkpoints"), read_only=True)
    assert store.steps() == [4]
    state = trainer(tmp_path)
    resumed = BigramLM(rngs=nnx.Rngs(0))
    state.fit(resumed, loader(), ckpt_path="last")
    assert state.resumed_step == 4


# ------------------------------------------------------------ damaged / foreign checkpoints
def damage(step_dir, how):
    data = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
            for name in names if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep]
    assert data, f"no array data files under {step_dir}"
    for path in data:
        if how == "delete":
            os.remove(path)
        else:
            blob = bytearray(open(path, "rb").read())
            for index in range(len(blob) // 2, len(blob), 7):
                blob[index] ^= 0x5A
            open(path, "wb").write(bytes(blob))


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted, how):
    directory = os.path.join(str(tmp_path), "checkpoints")
    trainer(tmp_path, ModelCheckpoint(every_n_steps=2, keep_last_n=2), max_steps=6).fit(
        BigramLM(rngs=nnx.Rngs(0)), loader())
    assert CheckpointStore(directory, read_only=True).steps() == [4, 6]
    damage(os.path.join(directory, "6"), how)

    with pytest.raises(CorruptCheckpointError, match=os.path.join(directory, "6")):
        trainer(tmp_path).fit(BigramLM(rngs=nnx.Rngs(0)), loader(), ckpt_path=os.path.join(directory, "6"))
    run, resumed = trainer(tmp_path, ModelCheckpoint(every_n_steps=2, keep_last_n=2)), BigramLM(rngs=nnx.Rngs(0))
    with pytest.warns(UserWarning, match=r"checkpoint .*6 .*falling back to the previous checkpoint"):
        run.fit(resumed, loader(), ckpt_path="last")
    assert run.resumed_step == 4
    for a, b in zip(params(resumed), uninterrupted):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_configuration_is_refused_with_the_shapes(tmp_path):
    trainer(tmp_path, ModelCheckpoint(every_n_steps=2), max_steps=2).fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    with pytest.raises(IncompatibleCheckpointError, match=r"model/embed/embedding/value: checkpoint \(16, 8\) "
                                                          r"vs model \(16, 12\)"):
        trainer(tmp_path).fit(BigramLM(hidden=12, rngs=nnx.Rngs(0)), loader(), ckpt_path="last")


# ----------------------------------------------------------------------- divergence
class Poisoned(BigramLM):
    """Its loss is NaN on batches whose 'poison' entry is NaN."""

    def loss_fn(self, batch, outputs, *, rngs=None):
        metrics = super().loss_fn(batch, outputs, rngs=rngs)
        return {**metrics, "loss": metrics["loss"] + batch["poison"][0]}


def batches(poisoned_steps, n=10):
    good = cyclic_sequences(8 * n, 8, 16)
    return [{"sequences": good[8 * i: 8 * i + 8],
             "poison": np.full((8,), np.nan if i in poisoned_steps else 0.0, np.float32)} for i in range(n)]


def test_skip_bad_steps_skips_exactly_the_bad_updates(tmp_path):
    data = batches({2, 3, 7})
    run, module = trainer(tmp_path, TerminateOnNaN(skip_bad_steps=True), max_steps=10), Poisoned(rngs=nnx.Rngs(0))
    run.fit(module, data)
    assert run.global_step == 10 and run.skipped_steps == 3
    clean = Poisoned(rngs=nnx.Rngs(0))
    trainer(tmp_path, max_steps=7).fit(clean, [b for i, b in enumerate(data) if i not in {2, 3, 7}])
    for a, b in zip(params(module), params(clean)):
        np.testing.assert_array_equal(a, b)


def test_nan_stops_the_run_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    directory = os.path.join(str(tmp_path), "checkpoints")
    with pytest.raises(DivergenceError, match="non-finite loss at step 5"):
        trainer(tmp_path, ModelCheckpoint(every_n_steps=2), TerminateOnNaN(check_every_n_steps=1),
                max_steps=10).fit(Poisoned(rngs=nnx.Rngs(0)), batches({4}))
    assert CheckpointStore(directory, read_only=True).steps() == [4]
    with pytest.raises(DivergenceError, match="non-finite loss at step 4 after 2 skipped bad steps in a row"):
        trainer(tmp_path, TerminateOnNaN(check_every_n_steps=1, skip_bad_steps=True, max_consecutive_bad_steps=2),
                max_steps=10).fit(Poisoned(rngs=nnx.Rngs(0)), batches({1, 2, 3}))


# ------------------------------------------------------------------ failing disks
def test_unwritable_checkpoint_directory_fails_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot create its directory .*a-file"):
        trainer(tmp_path, ModelCheckpoint(blocker / "checkpoints")).fit(BigramLM(rngs=nnx.Rngs(0)), loader())


def test_unwritable_log_directory_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run = Trainer(max_steps=STEPS, default_root_dir=str(blocker / "runs"), enable_progress_bar=False)
    with pytest.raises(OSError, match="cannot create TensorBoard log directory .*a-file"):
        run.fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    assert run.global_step == 0


def test_a_failing_save_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    original = CheckpointStore.save

    def disk_full_at_step_6(self, step, state, meta, score=None):
        if step == 6:
            raise OSError(28, "No space left on device")
        return original(self, step, state, meta, score)

    monkeypatch.setattr(CheckpointStore, "save", disk_full_at_step_6)
    with pytest.raises(OSError, match="No space left on device"):
        trainer(tmp_path, ModelCheckpoint(every_n_steps=2, keep_last_n=2)).fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    monkeypatch.undo()
    store = CheckpointStore(os.path.join(str(tmp_path), "checkpoints"), read_only=True)
    assert store.steps() == [2, 4]
    run = trainer(tmp_path)
    run.fit(BigramLM(rngs=nnx.Rngs(0)), loader(), ckpt_path="last")
    assert run.resumed_step == 4


# ---------------------------------------------------------------- safe loading
class WouldRunCode:
    """Unpickling this creates a marker file: the attack a pickle-based loader would fall for."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_files_fail_to_load_without_running_code(tmp_path):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(WouldRunCode(str(marker)))
    directory = os.path.join(str(tmp_path), "checkpoints")
    trainer(tmp_path, ModelCheckpoint(every_n_steps=2), max_steps=2).fit(BigramLM(rngs=nnx.Rngs(0)), loader())
    for root, _, names in os.walk(os.path.join(directory, "2")):
        for name in names:  # every file of the checkpoint, metadata included
            open(os.path.join(root, name), "wb").write(payload)
    with pytest.raises((CorruptCheckpointError, FileNotFoundError)):
        trainer(tmp_path).fit(BigramLM(rngs=nnx.Rngs(0)), loader(), ckpt_path=os.path.join(directory, "2"))
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_bytes(payload)
    with pytest.raises(ValueError):
        CharTokenizer.load(tokenizer_file)
    assert not marker.exists()
