"""The recipes as a user runs them: separate processes, real flags, real mistakes.

A rerun never destroys a run, a failed resume changes no byte, two trainers never share
an --out, Ctrl-C stops within seconds and says how to continue, and every mistake is
one line on stderr with exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFORMER = os.path.join("recipes", "train_transformer.py")
TINY = ["--corpus-bytes", "20000", "--seq-len", "16", "--hidden-dim", "16", "--num-layers", "1",
        "--num-heads", "2", "--batch-size", "8", "--log-every", "2", "--no-progress-bar"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of a user's shell, plus a compilation cache shared by the test's processes."""
    cache = str(tmp_path_factory.mktemp("xla-cache"))
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "PYTHONUNBUFFERED": "1", "ARTRAINER_DEBUG": ""}


def run(env, *argv, script=TRANSFORMER, timeout=300):
    """``python <script> ARGV`` from the repository root, as the README runs it."""
    return subprocess.run([sys.executable, script, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def tree_hash(path) -> dict[str, str]:
    """Every file under ``path`` by its relative name, with its SHA-256."""
    hashes = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            with open(full, "rb") as file:
                hashes[os.path.relpath(full, path)] = hashlib.sha256(file.read()).hexdigest()
    return hashes


def one_error_line(result) -> str:
    """The refusal of a user's mistake: exit 2 and exactly one stderr line, ``error: ...``."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_a_rerun_never_destroys_a_run_and_a_failed_resume_changes_no_byte(tmp_path, env):
    out = str(tmp_path / "run")
    first = run(env, *TINY, "--max-steps", "4", "--out", out)
    assert first.returncode == 0, first.stderr
    assert "parameters" in first.stderr and "steps per epoch" in first.stderr  # the run summary
    before = tree_hash(out)
    assert "checkpoints/4/meta/metadata" in before and "config.yaml" in before

    again = one_error_line(run(env, *TINY, "--max-steps", "4", "--out", out))
    assert "already holds a run" in again and "--resume last" in again and "--overwrite" in again
    assert tree_hash(out) == before

    other = one_error_line(run(env, *[a if a != "16" or i != TINY.index("--hidden-dim") + 1 else "32"
                                      for i, a in enumerate(TINY)], "--max-steps", "6", "--out", out,
                               "--resume", "last"))
    assert "hidden_dim: saved 16, now 32" in other
    assert tree_hash(out) == before  # byte for byte: nothing was written before the check

    generated = run(env, "--generate", "--out", out, "--max-length", "8", "--n-samples", "1")
    assert generated.returncode == 0, generated.stderr  # the intact run still samples

    resumed = run(env, *TINY, "--max-steps", "6", "--out", out, "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step 4 ({os.path.join(out, 'checkpoints', '4')})" in resumed.stderr
    assert "read only" not in resumed.stderr
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["6"]

    fresh = run(env, *TINY, "--max-steps", "2", "--out", out, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["2"]
    assert os.listdir(os.path.join(out, "logs")) == ["version_0"]  # the old run's logs went with it


def wait_for(predicate, what: str, timeout: float = 120.0, process=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start(env, *argv):
    return subprocess.Popen([sys.executable, TRANSFORMER, *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_one_trainer_per_out_ctrl_c_stops_fast_and_a_killed_run_leaves_no_lock(tmp_path, env):
    out = str(tmp_path / "run")
    argv = [*TINY, "--max-steps", "1000000", "--ckpt-every", "5", "--decay", "constant", "--out", out]
    first = start(env, *argv)
    checkpoints = os.path.join(out, "checkpoints")
    wait_for(lambda: os.path.isdir(checkpoints) and os.listdir(checkpoints), "a first checkpoint", process=first)

    second = one_error_line(run(env, *argv, "--resume", "last"))
    assert "another process is training into --out" in second

    first.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = first.communicate(timeout=60)
    # The tiny model's step takes milliseconds: what is left is checkpoint, flush and exit.
    assert time.monotonic() - sent < 3.0, stderr
    assert first.returncode == 128 + signal.SIGINT
    continue_with = stderr.split("continue with: ")[1].splitlines()[0]
    assert continue_with == shlex.join(["python", TRANSFORMER, *argv, "--resume", "last"])
    stopped_at = int(stderr.split("stopped by SIGINT after step ")[1].split()[0])
    assert str(stopped_at) in os.listdir(checkpoints)

    crashed = start(env, *shlex.split(continue_with)[2:])  # the printed command, as the user pastes it
    wait_for(lambda: crashed.stderr.readline().startswith("resumed from step"), "the resume", process=crashed)
    crashed.kill()  # kill -9: no cleanup runs, the kernel drops the lock
    crashed.wait(timeout=60)

    finished = run(env, *[a if a != "1000000" else str(stopped_at + 2) for a in argv], "--resume", "last")
    assert finished.returncode == 0, finished.stderr


def test_every_mistake_is_one_line_and_debug_shows_the_traceback(tmp_path, env):
    out = str(tmp_path / "never-written")
    ema = os.path.join("callbacks", "ema.py")
    cases = {
        ("--lrr", "3"): "did you mean --lr?",
        ("--text-files", str(tmp_path / "missing.txt"), "--out", out): "missing.txt",
        # The callback's keyword is checked before the (missing) text files are read.
        ("--callback", f'{ema}:EMA:{{"decey": 0.9}}', "--text-files", str(tmp_path / "missing.txt"),
         "--out", out): "EMA takes no argument 'decey'; did you mean 'decay'?",
        ("--max-steps", "ten"): "--max-steps expects an int; got 'ten'",
        ("--precision", "fp64"): "invalid choice: 'fp64'",
    }
    for argv, expected in cases.items():
        line = one_error_line(run(env, *argv))
        assert expected in line, line
    assert not os.path.exists(out)  # refused before any data was read or anything written

    debug = run(env, "--lrr", "3", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "--lrr" in debug.stderr


def scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events, [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_shows_the_schedule_the_flags_ask_for_and_each_point_once(tmp_path, env):
    import math

    from tensorboard import plugin_util

    corpus = tmp_path / "code.txt"
    corpus.write_text("class Point:\n    def __init__(self, x):\n        self.x = x  # *keep* __this__\n" * 40)
    out = str(tmp_path / "run")
    result = run(env, *TINY, "--text-files", str(corpus), "--tokenizer", "char", "--max-steps", "6",
                 "--log-every", "1", "--decay", "cosine", "--warmup-steps", "0", "--lr", "0.01",
                 "--sample-every", "2", "--n-samples", "2", "--max-length", "16", "--out", out)
    assert result.returncode == 0, result.stderr
    log_dir = os.path.join(out, "logs", "version_0")
    events, lr = scalars(log_dir, "lr")
    # Update s (0-based) is scaled by 0.5 (1 + cos(pi (s + 1) / 6)); the point at step n is update n - 1's.
    assert [step for step, _ in lr] == [1, 2, 3, 4, 5, 6]
    for step, value in lr:
        assert value == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * step / 6)), rel=1e-5, abs=1e-9)
    for tag in ("samples/distinct_1", "samples/repetition_rate", "train/loss"):
        steps = [step for step, _ in scalars(log_dir, tag)[1]]
        assert steps == sorted(set(steps)), f"{tag} has duplicate points: {steps}"
    assert [step for step, _ in scalars(log_dir, "samples/distinct_1")[1]] == [2, 4, 6]  # one per sample event

    text = events.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    html = plugin_util.markdown_to_safe_html(text)
    assert html.count("<pre><code>") == 2  # each sample preformatted: line breaks and indentation kept
    assert "<strong>" not in html and "<em>" not in html  # __init__ and *keep* are not markdown
    summary = events.Tensors("run/summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "parameters" in summary and "tokens per epoch" in summary and "steps per epoch" in summary


def test_a_config_file_sets_any_flag_and_lightning_names_work(tmp_path, env):
    import yaml

    out = str(tmp_path / "run")
    printed = run(env, *TINY, "--max-steps", "3", "--learning-rate", "0.002", "--gradient-clip-val", "1.0",
                  "--accumulate-grad-batches", "2", "--log-every-n-steps", "1", "--output-dir", out,
                  "--print-config")
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert (config["lr"], config["clip_norm"], config["accumulate"], config["log_every"], config["out"]) == (
        0.002, 1.0, 2, 1, out)
    assert not os.path.exists(out)  # printing trains nothing
    config_file = tmp_path / "run.yaml"
    config_file.write_text(printed.stdout)
    trained = run(env, "--config", str(config_file))
    assert trained.returncode == 0, trained.stderr
    written = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert written == {k: v for k, v in config.items() if k not in ("resume", "overwrite", "debug")}
    # The written config continues the run it describes.
    resumed = run(env, "--config", os.path.join(out, "config.yaml"), "--max-steps", "4", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 3" in resumed.stderr
    config_file.write_text("max_stepz: 3\n")
    assert "unknown key 'max_stepz'; did you mean 'max_steps'?" in one_error_line(run(env, "--config",
                                                                                        str(config_file)))


def test_data_mistakes_are_named_in_flag_terms(tmp_path, env):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("x = 1  # caf" + "\xe9" + "\n").encode("latin-1") * 200)
    line = one_error_line(run(env, *TINY, "--text-files", str(latin), "--out", str(tmp_path / "a")))
    assert f"{latin} is not valid utf-8 text: byte 0xe9 at byte offset 12" in line
    assert "--encoding" in line and "--errors replace" in line
    small = tmp_path / "small.txt"
    small.write_text("tiny corpus\n" * 4)
    line = one_error_line(run(env, *TINY, "--text-files", str(small), "--out", str(tmp_path / "b")))
    assert "--batch-size 8 is more than the" in line and "--seq-len" in line
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    decoded = run(env, *TINY, "--text-files", str(latin), "--encoding", "latin-1", "--tokenizer", "char",
                  "--max-steps", "1", "--out", str(tmp_path / "c"))
    assert decoded.returncode == 0, decoded.stderr
    chars = json.load(open(tmp_path / "c" / "tokenizer.json", encoding="utf-8"))["chars"]
    assert "\xe9" in chars and "\ufffd" not in chars
