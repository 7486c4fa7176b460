"""The Transformer recipe end to end: train (with a --callback file), resume, generate."""

from __future__ import annotations

import json
import os
import runpy
import sys

import pytest

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "train_transformer.py")
EMA = os.path.join(os.path.dirname(__file__), "..", "callbacks", "ema.py")


def recipe(*argv):
    """Run the recipe's main() as `python recipes/train_transformer.py ARGV` would."""
    module = runpy.run_path(RECIPE)
    return module["main"](list(argv))


TINY = ["--corpus-bytes", "30000", "--seq-len", "32", "--hidden-dim", "32", "--num-layers", "1",
        "--num-heads", "2", "--batch-size", "8", "--log-every", "5", "--no-progress-bar"]


def test_train_resume_and_generate(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert recipe(*TINY, "--max-steps", "6", "--ckpt-every", "3", "--out", out, "--tokenizer", "char",
                  "--callback", f'{EMA}:EMA:{{"decay": 0.9}}', "--sample-every", "3", "--n-samples", "2",
                  "--max-length", "16") == 0
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["6"]
    config = json.load(open(os.path.join(out, "model_config.json")))
    assert config["tokenizer"] == "char" and config["sequence_length"] == 32
    assert recipe(*TINY, "--max-steps", "9", "--ckpt-every", "3", "--out", out, "--tokenizer", "char",
                  "--resume", "last") == 0
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["9"]
    capsys.readouterr()
    assert recipe("--generate", "--out", out, "--prompt", "def", "--n-samples", "3", "--max-length", "12",
                  "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--repetition-penalty", "1.2") == 0
    printed = capsys.readouterr().out
    assert printed.count("--- sample") == 3 and printed.count("\ndef") == 3
    assert recipe("--generate", "--out", out, "--max-length", "12", "--beam-size", "2") == 0
    assert capsys.readouterr().out.count("--- score") == 2
    # A prompt longer than --max-length allows: refused with the room there is, or cut to its last tokens.
    assert recipe("--generate", "--out", out, "--max-length", "12", "--prompt", "abcdefghijklmnopqrstuvwxyz") == 2
    assert "--prompt is 26 tokens, and --max-length 12 leaves room for at most 10" in capsys.readouterr().err
    assert recipe("--generate", "--out", out, "--max-length", "12", "--prompt", "abcdefghijklmnopqrstuvwxyz",
                  "--truncate-prompt", "--n-samples", "1", "--temperature", "0") == 0
    assert capsys.readouterr().out.split("\n")[1].startswith("qrstuvwxyz")  # the last 10 of the prompt


def test_generate_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert recipe("--generate", "--out", str(tmp_path)) == 2
    assert capsys.readouterr().err == (f"error: --out {tmp_path} holds no trained run (no model_config.json); "
                                       "train into it first, or point --out at a run directory\n")


def test_help_lists_every_sampling_flag(capsys):
    with pytest.raises(SystemExit):
        recipe("--help")
    text = capsys.readouterr().out
    for flag in ("--temperature", "--top-k", "--top-p", "--repetition-penalty", "--beam-size", "--callback",
                 "--resume", "--precision", "--accumulate"):
        assert flag in text


@pytest.mark.parametrize("name", ["transformer", "pixelcnn", "wavenet"])
def test_every_flag_has_help_and_shows_its_default(name, capsys):
    module = runpy.run_path(os.path.join(os.path.dirname(RECIPE), f"train_{name}.py"))
    parser = module["make_parser"]()
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "print_config"):
            assert action.help, f"{action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        module["main"](["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--out OUT, --output-dir OUT, --default-root-dir OUT the run directory: logs, checkpoints, " \
           f"configs, samples (default: runs/{name})" in text
    assert "--max-steps MAX_STEPS stop after this many optimizer steps" in text
    assert "default: cosine)" in text and "(type: int, default: 50)" in text


def test_bad_flags_are_refused(tmp_path, capsys):
    assert recipe("--val-fraction", "1.5") == 2
    assert capsys.readouterr().err == "error: --val-fraction 1.5 must lie in (0, 1)\n"
    assert recipe(*TINY, "--max-steps", "1", "--out", str(tmp_path), "--sample-every", "1",
                  "--temperature", "-1") == 2
    assert "temperature" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before anything was written
