"""Fault injection: SIGKILL a training run at many points, mid-checkpoint-save included.

One checkpoint directory lives through a chain of worker processes (tests/kill_worker.py),
each killed with SIGKILL somewhere else: before a step, right after an asynchronous save was
launched (orbax still writing it, optionally after a few ms), after a random step plus a
random delay, during start-up / restore, at the end of fit. Every worker resumes with
``fit(ckpt_path='last')``. After each kill, the newest checkpoint orbax lists must restore
completely (every listed one is restored), be no older than the newest before the kill, and the next worker must resume
from exactly that one. A last, unkilled worker finishes the run: its parameters and
optimizer state must equal an uninterrupted run's bit for bit. ``pytest -s`` prints a line
per kill point and a summary with the number of kill points that lost nothing.

A second test kills the worker while orbax deletes a superseded checkpoint in place: the
half-deleted step must not be listed as a checkpoint.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import kill_worker
from artrainer.checkpointing import CheckpointStore

SCRIPT = os.path.join(os.path.dirname(__file__), "kill_worker.py")
SEED = 7
TMP_SUFFIX = ".orbax-checkpoint-tmp"
WORKER_TIMEOUT_S = 120

# Kill points, in order, all against one checkpoint directory (MAX_STEPS = 40, a checkpoint
# every 2 steps):
#   ("startup", None)    the test kills after a random delay from the spawn (importing JAX);
#   ("restore", None)    the test kills at a random 70-105 % of the time earlier workers took
#                        to reach training (building, restoring the checkpoint, compiling);
#   ("step", N)          the worker kills itself at the start of step N ("next": the first
#                        step after the one it resumed from);
#   ("save", (N, ms))    the worker kills itself ms milliseconds after launching the async
#                        save of step N (ms=None: a random 0-20 ms), while orbax writes it;
#   ("train", None)      the test kills a random 0-20 ms after the worker reported a random
#                        step among the next five after the newest checkpoint;
#   ("fit_end", None)    the worker kills itself after its last step, before the final save
#                        has been waited for;
#   ("after_fit", None)  the worker kills itself after fit() returned (all saved), so the
#                        next run resumes at max_steps and trains no step.
# ("save", (N, "wide")) waits a random 20-200 ms: the save may have committed by then, and
# orbax may be deleting the superseded checkpoint.
KILL_PLAN = [
    ("startup", None),
    ("step", 3),
    ("save", (6, 0)),
    ("train", None),
    ("save", (12, 5)),
    ("restore", None),
    ("step", "next"),
    ("save", (20, None)),
    ("train", None),
    ("save", (28, 1)),
    ("restore", None),
    ("save", (34, "wide")),
    ("train", None),
    ("save", (40, 0)),
    ("fit_end", None),
    ("after_fit", None),
]
NUM_KILL_POINTS = len(KILL_PLAN)
MID_SAVE_PLANNED = sum(kind == "save" for kind, _ in KILL_PLAN)


class Worker:
    """A kill_worker.py process whose stdout lines are collected, with arrival times, by a thread."""

    def __init__(self, out_dir, index, args=()):
        self.err_path = os.path.join(out_dir, f"worker{index}.stderr")
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
        self.started = time.monotonic()
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, SCRIPT, os.path.join(out_dir, "run"), *map(str, args)],
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.lines: list[tuple[float, str]] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put((time.monotonic() - self.started, line.strip()))
        self._queue.put(None)

    def wait_for(self, text, timeout=WORKER_TIMEOUT_S) -> bool:
        """Block until the worker prints ``text`` (True) or its stdout ends (False)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            if item is None:
                self._queue.put(None)
                return False
            self.lines.append(item)
            if item[1] == text:
                return True

    def finish(self, timeout=WORKER_TIMEOUT_S) -> int:
        try:
            returncode = self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
        self._drain()
        self._reader.join(timeout=10)
        self.proc.stdout.close()
        return returncode

    def _drain(self):
        while (item := self._queue.get(timeout=WORKER_TIMEOUT_S)) is not None:
            self.lines.append(item)
        self._queue.put(None)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)

    def value(self, key):
        """The numbers printed after ``key`` (``resumed``, ``step``, ``saving``), in order."""
        return [int(line.split()[1]) for _, line in self.lines if line.startswith(key + " ")]

    def seconds_to(self, text):
        return next((t for t, line in self.lines if line == text), None)

    def stderr_tail(self, chars=3000):
        with open(self.err_path) as f:
            return f.read()[-chars:]


