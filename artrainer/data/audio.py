"""Audio data sets as ``{'waveform': int32 mu-law codes [N, T], 'mask': int32 [N, T], ...}``, ready for DataLoader.

Autoregressive audio models of the WaveNet family predict each sample as one of 256
mu-law levels, so the data holds exactly those class targets, not floats. Clips are cut
or padded with silence to one length T so batches have a fixed shape; ``mask`` marks the
real samples (1) apart from that padding (0), so a loss can leave the padding out.
Everything is mono: stereo files are mixed down when read, while a stereo array handed to
:func:`check_audio` is refused rather than guessed about. Every float waveform passes
:func:`check_audio`, so all entry points reject bad audio with the same messages.
:func:`mu_law_encode` and :func:`mu_law_decode` also take jax arrays inside ``jax.jit``,
so a model can encode and decode on the device. Nothing here unpickles.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soundfile
from numpy.typing import ArrayLike

from artrainer.validation import require_int

AudioData = dict[str, np.ndarray]

QUANTIZATION_CHANNELS = 256
#: Most mu-law channels allowed: 16-bit audio, and every code stays exact in float32 on the device.
_MAX_QUANTIZATION_CHANNELS = 2**16
#: 16-bit PCM full scale: read_wav's samples are ints / 32768, and write_wav inverts that.
_PCM16_SCALE = 32768
#: FSDD file names: ``{digit}_{speaker}_{index}.wav``.
_FSDD_NAME = re.compile(r"(?P<digit>[0-9])_(?P<speaker>[^_]+)_(?P<index>[0-9]+)\.wav")
_FSDD_DIGITS = range(10)


def mu_law_encode(audio: ArrayLike, quantization_channels: int = QUANTIZATION_CHANNELS) -> np.ndarray:
    """Float audio in [-1, 1] as int32 mu-law codes in ``[0, quantization_channels - 1]``.

    With μ = quantization_channels - 1, f = sign(x)·ln(1 + μ|x|)/ln(1 + μ) and the code is
    floor((f + 1)/2·μ + 0.5): halves round up, so silence (127.5 for 256 channels) is code
    128, -1 is 0 and 1 is μ. Samples beyond ±1 saturate at the end codes. A jax array
    (traced or not) gives a jax array computed in its own precision, numpy input one computed
    in float64. Input holding NaN is refused, unless it is traced (its values cannot be read).
    """
    mu = require_int("quantization_channels", quantization_channels, minimum=2,
                     maximum=_MAX_QUANTIZATION_CHANNELS) - 1
    xp = _array_module(audio)
    audio = xp.asarray(audio)
    if not xp.issubdtype(audio.dtype, xp.floating):
        raise TypeError(f"audio must hold float samples in [-1, 1], got dtype {audio.dtype}")
    values = _readable_values(audio)
    if values is not None and np.isnan(values).any():
        raise ValueError(f"audio holds NaN at index {_first_index(np.isnan(values))}, which has no mu-law code")
    if xp is np:
        audio = audio.astype(np.float64)
    audio = xp.clip(audio, -1.0, 1.0)
    companded = xp.sign(audio) * xp.log1p(mu * xp.abs(audio)) / math.log1p(mu)
    return xp.floor((companded + 1) / 2 * mu + 0.5).astype(xp.int32)


def mu_law_decode(codes: ArrayLike, quantization_channels: int = QUANTIZATION_CHANNELS) -> np.ndarray:
    """Mu-law codes as float32 audio in [-1, 1], the inverse of :func:`mu_law_encode`.

    f = 2·code/μ - 1 and x = sign(f)·((1 + μ)^|f| - 1)/μ; encoding the result gives back
    the same codes. Codes must be integers in ``[0, μ]`` (codes outside decode beyond ±1);
    only traced jax values cannot be checked.
    """
    mu = require_int("quantization_channels", quantization_channels, minimum=2,
                     maximum=_MAX_QUANTIZATION_CHANNELS) - 1
    xp = _array_module(codes)
    codes = xp.asarray(codes)
    if not xp.issubdtype(codes.dtype, xp.integer):
        raise TypeError(f"codes must hold integer mu-law codes in [0, {mu}], got dtype {codes.dtype}")
    values = _readable_values(codes)
    if values is not None:
        outside = (values < 0) | (values > mu)
        if outside.any():
            index = _first_index(outside)
            raise ValueError(f"codes must lie in [0, {mu}] for quantization_channels={mu + 1}, "
                             f"got {values[index]} at index {index}")
    float_codes = codes.astype(xp.float64 if xp is np else xp.float32)
    companded = (2 * float_codes - mu) / mu  # 2c - μ is exact, so the centre codes keep their precision.
    audio = xp.sign(companded) * xp.expm1(xp.abs(companded) * math.log1p(mu)) / mu
    return audio.astype(xp.float32)


def check_audio(audio: ArrayLike, *, name: str = "audio", sample_rate: int | None = None,
                expected_rate: int | None = None) -> np.ndarray:
    """``audio`` as float32 mono ``[T]`` in [-1, 1], or a TypeError/ValueError saying what is wrong.

    With both ``sample_rate`` (the audio's) and ``expected_rate`` (the model's) given, they
    must match: audio at the wrong rate plays at the wrong pitch, and nothing later can tell.
    """
    for argument, rate in (("sample_rate", sample_rate), ("expected_rate", expected_rate)):
        if rate is not None:
            require_int(argument, rate, minimum=1)
    if sample_rate is not None and expected_rate is not None and sample_rate != expected_rate:
        raise ValueError(f"{name} has sample rate {sample_rate} Hz but {expected_rate} Hz is expected; "
                         f"resample it first, e.g. resample(audio, {sample_rate}, {expected_rate})")
    audio = np.asarray(audio)
    if audio.dtype.kind != "f":
        hint = f" (integer PCM? scale it, e.g. audio / {2 ** (8 * audio.dtype.itemsize - 1)})" \
            if audio.dtype.kind == "i" else ""
        raise TypeError(f"{name} must hold float samples in [-1, 1], got dtype {audio.dtype}{hint}")
    if audio.ndim == 2:
        channels_last = audio.shape[1] <= audio.shape[0]
        channels = audio.shape[1] if channels_last else audio.shape[0]
        what = {1: "one channel with an extra axis", 2: "stereo"}.get(channels, f"{channels}-channel audio")
        mix = "to_mono(audio)" if channels_last else "to_mono(audio.T)"
        raise ValueError(f"{name} has shape {audio.shape}: {what} where mono [T] is expected; mix it down with {mix}")
    if audio.ndim != 1:
        raise ValueError(f"{name} must be mono with shape [T], got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{name} is empty (T = 0); it must hold at least one sample")
    not_finite = ~np.isfinite(audio)
    if not_finite.any():
        index = _first_index(not_finite)
        raise ValueError(f"{name} holds {int(not_finite.sum())} non-finite samples (NaN or Inf); "
                         f"the first is {audio[index]} at index {index}")
    peak = int(np.argmax(np.abs(audio)))
    if abs(audio[peak]) > 1:
        raise ValueError(f"{name} must hold samples in [-1, 1], got {audio[peak]} at index {peak}; "
                         "scale it into range, e.g. audio / np.abs(audio).max()")
    return audio.astype(np.float32, copy=False)


def to_mono(audio: ArrayLike) -> np.ndarray:
    """``[T, C]`` float audio mixed down to float32 mono ``[T]`` by averaging the channels; ``[T]`` passes through."""
    audio = np.asarray(audio)
    if audio.dtype.kind != "f":
        raise TypeError(f"audio must hold float samples, got dtype {audio.dtype}")
    if audio.ndim == 1:
        return audio.astype(np.float32, copy=False)
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"audio must have shape [T, C] with C >= 1 (or be mono [T]), got shape {audio.shape}")
    return audio.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(audio: ArrayLike, orig_rate: int, new_rate: int) -> np.ndarray:
    """Mono ``audio`` at ``orig_rate`` Hz as float32 at ``new_rate`` Hz, band-limited below the lower Nyquist frequency.

    The length becomes round(T·new_rate/orig_rate), halves up. The clip, padded with
    silence, is resampled exactly in the frequency domain (its spectrum cut, or extended
    with zeros, at the lower Nyquist frequency). The padding (at least min(T, one second))
    keeps the end from wrapping round into the start, and gives a duration that is a whole
    number of periods at both rates, so the new samples fall exactly on the new rate's grid.
    Band-limiting overshoots a little at sharp edges, so the result is clipped to [-1, 1].
    """
    audio = check_audio(audio)
    orig_rate = require_int("orig_rate", orig_rate, minimum=1)
    new_rate = require_int("new_rate", new_rate, minimum=1)
    if orig_rate == new_rate:
        return audio
    divisor = math.gcd(orig_rate, new_rate)
    up, down = new_rate // divisor, orig_rate // divisor
    length = len(audio)
    new_length = (2 * length * up + down) // (2 * down)
    if new_length == 0:
        raise ValueError(f"audio of {length} samples at orig_rate={orig_rate} Hz is shorter than one sample "
                         f"at new_rate={new_rate} Hz")
    padded = -(-(length + min(length, orig_rate)) // down) * down
    padded_new = padded // down * up
    spectrum = np.fft.rfft(audio.astype(np.float64), padded)
    shared = min(padded, padded_new)
    new_spectrum = np.zeros(padded_new // 2 + 1, np.complex128)
    new_spectrum[:shared // 2 + 1] = spectrum[:shared // 2 + 1]
    if shared % 2 == 0:
        # The lower rate's Nyquist bin stands for +f and -f at once: downsampling folds
        # both halves into the new one; upsampling splits the old one between them.
        new_spectrum[shared // 2] *= 2 if padded_new < padded else 0.5
    resampled = np.fft.irfft(new_spectrum, padded_new)[:new_length] * (padded_new / padded)
    return np.clip(resampled, -1, 1).astype(np.float32)


def read_wav(path: str | os.PathLike, *, sample_rate: int | None = None,
             resample_to_rate: bool = True) -> tuple[np.ndarray, int]:
    """A sound file as (float32 mono ``[T]`` in [-1, 1], its sample rate); multi-channel files are mixed down.

    When ``sample_rate`` is given and the file's rate differs, the audio is resampled to it
    (and that rate returned), or with ``resample_to_rate=False`` refused with a ValueError.
    Missing, unreadable and empty files are ValueErrors naming the file.
    """
    where = os.fspath(path)
    if sample_rate is not None:
        require_int("sample_rate", sample_rate, minimum=1)
    if not os.path.isfile(where):
        raise ValueError(f"{where!r} does not exist or is not a file")
    try:
        frames, rate = soundfile.read(where, dtype="float32", always_2d=True)
    except soundfile.SoundFileError as exc:
        raise ValueError(f"{where!r} cannot be read as audio: {exc}") from None
    if len(frames) == 0:
        raise ValueError(f"{where!r} holds no audio (0 frames)")
    audio = check_audio(to_mono(frames), name=f"audio in {where!r}")
    if sample_rate is not None and rate != sample_rate:
        if not resample_to_rate:
            raise ValueError(f"{where!r} has sample rate {rate} Hz but sample_rate={sample_rate} is expected; "
                             "pass resample_to_rate=True to resample it")
        audio, rate = resample(audio, rate, sample_rate), sample_rate
    return audio, rate


def write_wav(path: str | os.PathLike, audio: ArrayLike, sample_rate: int) -> None:
    """Writes mono ``audio`` to ``path`` as a 16-bit PCM WAV file, creating its parent folders.

    Samples become round(x·32768), with 1.0 clipped to 32767: the grid :func:`read_wav`
    reads back, so audio read from a 16-bit file is written back bit for bit.
    """
    audio = check_audio(audio)
    sample_rate = require_int("sample_rate", sample_rate, minimum=1)
    pcm = np.clip(np.round(audio.astype(np.float64) * _PCM16_SCALE), -_PCM16_SCALE, _PCM16_SCALE - 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(os.fspath(path), pcm.astype(np.int16), sample_rate, subtype="PCM_16", format="WAV")


def fit_length(audio: ArrayLike, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``audio`` trimmed (keeping its start) or padded with silence to exactly ``length`` samples.

    Returns (float32 ``[length]``, int32 mask ``[length]``: 1 on real samples, 0 on padding).
    """
    audio = check_audio(audio)
    length = require_int("length", length, minimum=1)
    kept = min(len(audio), length)
    fitted, mask = np.zeros(length, np.float32), np.zeros(length, np.int32)
    fitted[:kept], mask[:kept] = audio[:kept], 1
    return fitted, mask


