"""The WaveNet recipe end to end: train on FSDD (digit-conditional) and on a wav folder,
resume, then generate wavs (unconditional, per digit, continuing a prompt recording)."""

from __future__ import annotations

import json
import os
import runpy

import numpy as np
import pytest
import soundfile

from artrainer.data.audio import read_wav, write_wav

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPE = os.path.join(ROOT, "recipes", "train_wavenet.py")
FSDD = os.path.join(ROOT, "..", "shared", "data", "fsdd")
TINY = ["--window", "256", "--num-layers", "4", "--num-stacks", "2", "--residual-channels", "8",
        "--dilation-channels", "8", "--skip-channels", "16", "--batch-size", "4", "--no-progress-bar",
        "--log-every", "2", "--seconds", "0.01", "--n-samples", "2"]


def recipe(*argv):
    """Run the recipe's main() as `python recipes/train_wavenet.py ARGV` would."""
    return runpy.run_path(RECIPE)["main"](list(argv))


def fsdd_or_skip():
    if not os.path.isdir(FSDD):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{FSDD} is missing; CI must provide it")
        pytest.skip(f"{FSDD} is absent (outside CI the shared data is optional)")


def test_fsdd_conditional_train_resume_and_generate(tmp_path):
    fsdd_or_skip()
    out = str(tmp_path / "run")
    common = [*TINY, "--fsdd-dir", FSDD, "--conditional", "--out", out, "--limit-val-batches", "2",
              "--ckpt-every", "2"]
    assert recipe(*common, "--max-steps", "2", "--sample-every", "2") == 0
    config = json.load(open(os.path.join(out, "model_config.json")))
    assert config["num_classes"] == 10 and config["sample_rate"] == 8000
    assert recipe(*common, "--max-steps", "4", "--resume", "last") == 0
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["4"]
    written = sorted(os.listdir(os.path.join(out, "samples")))
    assert "step_00000002_0.wav" in written and "step_00000002_1.wav" in written
    clip, rate = soundfile.read(os.path.join(out, "samples", "step_00000002_0.wav"))
    assert rate == 8000 and len(clip) == 80

    assert recipe("--generate", "--out", out, "--digit", "7", "--seconds", "0.02", "--n-samples", "3") == 0
    clips = [read_wav(os.path.join(out, f"digit7_step4_000_{i}.wav")) for i in range(3)]
    assert all(rate == 8000 and len(audio) == 160 for audio, rate in clips)
    assert recipe("--generate", "--out", out, "--digit", "7", "--seconds", "0.02", "--n-samples", "1") == 0
    assert os.path.isfile(os.path.join(out, "digit7_step4_001_0.wav"))  # a second call never overwrites the first
    assert [read_wav(os.path.join(out, f"digit7_step4_000_{i}.wav")) for i in range(3)][0][0].tolist() == \
        clips[0][0].tolist()


def test_wav_folder_training_and_prompt_continuation(tmp_path):
    folder = tmp_path / "wavs"
    rng = np.random.default_rng(0)
    for label, frequency in (("low", 220.0), ("high", 880.0)):
        for i in range(6):
            t = np.arange(4000) / 16000  # 16 kHz files: the recipe resamples them to 8 kHz
            write_wav(folder / label / f"{i}.wav", 0.5 * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 6)), 16000)
    out = str(tmp_path / "run")
    assert recipe(*TINY, "--wav-folder", str(folder), "--n-val", "4", "--max-steps", "3", "--out", out,
                  "--sample-every", "100") == 0
    prompt = tmp_path / "prompt.wav"
    write_wav(prompt, 0.5 * np.sin(2 * np.pi * 220.0 * np.arange(400) / 8000), 8000)
    assert recipe("--generate", "--out", out, "--prompt-wav", str(prompt), "--seconds", "0.01") == 0
    continued, rate = read_wav(os.path.join(out, "continued_step3_000_0.wav"))
    original, _ = read_wav(prompt)
    assert rate == 8000 and len(continued) == 400 + 80
    # The prompt survives mu-law coding to within one code step of its loudest samples.
    np.testing.assert_allclose(continued[:400], original, atol=0.03)


def test_bad_flags_and_missing_runs_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTRAINER_DEBUG", "1")  # the exception itself, not its one-line message
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        recipe("--generate", "--out", str(tmp_path))
    with pytest.raises(ValueError, match="wav"):
        recipe(*TINY, "--wav-folder", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "run"))
