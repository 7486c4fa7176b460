"""TensorBoard logging for training runs.

`TensorBoardLogger` is a thin layer over tensorboardX's `SummaryWriter` that
gives every run its own versioned directory, accepts numpy and JAX values
directly, and turns image batches and hyperparameter trees into the shapes
TensorBoard's plugins expect.
"""

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summaries

_VERSION_DIR = re.compile(r"version_(\d+)")

# Grid separators are white so they stay visible between dark tiles (e.g. MNIST).
_SEPARATOR_VALUE = 255


class TensorBoardLogger:
    """Writes scalars, text, images, audio and hyperparameters for one run.

    Events go to ``save_dir/name/version_N``. With ``version=None`` the version
    is the next integer after the highest existing ``version_*`` folder,
    resolved on first use rather than at construction, so several loggers can
    be built up front and still get distinct directories as long as each one
    starts logging before the next resolves its own. Nothing touches the disk
    until the first write.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike = "runs",
        name: str = "",
        version: int | str | None = None,
        *,
        flush_secs: int = 30,
    ):
        self._root = os.path.join(os.fspath(save_dir), name)
        self._version = version
        self._flush_secs = flush_secs
        self._log_dir: str | None = None
        self._writer: SummaryWriter | None = None

    @property
    def log_dir(self) -> str:
        """The run directory; fixed the first time it is read."""
        if self._log_dir is None:
            version = self._next_version() if self._version is None else self._version
            if isinstance(version, int):
                version = f"version_{version}"
            self._log_dir = os.path.join(self._root, version)
        return self._log_dir

    def _next_version(self) -> int:
        if not os.path.isdir(self._root):
            return 0
        taken = [
            int(match.group(1))
            for entry in os.scandir(self._root)
            if entry.is_dir() and (match := _VERSION_DIR.fullmatch(entry.name))
        ]
        return max(taken, default=-1) + 1

    @property
    def writer(self) -> SummaryWriter:
        """The underlying `SummaryWriter`, created (with its directory) on first use."""
        if self._writer is None:
            log_dir = self.log_dir
            try:
                os.makedirs(log_dir, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create TensorBoard log directory {log_dir!r}: {e}") from e
            if not os.access(log_dir, os.W_OK | os.X_OK):
                raise OSError(f"TensorBoard log directory {log_dir!r} is not writable")
            self._writer = SummaryWriter(log_dir, flush_secs=self._flush_secs)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Logs each metric as a scalar, skipping `None` so sparse dicts can be passed."""
        for tag, value in metrics.items():
            if value is not None:
                # float() also blocks on (and fetches) a device-resident 0-d jax array.
                self.writer.add_scalar(tag, float(value), step)

    def log_hyperparams(
        self, params: Mapping[str, Any], metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Records `params` for TensorBoard's HParams tab, optionally with initial `metrics`.

        Nested mappings are flattened to ``outer/inner`` keys and values the
        plugin cannot type (lists, None, dataclasses, ...) are stored as their
        `str`. `metrics` are logged as scalars at step 0; later `log_metrics`
        calls with the same tags are what the HParams tab then displays.

        `SummaryWriter.add_hparams` is avoided on purpose: it opens a second
        writer in a sub-directory, and pointing that at ``log_dir`` itself can
        reuse the main event file's name (``<unix seconds>.<hostname>``) and
        truncate it. Writing the three hparams summaries through our own
        writer keeps everything in one file.
        """
        metrics = dict(metrics or {})
        flat = {key: _hparam_value(value) for key, value in _flatten(params).items()}
        for summary in hparams_summaries(flat, metrics):
            self.writer.file_writer.add_summary(summary)
        self.log_metrics(metrics, step=0)

    def log_text(self, tag: str, text: str, step: int, *, preformatted: bool = False) -> None:
        """Logs markdown text; TensorBoard shows it under ``{tag}/text_summary``.

        ``preformatted=True`` shows ``text`` exactly as written (a fenced code block):
        line breaks, indentation and characters markdown would interpret (``__name__``,
        ``*``, ``#``) survive, as generated code and verse need.
        """
        self.writer.add_text(tag, code_block(text) if preformatted else text, step)

    def log_images(self, tag: str, images: Any, step: int, *, ncol: int | None = None) -> None:
        """Logs a batch ``[N, H, W, C]`` (C = 1 or 3) as one grid image.

        Integer images are read as 0..255, float images as 0..1; both are
        clipped. One grid per step keeps the Images tab to a single card per
        tag instead of N. ``ncol`` defaults to ``ceil(sqrt(N))``.
        """
        self.writer.add_image(tag, image_grid(images, ncol=ncol), step, dataformats="HWC")

    def log_audio(self, tag: str, waveform: Any, step: int, *, sample_rate: int) -> None:
        """Logs a mono waveform ``[T]``, or a batch ``[N, T]`` as ``{tag}/{i}``.

        Samples are clipped to [-1, 1] (WAV encoding would saturate them
        anyway); NaN/inf raise instead, since they would be silently encoded as
        garbage and usually signal a diverged model worth surfacing.
        """
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim not in (1, 2):
            raise ValueError(
                f"log_audio expects a [T] or [N, T] waveform, got shape {waveform.shape}"
            )
        if not np.isfinite(waveform).all():
            raise ValueError(f"log_audio got non-finite samples for tag {tag!r}")
        waveform = np.clip(waveform, -1.0, 1.0)
        if waveform.ndim == 1:
            self.writer.add_audio(tag, waveform, step, sample_rate=sample_rate)
            return
        for i, clip in enumerate(waveform):
            self.writer.add_audio(f"{tag}/{i}", clip, step, sample_rate=sample_rate)

    def flush(self) -> None:
        """Forces pending events to disk (the writer otherwise flushes every `flush_secs`)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file. Safe to call repeatedly; logging again reopens."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def code_block(text: str) -> str:
    """``text`` as a markdown fenced code block, its fence longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{path}/"))
        else:
            flat[path] = value
    return flat


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def image_grid(images: Any, *, ncol: int | None = None) -> np.ndarray:
    """Tile a batch ``[N, H, W, C]`` (C = 1 or 3) into one uint8 ``[H', W', C]`` grid.

    Integer images are read as 0..255, float images as 0..1 (both clipped); tiles are
    laid out row-major, ``ncol`` (default ``ceil(sqrt(N))``) per row, with 1-pixel
    separators. Shared by the logger, the sample writer and the recipes.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, H, W, C] batch with C in (1, 3), got shape {images.shape}")
    if ncol is not None and ncol < 1:
        raise ValueError(f"ncol must be positive, got {ncol}")
    return _tile(_to_uint8(images), ncol or math.ceil(math.sqrt(len(images))))


def _to_uint8(images: np.ndarray) -> np.ndarray:
    if np.issubdtype(images.dtype, np.integer):
        return np.clip(images, 0, 255).astype(np.uint8)
    return np.round(np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _tile(images: np.ndarray, ncol: int) -> np.ndarray:
    """Lays ``[N, H, W, C]`` out row-major on a canvas with 1-pixel separators."""
    n, h, w, c = images.shape
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + 1) - 1, ncol * (w + 1) - 1, c), _SEPARATOR_VALUE, np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, ncol)
        grid[row * (h + 1) : row * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = image
    return grid