def frame_windows(audio: ArrayLike, length: int, *, hop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``audio`` cut into float32 windows ``[n, length]`` starting every ``hop`` samples, and their int32 masks.

    ``hop`` defaults to ``length`` (no overlap) and may not exceed it, which would skip the
    samples between windows. Windows go on until one reaches the end, so every sample is in
    one; that last window is padded with silence (mask 0, as in :func:`fit_length`), and
    audio shorter than ``length`` gives a single padded window.
    """
    audio = check_audio(audio)
    length = require_int("length", length, minimum=1)
    hop = length if hop is None else require_int("hop", hop, minimum=1)
    if hop > length:
        raise ValueError(f"hop must be at most length={length}, so no sample falls between windows, got hop={hop}")
    count = 1 + -(-max(len(audio) - length, 0) // hop)
    padded, mask = fit_length(audio, (count - 1) * hop + length)
    rows = np.arange(count)[:, None] * hop + np.arange(length)
    return padded[rows], mask[rows]


def load_fsdd(root: str | os.PathLike, *, sample_rate: int = 8000, length: int = 4096,
              digits: Iterable[int] | None = None, speakers: str | Iterable[str] | None = None) -> AudioData:
    """The Free Spoken Digit Dataset: one ``length``-sample clip of 256-channel mu-law codes per recording.

    ``root`` is the dataset folder or its ``recordings`` subfolder of ``{digit}_{speaker}_{index}.wav``
    files (8 kHz mono). Each recording is resampled if ``sample_rate`` differs, fit to
    ``length`` by :func:`fit_length` and encoded. Gives 'waveform', 'mask', 'labels' (the
    digits), 'speakers' and 'paths', in (digit, speaker, index) order so every load is the
    same. ``digits`` and ``speakers`` keep only those recordings.
    """
    sample_rate = require_int("sample_rate", sample_rate, minimum=1)
    length = require_int("length", length, minimum=1)
    recordings = _fsdd_recordings(root)
    if digits is not None:
        digits = set(digits)
        if not digits or not digits <= set(_FSDD_DIGITS):
            raise ValueError(f"digits must be a non-empty collection of ints in 0..9, got {sorted(digits, key=str)}")
        recordings = [recording for recording in recordings if recording[0] in digits]
    if speakers is not None:
        wanted = _names("speakers", speakers)
        _check_known("speakers", wanted, {recording[1] for recording in recordings})
        recordings = [recording for recording in recordings if recording[1] in wanted]
    if not recordings:
        raise ValueError(f"no FSDD recordings in {os.fspath(root)!r} match digits={digits} and speakers={speakers}")
    clips, masks = zip(*(fit_length(read_wav(path, sample_rate=sample_rate)[0], length)
                         for _, _, _, path in recordings))
    return {"waveform": mu_law_encode(np.stack(clips)), "mask": np.stack(masks),
            "labels": np.array([digit for digit, _, _, _ in recordings], np.int32),
            "speakers": np.array([speaker for _, speaker, _, _ in recordings], np.str_),
            "paths": np.array([os.fspath(path) for _, _, _, path in recordings], np.str_)}


def load_wav_folder(root: str | os.PathLike, *, sample_rate: int, length: int, hop: int | None = None) -> AudioData:
    """Every ``.wav`` file under ``root`` (recursively, in sorted path order) as windows of 256-channel mu-law codes.

    Each file is mixed to mono, resampled to ``sample_rate`` and cut by :func:`frame_windows`;
    each window is a row of 'waveform' and 'mask', with 'paths' naming its file. When all
    files lie in subfolders (``root/<class>/...``), the first folder is the class: 'labels'
    index the sorted class names in 'classes'. 'classes' has one entry per class, not per
    row, so leave it out of a DataLoader (``columns=...``). Files directly in ``root`` have no label.
    """
    sample_rate = require_int("sample_rate", sample_rate, minimum=1)
    length = require_int("length", length, minimum=1)
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"wav folder {os.fspath(root)!r} does not exist or is not a directory")
    paths = sorted((path for path in folder.rglob("*") if path.suffix.lower() == ".wav" and path.is_file()),
                   key=lambda path: path.relative_to(folder).parts)
    if not paths:
        raise ValueError(f"{os.fspath(root)!r} holds no .wav files")
    example_by_nesting = {len(path.relative_to(folder).parts) > 1: os.fspath(path) for path in paths}
    if len(example_by_nesting) == 2:
        raise ValueError(f"{os.fspath(root)!r} mixes files in class subfolders ({example_by_nesting[True]!r}) "
                         f"with files outside any ({example_by_nesting[False]!r}); put all of them in class "
                         "folders or none")
    waveforms, masks, row_paths, row_classes = [], [], [], []
    for path in paths:
        windows, window_masks = frame_windows(read_wav(path, sample_rate=sample_rate)[0], length, hop=hop)
        waveforms.append(windows)
        masks.append(window_masks)
        row_paths += [os.fspath(path)] * len(windows)
        row_classes += [path.relative_to(folder).parts[0]] * len(windows)
    data = {"waveform": mu_law_encode(np.concatenate(waveforms)), "mask": np.concatenate(masks),
            "paths": np.array(row_paths, np.str_)}
    if True in example_by_nesting:
        classes = sorted(set(row_classes))
        data["labels"] = np.array([classes.index(name) for name in row_classes], np.int32)
        data["classes"] = np.array(classes, np.str_)
    return data


def split_by_speaker(data: Mapping[str, ArrayLike], val_speakers: str | Iterable[str]) -> tuple[AudioData, AudioData]:
    """(train, val): the rows of ``data`` spoken by ``val_speakers`` make val, all others train.

    Holding out whole speakers measures how a model does on voices it never heard, which a
    split of one speaker's recordings across both sides cannot. Every array is split by the
    same rows, so each needs the leading length of 'speakers'.
    """
    if not isinstance(data, Mapping) or "speakers" not in data:
        raise TypeError(f"data must be a dict of equal-length arrays with a 'speakers' entry, got {data!r:.80}")
    arrays = {key: np.asarray(value) for key, value in data.items()}
    lengths = {key: array.shape[0] if array.ndim else None for key, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"data must hold arrays with one shared leading length, got lengths {lengths}")
    speakers = arrays["speakers"]
    wanted = _names("val_speakers", val_speakers)
    _check_known("val_speakers", wanted, set(speakers.tolist()))
    held_out = np.isin(speakers, sorted(wanted))
    if held_out.all() or not held_out.any():
        side = "train" if held_out.any() else "val"
        raise ValueError(f"val_speakers={sorted(wanted)} leaves {side} empty; the data's speakers are "
                         f"{sorted(set(speakers.tolist()))}")
    return ({key: array[~held_out] for key, array in arrays.items()},
            {key: array[held_out] for key, array in arrays.items()})


def _array_module(array: Any) -> ModuleType:
    """jax.numpy for jax arrays and tracers, numpy for everything else (jax is never imported here for it)."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(array, jax.Array):
        return jax.numpy
    return np


def _readable_values(array: Any) -> np.ndarray | None:
    """``array``'s values as numpy, copied to the host for a concrete jax array; None for a
    jax tracer, whose values do not exist until the compiled code runs."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(array, jax.core.Tracer):
        return None
    return np.asarray(array)


def _fsdd_recordings(root: str | os.PathLike) -> list[tuple[int, str, int, Path]]:
    """(digit, speaker, index, path) of every recording under an FSDD folder, sorted."""
    folder = Path(root) / "recordings" if (Path(root) / "recordings").is_dir() else Path(root)
    if not folder.is_dir():
        raise ValueError(f"FSDD folder {os.fspath(root)!r} does not exist or is not a directory")
    recordings = []
    for path in folder.glob("*.wav"):
        match = _FSDD_NAME.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{os.fspath(path)!r} is not named like an FSDD recording, "
                             "{digit}_{speaker}_{index}.wav")
        recordings.append((int(match["digit"]), match["speaker"], int(match["index"]), path))
    if not recordings:
        raise ValueError(f"{os.fspath(folder)!r} holds no .wav files; root must be the FSDD folder "
                         "or its recordings subfolder")
    return sorted(recordings)


def _names(argument: str, names: str | Iterable[str]) -> set[str]:
    """A set of names from one name or an iterable of them."""
    names = {names} if isinstance(names, str) else set(names)
    if not names or not all(isinstance(name, str) for name in names):
        raise TypeError(f"{argument} must be a name or a non-empty collection of names, got {names!r}")
    return names


def _check_known(argument: str, names: set[str], known: set[str]) -> None:
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"{argument} has unknown speakers {unknown}; the known speakers are {sorted(known)}")


def _first_index(flags: np.ndarray) -> int | tuple[int, ...]:
    """Index of the first True in ``flags``: an int for 1-D arrays, a tuple otherwise."""
    index = np.unravel_index(int(np.argmax(flags)), flags.shape)
    return int(index[0]) if len(index) == 1 else tuple(int(i) for i in index)