def inspect_checkpoints(ckpt_dir, target):
    """``(steps orbax lists, tmp directories, {step: why it does not restore})``.

    Every listed step is restored in full (the library's own restore, with its checks) and
    must hold its own step counter; the newest must also be the one 'last' picks.
    """
    if not os.path.isdir(ckpt_dir):
        return [], [], {}
    store = CheckpointStore(ckpt_dir, read_only=True)
    broken = {}
    try:
        steps = sorted(store.steps())
        if steps and store.latest_step() != steps[-1]:
            broken[steps[-1]] = f"latest_step() is {store.latest_step()}, not the newest listed"
        for step in steps:
            try:
                state, meta = store.restore(step, target)
            except Exception as exc:  # noqa: BLE001 - a listed partial checkpoint is the finding
                broken[step] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            if meta.get("global_step") != step:
                broken[step] = f"restores meta global_step={meta.get('global_step')}"
            for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(state)):
                if np.shape(want) != np.shape(got) or not np.all(np.isfinite(np.asarray(got, np.float64))):
                    broken[step] = f"restores a bad array {np.shape(got)} (want {np.shape(want)})"
    finally:
        store.close()
    tmp = sorted(name for name in os.listdir(ckpt_dir) if TMP_SUFFIX in name)
    return steps, tmp, broken


