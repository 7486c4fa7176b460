"""Every shell command the README documents runs, in the README's order, as a user would.

Commands run from a working directory laid out like the repository (recipes/, callbacks/
and ../shared beside it), so default run directories (runs/transformer, ...) and relative
paths behave as in the README. Each command's argv goes to its recipe's ``main`` in this
process (sharing compilations keeps the suite short; tests/test_front_door.py runs the
recipes as separate processes), and must return exit status 0. Sizes are shrunk to tiny models and few steps; every flag
the README gives is kept, and step counts keep their order (value // 500, at least 1;
a recipe's default of thousands of steps becomes 4).
"""

from __future__ import annotations

import os
import re
import runpy
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")

#: Commands not run here, each with the reason.
NOT_RUN = {
    "pip install": "installing is what CI's .ci/run does before it runs this suite",
    "python -m pytest": "the suite itself",
    "python bench/": "benchmarks take minutes each and are never tests (bench/RESULTS.md has their numbers)",
    "JAX_COORDINATOR_ADDRESS=": "needs several hosts; tests/test_scale_out.py runs this path as two processes",
    "tensorboard": "a server for a person to browse",
}
#: Flag -> tiny value, per recipe: replaced where the README gives the flag, added where not.
TINY = {
    "train_transformer.py": {"--max-steps": "4", "--corpus-bytes": "20000", "--hidden-dim": "16", "--num-layers": "1",
                             "--num-heads": "2", "--batch-size": "4", "--no-progress-bar": None,
                             "--limit-val-batches": "2"},
    "train_pixelcnn.py": {"--max-steps": "4", "--n-train": "32", "--n-val": "8", "--hidden-channels": "8", "--num-layers": "1",
                          "--num-residual-blocks": "0", "--kernel-size": "3", "--batch-size": "8",
                          "--n-samples": "2", "--sample-every": "1000", "--no-progress-bar": None},
    "train_wavenet.py": {"--max-steps": "4", "--window": "256", "--num-layers": "2", "--num-stacks": "1", "--residual-channels": "8",
                         "--dilation-channels": "8", "--skip-channels": "16", "--batch-size": "4",
                         "--seconds": "0.01", "--n-samples": "2", "--sample-every": "1000",
                         "--limit-val-batches": "2", "--no-progress-bar": None},
}
SCALED = {"--max-steps": 500, "--warmup-steps": 100, "--sample-every": 500}  # value // divisor, at least 1
TRAINING_ONLY = {"--max-steps", "--corpus-bytes", "--hidden-dim", "--num-layers", "--num-heads", "--batch-size",
                 "--limit-val-batches", "--sample-every", "--no-progress-bar", "--hidden-channels",
                 "--num-residual-blocks", "--kernel-size", "--window", "--num-stacks", "--residual-channels",
                 "--dilation-channels", "--skip-channels"}


def readme_commands() -> list[str]:
    """The shell commands of the README's bash blocks and inline ``python recipes/...`` spans, in order."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    found = []
    for match in re.finditer(r"```bash\n(.*?)```|`(python recipes/[^`]+)`", text, re.S):
        block, inline = match.groups()
        if inline:
            found.append((match.start(), inline))
            continue
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith("#"):
                found.append((match.start(), command))
    return [command for _, command in found]


def tiny(argv: list[str]) -> list[str]:
    script = os.path.basename(argv[1])
    flags = argv[2:]
    sampling = any(mode in flags for mode in ("--generate", "--inpaint", "--class-label", "--print-config"))
    out = list(argv[:2])
    given = set()
    i = 0
    while i < len(flags):
        flag = flags[i]
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        value = flags[i + 1] if has_value else None
        given.add(flag)
        if flag in SCALED and value is not None:
            value = str(max(1, int(value) // SCALED[flag]))
        elif flag in TINY[script] and value is not None:
            value = TINY[script][flag]
        out += [flag] + ([value] if has_value else [])
        i += 2 if has_value else 1
    for flag, value in TINY[script].items():
        if flag not in given and not (sampling and flag in TRAINING_ONLY):
            out += [flag] + ([] if value is None else [value])
    return out


COMMANDS = readme_commands()


def test_the_readme_documents_recipe_commands():
    assert sum(command.startswith("python recipes/") for command in COMMANDS) >= 15


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory like the repository's: recipes/ and callbacks/ in it, shared/ beside it."""
    base = tmp_path_factory.mktemp("user")
    os.symlink(os.path.abspath(SHARED), base / "shared")
    work = base / "artrainer"
    work.mkdir()
    for name in ("recipes", "callbacks"):
        os.symlink(os.path.join(ROOT, name), work / name)
    return work


def test_every_readme_command_runs_in_order(workdir, monkeypatch, capsys):
    if not os.path.isdir(SHARED) and os.environ.get("CI") != "true":
        pytest.skip("../shared/data is absent (outside CI the shared data is optional)")
    monkeypatch.chdir(workdir)
    mains = {}
    ran = 0
    for command in COMMANDS:
        if any(command.startswith(prefix) for prefix in NOT_RUN):
            continue
        argv = shlex.split(command)
        assert argv[0] == "python" and argv[1].startswith("recipes/"), f"unexpected README command: {command}"
        argv = tiny(argv)
        if argv[1] not in mains:
            mains[argv[1]] = runpy.run_path(argv[1])["main"]
        capsys.readouterr()
        try:
            code = mains[argv[1]](argv[2:])
        except SystemExit as exit_:  # --help / --print-config print and exit, as in a shell
            code = exit_.code
        assert code == 0, f"README command failed: {command}\nran: {shlex.join(argv)}\n{capsys.readouterr().err}"
        ran += 1
    assert ran >= 15
