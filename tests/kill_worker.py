"""A training run that can be killed with SIGKILL at chosen points, for tests/test_kill_resume.py.

``python tests/kill_worker.py OUT_DIR [--kill-at-step N] [--kill-in-save N [--delay-ms D]]
[--kill-at-fit-end]`` trains a small deterministic model (BigramLM with dropout, a shuffled
DataLoader with prefetch, an LR schedule) for MAX_STEPS steps, checkpointing every
EVERY_N_STEPS steps asynchronously into ``OUT_DIR/ckpt``, and always with
``fit(ckpt_path='last')``: run it again after a kill and it goes on from the newest complete
checkpoint (a missing one starts fresh). A finished run writes ``OUT_DIR/final.npz``.

Kills from inside, at exact points:
  --kill-at-step N     at the start of step N (N - 1 steps done), before it runs;
  --kill-in-save N     right after ModelCheckpoint launched the asynchronous save of step N,
                       while orbax's background thread writes it (``--delay-ms D`` first
                       sleeps D ms, letting the write get further);
  --kill-at-fit-end    after the last step, before teardown waits for the last save;
  --kill-after-fit     after fit() returned (every save committed), before final.npz;
  --kill-in-gc N       half-way through orbax deleting the superseded checkpoint N.

It prints (flushed) ``resumed R`` when training starts (R = the restored step, or -1),
``step N`` after each step (before that step's checkpoint is launched), ``saving N``
once the save of step N is launched, ``kill WHERE`` just before it kills itself, and
``done`` at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MAX_STEPS = 40
EVERY_N_STEPS = 2
VOCAB = 16


def say(text: str) -> None:
    print(text, flush=True)


def die(where: str) -> None:
    say(f"kill {where}")
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_gc(ckpt_dir: str, step: int) -> None:
    """SIGKILL this process half-way through deleting checkpoint ``step`` (orbax's garbage
    collection of a superseded checkpoint, after a newer one committed): like a kill that
    lands while ``shutil.rmtree`` (used by orbax via etils.epath) walks the directory, its
    ``state`` item is gone, the rest is not."""
    import shutil

    rmtree = shutil.rmtree
    victim = os.path.join(os.path.abspath(ckpt_dir), str(step))

    def rmtree_then_die(path, *args, **kwargs):
        if os.path.abspath(os.fspath(path)) == victim:
            rmtree(os.path.join(victim, "state"))
            die(f"gc {step}")
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree_then_die


def _callbacks(ckpt_dir, kill_at_step=None, kill_in_save=None, delay_ms=0.0, kill_at_fit_end=False):
    from artrainer import Callback
    from artrainer.callbacks import LRWarmup, ModelCheckpoint

    class KillableCheckpoint(ModelCheckpoint):
        """ModelCheckpoint that can SIGKILL its process while its async save is in flight."""

        def save(self, trainer):
            before = self.last_saved_step
            super().save(trainer)
            step = trainer.global_step
            if self.last_saved_step == step and before != step:  # a save was launched just now
                say(f"saving {step}")
                if kill_in_save == step:
                    if delay_ms:
                        time.sleep(delay_ms / 1000)
                    die(f"save {step}")

    class Probe(Callback):
        """Reports progress on stdout and kills at the start of a step or at fit end."""

        uses_module = False

        def on_train_start(self, trainer, module):
            say(f"resumed {trainer.resumed_step if trainer.resumed_step is not None else -1}")

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if kill_at_step is not None and trainer.global_step + 1 == kill_at_step:
                die(f"step {kill_at_step}")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            say(f"step {trainer.global_step}")

        def on_fit_end(self, trainer, module):
            if kill_at_fit_end:
                die("fit_end")

    return [Probe(), LRWarmup(4, decay="cosine", decay_steps=MAX_STEPS), KillableCheckpoint(
        ckpt_dir, every_n_steps=EVERY_N_STEPS, async_save=True)]


def make_run(out_dir: str, **kill):
    """``(trainer, model, loader)`` of the run, with the checkpoint directory OUT_DIR/ckpt."""
    from flax import nnx

    from artrainer import Trainer
    from artrainer.data import DataLoader
    from tiny_lm import BigramLM, cyclic_sequences

    callbacks = _callbacks(os.path.join(out_dir, "ckpt"), **kill)
    model = BigramLM(VOCAB, dropout_rate=0.3, rngs=nnx.Rngs(0))
    model.learning_rate = 5e-3
    trainer = Trainer(max_steps=MAX_STEPS, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      default_root_dir=out_dir, log_every_n_steps=4, seed=3)
    loader = DataLoader({"sequences": cyclic_sequences(100, 12, VOCAB)}, 8, seed=7, prefetch=2)
    return trainer, model, loader


def restore_target(out_dir: str):
    """Arrays shaped like a checkpoint's ``state``, to restore one for inspection."""
    trainer, model, _ = make_run(out_dir)
    return trainer.build_train_step(model).state


def final_arrays(trainer, model) -> dict[str, np.ndarray]:
    """Every model and optimizer array of a finished run, by path, plus the step counter."""
    import jax
    from flax import nnx

    state = jax.device_get({"model": nnx.state(model), "optimizer": nnx.state(trainer.optimizer)})
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    flat["global_step"] = np.asarray(trainer.global_step)
    return flat


def train(out_dir: str, **kill):
    trainer, model, loader = make_run(out_dir, **kill)
    trainer.fit(model, loader, ckpt_path="last")
    return trainer, model


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--kill-at-fit-end", action="store_true")
    parser.add_argument("--kill-in-gc", type=int, metavar="N")
    parser.add_argument("--kill-after-fit", action="store_true")
    args = parser.parse_args(argv)
    if args.kill_in_gc is not None:
        kill_in_gc(os.path.join(args.out_dir, "ckpt"), args.kill_in_gc)

    import jax
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:  # reuse the test session's compilations: every restart loads, none compiles
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

    trainer, model = train(args.out_dir, kill_at_step=args.kill_at_step, kill_in_save=args.kill_in_save,
                           delay_ms=args.delay_ms, kill_at_fit_end=args.kill_at_fit_end)
    if args.kill_after_fit:
        die("after_fit")
    np.savez(os.path.join(args.out_dir, "final.npz"), **final_arrays(trainer, model))
    say("done")


if __name__ == "__main__":
    main()