def worker_args(kind, arg, newest, rng):
    """The worker's command-line flags for kill point ``(kind, arg)``, and for kills the test
    times, the step after which ("train") or the time at which it strikes."""
    first = (newest or 0) + 1  # the first step the worker will run
    if kind == "step":
        return ["--kill-at-step", first if arg == "next" else arg], None
    if kind == "save":
        step, delay = arg
        delay = {None: lambda: rng.uniform(0, 20), "wide": lambda: rng.uniform(20, 200)}.get(delay, lambda: delay)()
        return ["--kill-in-save", step, "--delay-ms", round(delay, 2)], None
    if kind in ("fit_end", "after_fit"):
        return [{"fit_end": "--kill-at-fit-end", "after_fit": "--kill-after-fit"}[kind]], None
    # Timed by the test; should it come late, the worker kills itself a few steps on (the
    # backstop), so it never finishes the run.
    if kind == "train":
        at = min(first + rng.randint(0, 4), kill_worker.MAX_STEPS - 1)
        return ["--kill-at-step", min(at + 4, kill_worker.MAX_STEPS)], at
    return ["--kill-at-step", min(first + 2, kill_worker.MAX_STEPS)], None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final arrays of an uninterrupted run, trained in this process (which also fills the
    compilation cache the workers load from). 'last' with no checkpoint yet starts fresh,
    with a warning."""
    out = str(tmp_path_factory.mktemp("reference"))
    with pytest.warns(UserWarning, match="starting from scratch"):
        trainer, model = kill_worker.train(out)
    assert trainer.resumed_step is None and trainer.global_step == kill_worker.MAX_STEPS
    arrays = kill_worker.final_arrays(trainer, model)
    initial = kill_worker.final_arrays(*kill_worker.make_run(os.path.join(out, "initial"))[:2])
    assert any(not np.array_equal(arrays[k], initial[k]) for k in arrays if "embed" in k), \
        "training did not move the weights"
    return arrays, kill_worker.restore_target(os.path.join(out, "target"))


def assert_same_arrays(path, reference):
    final = dict(np.load(path))
    assert sorted(final) == sorted(reference)
    for key in reference:
        np.testing.assert_array_equal(final[key], reference[key], err_msg=key)


def kill_one(worker, kind, args, at, ready_times, rng) -> str:
    """Carry out kill point ``kind`` on ``worker`` (the worker kills itself for most); return
    a description of where it struck."""
    if kind == "startup":
        delay = rng.uniform(0.1, 1.0)
        time.sleep(delay)
        worker.kill()
        return f"startup +{delay:.2f}s"
    if kind == "restore":
        delay = rng.uniform(0.7, 1.05) * (float(np.median(ready_times)) if ready_times else 3.0)
        time.sleep(delay)
        worker.kill()
        return f"restore/compile +{delay:.2f}s"
    if kind == "train":
        ms = rng.uniform(0, 20)
        assert worker.wait_for(f"step {at}"), f"the worker never reached step {at}:\n{worker.stderr_tail()}"
        time.sleep(ms / 1000)
        worker.kill()
        return f"train: {ms:.1f} ms after step {at}"
    return {"step": lambda: f"start of step {args[1]}",  # the worker kills itself
            "save": lambda: f"mid-save of step {args[1]} +{args[3]:.1f} ms",
            "fit_end": lambda: "fit end, last save unwaited",
            "after_fit": lambda: "after fit returned"}[kind]()


def test_sigkill_anywhere_then_resume_last_equals_uninterrupted_run(tmp_path, reference):
    started = time.monotonic()
    reference, target = reference
    rng = random.Random(SEED)
    ckpt_dir = str(tmp_path / "run" / "ckpt")
    newest = None  # the newest complete checkpoint so far
    ready_times = []  # seconds from spawn to "resumed" of earlier workers
    records = []
    for index, (kind, arg) in enumerate(KILL_PLAN):
        args, at = worker_args(kind, arg, newest, rng)
        worker = Worker(str(tmp_path), index, args)
        how = kill_one(worker, kind, args, at, ready_times, rng)
        returncode = worker.finish()
        assert returncode == -signal.SIGKILL, (
            f"kill point {index} ({how}): the worker exited with {returncode} instead of being killed\n"
            f"stdout: {[line for _, line in worker.lines][-5:]}\nstderr:\n{worker.stderr_tail()}")
        resumed = worker.value("resumed")
        if resumed:
            ready_times.append(worker.seconds_to(f"resumed {resumed[0]}"))
            if records:
                records[-1]["next_resumed"] = resumed[0]
        steps, tmp, broken = inspect_checkpoints(ckpt_dir, target)
        after = steps[-1] if steps else None
        problems = [f"checkpoint {step} is listed but broken: {why}" for step, why in broken.items()]
        if after is None and newest is not None:
            problems.append(f"all checkpoints are gone (the newest was {newest})")
        elif newest is not None and after < newest:
            problems.append(f"the newest checkpoint went back from {newest} to {after}")
        launched = worker.value("saving")
        self_killed = [line for _, line in worker.lines if line.startswith("kill ")]
        planned = {"step": lambda: f"kill step {args[1]}", "save": lambda: f"kill save {args[1]}",
                   "fit_end": lambda: "kill fit_end", "after_fit": lambda: "kill after_fit"}
        if kind in planned:
            assert self_killed == [planned[kind]()], f"kill point {index} ({how}) did not strike: {self_killed}"
        if kind in ("startup", "restore", "train") and self_killed:
            how += f" (too late: backstop {self_killed[0][5:]})"
        records.append({
            "index": index, "how": how, "before": newest, "after": after, "steps": steps, "tmp": tmp,
            "problems": problems,
            "last_step": (worker.value("step") or [None])[-1],
            "in_flight": bool(launched) and launched[-1] not in steps,  # its last save never committed
        })
        newest = after if after is not None else newest

    final = Worker(str(tmp_path), len(KILL_PLAN))
    returncode = final.finish()
    assert returncode == 0, f"the final, unkilled worker failed ({returncode}):\n{final.stderr_tail()}"
    records[-1]["next_resumed"] = (final.value("resumed") or [None])[0]
    for record in records:
        expected = record["after"] if record["after"] is not None else -1
        if record.get("next_resumed") is not None and record["next_resumed"] != expected:
            record["problems"].append(f"the next run resumed from {record['next_resumed']}, not from the "
                                      f"newest complete checkpoint {expected}")

    nothing_lost = sum(not r["problems"] for r in records)
    in_flight = sum(r["in_flight"] for r in records)
    for r in records:
        print(f"  kill {r['index']:2d} {r['how']:34s} at step {r['last_step']}: checkpoints {r['before']} -> "
              f"{r['steps']}{' tmp=' + ','.join(r['tmp']) if r['tmp'] else ''}"
              f"{' (save in flight)' if r['in_flight'] else ''}; next run resumed {r.get('next_resumed')} "
              f"{'OK' if not r['problems'] else r['problems']}")
    print(f"kill-resume: {NUM_KILL_POINTS} kill points ({MID_SAVE_PLANNED} aimed mid-save, {in_flight} with a "
          f"save in flight at the kill), nothing lost at {nothing_lost}/{NUM_KILL_POINTS}; "
          f"{time.monotonic() - started:.1f}s")
    assert nothing_lost == NUM_KILL_POINTS, [r for r in records if r["problems"]]
    assert final.value("resumed") == [newest if newest is not None else -1]
    assert_same_arrays(tmp_path / "run" / "final.npz", reference)


def test_kill_while_orbax_deletes_a_superseded_checkpoint(tmp_path, reference):
    reference, target = reference
    ckpt_dir = str(tmp_path / "run" / "ckpt")
    worker = Worker(str(tmp_path), 0, ["--kill-in-gc", 4])  # 6 committed, then 4 is being deleted
    assert worker.finish() == -signal.SIGKILL, worker.stderr_tail()
    assert [line for _, line in worker.lines if line.startswith("kill ")] == ["kill gc 4"]
    steps, _, broken = inspect_checkpoints(ckpt_dir, target)
    assert steps[-1] == 6 and 6 not in broken, (steps, broken)
    final = Worker(str(tmp_path), 1)
    assert final.finish() == 0, final.stderr_tail()
    assert final.value("resumed") == [6]
    assert_same_arrays(tmp_path / "run" / "final.npz", reference)
    assert inspect_checkpoints(ckpt_dir, target)[0] == [kill_worker.MAX_STEPS]  # healed by later GC
    assert not broken, (f"after a kill during orbax's deletion of checkpoint 4, CheckpointStore"
                        f"({ckpt_dir!r}).steps() == {steps} lists a partial checkpoint: {broken}")
