"""SampleWriter: a SampleGenerator that also keeps every batch of samples as files."""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import soundfile
from PIL import Image

from artrainer.loggers import image_grid

from artrainer.callbacks import SampleGenerator


class SampleWriter(SampleGenerator):
    """Log samples like SampleGenerator and write them to ``dirpath`` for later inspection.

    ``dirpath`` defaults to ``<default_root_dir>/samples``. Each sampling step writes
    ``step_<step:08d>.npy`` (the raw array) plus a form a person can open:

    - rank 2 [N, T] and the module has ``sample_rate``: ``step_<step>_<i>.wav`` per
      sample, after ``module.to_audio`` when the module has it (WaveNet's mu-law codes to
      float audio); floats are clipped to [-1, 1], int16/int32 are PCM as they are;
    - otherwise rank 2 integer token ids: ``step_<step>.txt``, one sample per line,
      ``module.decode(ids)`` when the module has it, else space-separated ids;
    - rank 4 [N, H, W, C] with C in {1, 3}: ``step_<step>.png``, one grid of all
      samples (integers read as 0..255, floats as 0..1).

    Every file is written under a temporary name and renamed, so a reader (or a
    crash) never sees half a file.
    """

    def __init__(self, every_n_steps: int = 500, n_samples: int = 4, *,
                 dirpath: str | os.PathLike | None = None,
                 generate_kwargs: Mapping[str, Any] | None = None, on_train_end: bool = True):
        super().__init__(every_n_steps, n_samples, generate_kwargs=generate_kwargs,
                         on_train_end=on_train_end)
        self.dirpath = None if dirpath is None else os.fspath(dirpath)

    def setup(self, trainer, module, stage):
        super().setup(trainer, module, stage)
        self._directory = os.path.abspath(self.dirpath or os.path.join(trainer.default_root_dir, "samples"))
        os.makedirs(self._directory, exist_ok=True)

    def handle_samples(self, trainer, module, samples, step: int) -> None:
        super().handle_samples(trainer, module, samples, step)
        samples = np.asarray(jax.device_get(samples))
        stem = os.path.join(self._directory, f"step_{step:08d}")
        _write_atomic(f"{stem}.npy", lambda f: np.save(f, samples))
        if samples.ndim == 2 and hasattr(module, "sample_rate"):
            audio = module.to_audio(samples) if callable(getattr(module, "to_audio", None)) else samples
            for i, clip in enumerate(audio):
                if np.issubdtype(clip.dtype, np.floating):
                    clip = np.clip(clip.astype(np.float32), -1.0, 1.0)
                _write_atomic(f"{stem}_{i}.wav",
                              lambda f, clip=clip: soundfile.write(f, clip, module.sample_rate, format="WAV"))
        elif samples.ndim == 2 and np.issubdtype(samples.dtype, np.integer):
            decode = getattr(module, "decode", None)
            lines = [decode(ids) if callable(decode) else " ".join(map(str, ids)) for ids in samples.tolist()]
            text = "".join(line.replace("\n", "\\n") + "\n" for line in lines)
            _write_atomic(f"{stem}.txt", lambda f: f.write(text.encode()))
        elif samples.ndim == 4 and samples.shape[-1] in (1, 3):
            grid = image_grid(samples)
            image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
            _write_atomic(f"{stem}.png", lambda f: image.save(f, format="PNG"))


def _write_atomic(path: str, write) -> None:
    """Write through ``write(file)`` to a temporary name, then rename: readers never see half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
