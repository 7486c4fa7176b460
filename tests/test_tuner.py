"""scale_batch_size: the largest power-of-two batch that fits, its caps, and leaving no trace."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from artrainer import Trainer, tuner
from artrainer import step as train_step
from artrainer.data import DataLoader
from artrainer.tuner import scale_batch_size, step_memory_bytes
from tiny_lm import BigramLM, cyclic_sequences

VOCAB, LENGTH = 16, 32
ROWS = cyclic_sequences(64, LENGTH, VOCAB)


def make_trainer(tmp_path, **kwargs):
    return Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                   **kwargs)


def bigram():
    return BigramLM(VOCAB, rngs=nnx.Rngs(0))


def data(n=64):
    return {"sequences": ROWS[:n]}


def host_state(module):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(module))]


def test_step_memory_bytes_matches_compiling_the_trainers_step(tmp_path):
    trainer, module = make_trainer(tmp_path), bigram()
    batch = {"sequences": ROWS[:8]}
    optimizer = nnx.Optimizer(module, module.configure_optimizers(), wrt=module.trainable)
    state = {"model": nnx.state(module), "optimizer": nnx.state(optimizer)}
    step = train_step.make_train_step(nnx.graphdef(module), nnx.graphdef(optimizer), seed=0,
                                         accumulate=1, precision="fp32")
    keys = train_step.metric_shapes(nnx.graphdef(module), state["model"], batch, "fp32", 0)
    stats = step.lower(state, train_step.init_train_sums(keys), train_step.init_health(),
                       batch).compile().memory_analysis()
    expected = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                - stats.alias_size_in_bytes)
    assert step_memory_bytes(trainer, module, batch) == expected


def test_returns_the_largest_size_under_the_memory_limit(tmp_path, capsys):
    trainer, module = make_trainer(tmp_path), bigram()
    fits, too_big = (step_memory_bytes(trainer, module, {"sequences": ROWS[:n]}) for n in (8, 16))
    assert fits < too_big
    limit = (fits + too_big) // 2
    assert scale_batch_size(trainer, module, data(), memory_limit_bytes=limit) == 8
    report = capsys.readouterr().out
    assert report.startswith("scale_batch_size: 8 fits (estimated ")
    assert "; 16 does not (estimated " in report

    with pytest.raises(ValueError, match=r"init_batch_size=16 does not fit: estimated .* of "):
        scale_batch_size(trainer, module, data(), init_batch_size=16, memory_limit_bytes=limit)


@pytest.mark.parametrize("kwargs, expected, reason", [
    ({"max_batch_size": 12}, 12, "stopped at max_batch_size=12"),  # 2, 4, 8, then the cap itself
    ({"max_batch_size": 8}, 8, "stopped at max_batch_size=8"),
    ({"max_trials": 3}, 8, "stopped after max_trials=3"),
])
def test_caps(tmp_path, capsys, kwargs, expected, reason):
    assert scale_batch_size(make_trainer(tmp_path), bigram(), data(), **kwargs) == expected
    assert capsys.readouterr().out.rstrip().endswith(reason)


def test_rows_of_data_cap_the_size(tmp_path, capsys):
    assert scale_batch_size(make_trainer(tmp_path), bigram(), data(20)) == 20
    assert capsys.readouterr().out.rstrip().endswith("stopped at the 20 rows of data")


def test_data_loader_rows_cap_the_size_and_its_position_is_kept(tmp_path):
    loader = DataLoader(data(20), 4, last_batch="pad")
    next(iter(loader))
    position = loader.state_dict()
    assert scale_batch_size(make_trainer(tmp_path), bigram(), loader, init_batch_size=4) == 20
    assert loader.state_dict() == position


def test_leaves_module_and_trainer_untouched_and_fit_still_works(tmp_path):
    trainer, module = make_trainer(tmp_path, accumulate_grad_batches=2), bigram()
    before = host_state(module)
    size = scale_batch_size(trainer, module, data(), max_batch_size=8, steps_per_trial=2)
    assert size == 8
    assert all(np.array_equal(a, b) for a, b in zip(host_state(module), before))
    assert trainer.global_step == 0 and trainer.optimizer is None and trainer.module is None

    trainer.fit(module, DataLoader(data(), size))
    assert trainer.global_step == 2
    assert not all(np.array_equal(a, b) for a, b in zip(host_state(module), before))


def _fail_above(threshold, message, monkeypatch):
    """Make running the compiled step raise ``message`` for batches larger than ``threshold``."""
    real = tuner._run_steps

    def run(compiled, inputs, steps):
        if inputs[3]["sequences"].shape[0] > threshold:
            raise jax.errors.JaxRuntimeError(message)
        real(compiled, inputs, steps)

    monkeypatch.setattr(tuner, "_run_steps", run)


def test_out_of_memory_at_run_time_ends_the_search(tmp_path, monkeypatch, capsys):
    _fail_above(4, "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0 GiB.", monkeypatch)
    assert scale_batch_size(make_trainer(tmp_path), bigram(), data()) == 4
    assert "; 8 does not (out of memory: RESOURCE_EXHAUSTED" in capsys.readouterr().out

    with pytest.raises(ValueError, match="init_batch_size=8 does not fit: out of memory"):
        scale_batch_size(make_trainer(tmp_path), bigram(), data(), init_batch_size=8)


def test_other_runtime_errors_propagate(tmp_path, monkeypatch):
    _fail_above(4, "INTERNAL: something else broke", monkeypatch)
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else broke"):
        scale_batch_size(make_trainer(tmp_path), bigram(), data())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"init_batch_size": 0}, ValueError, r"init_batch_size must be an int >= 1; got 0 \(int\)"),
    ({"init_batch_size": 2.0}, TypeError, r"init_batch_size must be an int >= 1; got 2.0 \(float\)"),
    ({"max_batch_size": 1}, ValueError, r"max_batch_size=1 is below init_batch_size=2"),
    ({"max_trials": 0}, ValueError, r"max_trials must be an int >= 1; got 0 \(int\)"),
    ({"memory_limit_bytes": 0}, ValueError, r"memory_limit_bytes must be an int >= 1 or None; got 0 \(int\)"),
    ({"steps_per_trial": True}, TypeError, r"steps_per_trial must be an int >= 1; got True \(bool\)"),
    ({"data": [data()]}, TypeError, r"data must be a dict of equal-length arrays or an artrainer"),
    ({"data": {"tokens": ROWS}}, ValueError, r"data lacks the module's input_key 'sequences'"),
    ({"data": {"sequences": ROWS, "mask": ROWS[:3]}}, ValueError, r"equal length; got leading lengths"),
    ({"data": data(4), "init_batch_size": 8}, ValueError, r"init_batch_size=8 exceeds the 4 rows of data"),
    ({"trainer": None}, TypeError, r"trainer must be an artrainer.Trainer; got NoneType"),
    ({"module": nnx.Linear(2, 2, rngs=nnx.Rngs(0))}, TypeError, r"module must be an artrainer.ARModule"),
])
def test_bad_arguments_fail_before_compiling(tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.setattr(tuner, "_StepProbe", None)  # any compile attempt would raise TypeError
    args = {"trainer": make_trainer(tmp_path), "module": bigram(), "data": data(), **kwargs}
    with pytest.raises(error, match=match):
        scale_batch_size(args.pop("trainer"), args.pop("module"), args.pop("data"), **args)


def test_sharded_runs_measure_the_sharded_step(tmp_path):
    """Under dp the finder compiles the step fit runs (state and batch placed on the mesh)."""
    single, dp = make_trainer(tmp_path), make_trainer(tmp_path, strategy="dp")
    fits, too_big = (step_memory_bytes(single, bigram(), {"sequences": ROWS[:n]}) for n in (8, 16))
    assert step_memory_bytes(dp, bigram(), {"sequences": ROWS[:8]}) == fits
    assert scale_batch_size(dp, bigram(), data(), memory_limit_bytes=(fits + too_big) // 2) == 8
