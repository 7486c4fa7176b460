"""Text data: tokenizers, fixed-length training examples and text data sets.

Every tokenizer follows :class:`Tokenizer`: the special ids a model and its data must
agree on, ``encode``/``decode``, and JSON ``save``/``load`` (never pickle, so loading a
tokenizer file cannot run code).
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from artrainer.validation import require_int

#: BPETokenizer's special tokens, in the order they get ids 0, 1, 2.
BPE_SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>")


@runtime_checkable
class Tokenizer(Protocol):
    """What models, ``preprocess`` and generation need from a tokenizer."""

    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the non-special ids; special and out-of-vocabulary ids are dropped."""

    def save(self, path: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; BOS, EOS and PAD follow. Any text round-trips."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; special ids are dropped, broken UTF-8 is replaced."""
        return bytes(i for i in _id_list(ids) if 0 <= i < 256).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        _write_json(path, {"type": "ByteTokenizer"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ByteTokenizer:
        _read_json(path, "ByteTokenizer")
        return cls()


@dataclass(frozen=True)
class CharTokenizer:
    """One id per character of the training text (sorted), then BOS, EOS and PAD.

    The classic tiny-Shakespeare setup: a 68-token vocabulary, so a small model spends
    its capacity on the text rather than on a large embedding table.
    """

    chars: str
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.chars, str) or not self.chars:
            raise ValueError(f"chars must be a non-empty str, got {self.chars!r}")
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("chars must be sorted distinct characters; build one with CharTokenizer.fit(text)")
        object.__setattr__(self, "_ids", {char: i for i, char in enumerate(self.chars)})

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is empty: a character vocabulary needs at least one character")
        return cls("".join(sorted(set(text))))

    @property
    def bos_token_id(self) -> int:
        return len(self.chars)

    @property
    def eos_token_id(self) -> int:
        return len(self.chars) + 1

    @property
    def pad_token_id(self) -> int:
        return len(self.chars) + 2

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 3

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[char] for char in text]
        except KeyError as missing:
            char = missing.args[0]
            raise ValueError(f"character {char!r} (at index {text.index(char)}) is not in this "
                             f"CharTokenizer's vocabulary of {len(self.chars)} characters") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in _id_list(ids) if 0 <= i < len(self.chars))

    def save(self, path: str | os.PathLike) -> None:
        _write_json(path, {"type": "CharTokenizer", "chars": self.chars})

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        data = _read_json(path, "CharTokenizer", keys=("chars",))
        try:
            return cls(data["chars"])
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)!r} is not a valid CharTokenizer file: {exc}") from None


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained locally with Hugging Face ``tokenizers``.

    Text is split into UTF-8 bytes before merging and there is no normaliser, so every
    string round-trips exactly. Special-token strings typed in the text (``"<eos>"``) are
    encoded as ordinary bytes: only ``preprocess`` and generation emit special ids.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        reason = _bpe_mismatch(tokenizer)
        if reason:
            raise ValueError(f"BPETokenizer needs a byte-level BPE tokenizer with special tokens "
                             f"{list(BPE_SPECIAL_TOKENS)}; this one {reason}")
        tokenizer.encode_special_tokens = True  # Not serialised, so set on every construction.
        self._tokenizer = tokenizer
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            tokenizer.token_to_id(token) for token in BPE_SPECIAL_TOKENS)
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from ``texts`` until ``vocab_size`` tokens (fewer if the corpus runs out).

        ``vocab_size`` counts the 256 byte tokens and the 3 special tokens, so it must be
        at least 259. ``texts`` is streamed, never held in memory at once.
        """
        minimum = 256 + len(BPE_SPECIAL_TOKENS)
        vocab_size = require_int("vocab_size", vocab_size, minimum=minimum,
                                 why=f"256 byte tokens + {len(BPE_SPECIAL_TOKENS)} special tokens")
        min_frequency = require_int("min_frequency", min_frequency, minimum=1)
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of strings, not a single str")
        tokenizer = tokenizers.Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(BPE_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        seen = _CharCount(texts)
        tokenizer.train_from_iterator(seen, trainer)
        if not seen.chars:
            raise ValueError("texts is empty: BPE needs some text to learn merges from")
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([i for i in _id_list(ids) if 0 <= i < self.vocab_size],
                                      skip_special_tokens=True)

    def save(self, path: str | os.PathLike) -> None:
        """The standard ``tokenizer.json`` format, so other tools can load it too."""
        Path(path).write_text(self._tokenizer.to_str(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        text = _read_text(path)
        try:
            tokenizer = tokenizers.Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files.
            raise ValueError(f"{os.fspath(path)!r} is not a tokenizers JSON file: {exc}") from None
        try:
            return cls(tokenizer)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)!r}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return self._tokenizer.to_str() == other._tokenizer.to_str()

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def preprocess(texts: Iterable[str], tokenizer: Tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Fixed-length examples ``[BOS] + tokens + [EOS]``, padded with PAD or truncated.

    Returns ``{'sequences': int32 [N, max_length], 'mask': int32 [N, max_length]}`` with
    mask 1 on real tokens (BOS and EOS included), ready for ``DataLoader``. Truncated
    rows lose their EOS, as in the guide: the model never learns to stop mid-thought.
    """
    max_length = require_int("max_length", max_length, minimum=2, why="room for BOS and EOS")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single str")
    rows = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold strings; texts[{index}] is a {type(text).__name__}")
        rows.append([tokenizer.bos_token_id, *tokenizer.encode(text), tokenizer.eos_token_id][:max_length])
    if not rows:
        raise ValueError("texts is empty: nothing to preprocess")
    lengths = np.array([len(row) for row in rows])
    mask = np.arange(max_length) < lengths[:, None]
    sequences = np.full(mask.shape, tokenizer.pad_token_id, np.int32)
    sequences[mask] = np.concatenate(rows)  # Row-major fill of each row's prefix.
    return {"sequences": sequences, "mask": mask.astype(np.int32)}


def load_text_dataset(path_or_name: str | os.PathLike, *, split: str = "train", column: str = "text",
                      data_files: Any = None) -> list[str]:
    """The ``column`` strings of a data set, through Hugging Face ``datasets``.

    ``path_or_name`` is one of:

    * a ``.txt`` file or a directory of them (searched recursively): one string per line,
      blank lines included, loaded with the ``text`` builder as split ``'train'``;
    * a directory written by ``Dataset.save_to_disk`` (returned whole) or
      ``DatasetDict.save_to_disk`` (``split`` selects);
    * anything else goes to ``datasets.load_dataset(path_or_name, data_files=data_files,
      split=split)``: a builder such as ``'csv'`` with ``data_files``, or a hub name,
      which needs the hub to be reachable.
    """
    import datasets  # Slow to import; only this function needs it.

    where = os.fspath(path_or_name)
    path = Path(where)
    if path.is_dir() and (path / datasets.config.DATASETDICT_JSON_FILENAME).is_file():
        splits = datasets.load_from_disk(where)
        if split not in splits:
            raise ValueError(f"split {split!r} is not in the saved DatasetDict {where!r}; "
                             f"it has {list(splits)}")
        table = splits[split]
    elif path.is_dir() and (path / datasets.config.DATASET_STATE_JSON_FILENAME).is_file():
        table = datasets.load_from_disk(where)
    elif path.exists():
        files = sorted(map(str, path.rglob("*.txt"))) if path.is_dir() else [where]
        if not files:
            raise ValueError(f"directory {where!r} holds no .txt files and is no saved data set")
        table = datasets.load_dataset("text", data_files=files, split=split)
    elif isinstance(path_or_name, os.PathLike) or path.is_absolute() or path.suffix == ".txt":
        raise FileNotFoundError(f"no such file or directory: {where!r}")  # Not a hub name: fail here.
    else:
        table = datasets.load_dataset(where, data_files=data_files, split=split)

    if column not in table.column_names:
        raise ValueError(f"column {column!r} is not in data set {where!r}; it has {table.column_names}")
    texts = list(table[column])
    if not texts:
        raise ValueError(f"data set {where!r} (split {split!r}) is empty")
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"column {column!r} of data set {where!r} does not hold only strings")
    return texts


class UndecodableTextError(ValueError):
    """A text file holds bytes its encoding cannot decode; names the file and byte offset."""


def read_text_files(paths: Iterable[str | os.PathLike], *, encoding: str = "utf-8",
                    errors: str = "strict") -> str:
    """Concatenate text files; errors name the file.

    Undecodable bytes raise :class:`UndecodableTextError` with the file and the byte
    offset (``errors="strict"``, the default) instead of slipping U+FFFD into the
    vocabulary; ``errors="replace"`` or ``"ignore"`` chooses that explicitly.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a list of file paths, not a single {type(paths).__name__} "
                        f"({paths!r}); pass [path]")
    parts = []
    for path in paths:
        try:
            text = Path(path).read_bytes().decode(encoding, errors=errors)
            parts.append(text.replace("\r\n", "\n").replace("\r", "\n"))  # universal newlines, as open() reads
        except OSError as exc:
            raise OSError(f"cannot read text file {os.fspath(path)!r}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise UndecodableTextError(
                f"{os.fspath(path)} is not valid {encoding} text: byte 0x{exc.object[exc.start]:02x} at "
                f"byte offset {exc.start} cannot be decoded ({exc.reason})") from None
        except LookupError as exc:
            raise ValueError(f"encoding={encoding!r} / errors={errors!r} is not a known codec or error "
                             f"handler ({exc})") from None
    if not parts or not any(parts):
        raise ValueError("no text: the given files are missing or empty")
    return "\n".join(parts)


def stdlib_corpus(max_bytes: int = 4_000_000) -> str:
    """The Python standard library's own ``.py`` sources: a corpus every machine has."""
    max_bytes = require_int("max_bytes", max_bytes, minimum=0)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    text, size = [], 0
    for path in files:
        chunk = path.read_text(encoding="utf-8", errors="replace")
        text.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    return "\n".join(text)[:max_bytes]


def token_windows(ids: np.ndarray | list[int], length: int, *, bos_token_id: int | None = None) -> np.ndarray:
    """Cut a token stream into non-overlapping int32 windows ``[N, length]``.

    With ``bos_token_id`` every window starts with BOS followed by ``length - 1``
    tokens, so the model also learns to predict a window's first real token. ``ids`` must
    be one sequence of integer token ids in int32's range.
    """
    length = require_int("length", length, minimum=2)
    ids = np.asarray(list(ids) if isinstance(ids, Iterator) else ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be one sequence of token ids (1-D), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
    int32 = np.iinfo(np.int32)
    if ids.size and (ids.min() < 0 or ids.max() > int32.max):
        raise ValueError(f"ids must lie in [0, {int32.max}], got values in [{ids.min()}, {ids.max()}]")
    ids = ids.astype(np.int32)
    body = length - 1 if bos_token_id is not None else length
    count = len(ids) // body
    if count == 0:
        raise ValueError(f"a stream of {len(ids)} tokens is too short for one window of length {length}")
    windows = ids[:count * body].reshape(count, body)
    if bos_token_id is not None:
        windows = np.concatenate([np.full((count, 1), bos_token_id, np.int32), windows], axis=1)
    return windows


class _CharCount:
    """Streams texts through, counting characters, so ``train`` can reject an empty corpus
    without holding it in memory."""

    def __init__(self, texts: Iterable[str]):
        self._texts = texts
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must hold strings, got a {type(text).__name__}")
            self.chars += len(text)
            yield text


def _bpe_mismatch(tokenizer: tokenizers.Tokenizer) -> str | None:
    """Why ``tokenizer`` cannot round-trip arbitrary text as a BPETokenizer, or None."""
    if not isinstance(tokenizer.model, models.BPE):
        return f"has a {type(tokenizer.model).__name__} model"
    if tokenizer.normalizer is not None:
        return "has a normalizer, which would change the text"
    if not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel):
        return "lacks a ByteLevel pre-tokenizer"
    if not isinstance(tokenizer.decoder, decoders.ByteLevel):
        return "lacks a ByteLevel decoder"
    missing = [token for token in BPE_SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    return f"lacks special tokens {missing}" if missing else None


def _id_list(ids: Iterable[int]) -> list[int]:
    """Token ids as Python ints, from a list or a 1-D numpy / JAX array alike."""
    ids = np.asarray(list(ids) if isinstance(ids, Iterator) else ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"ids must be one sequence of token ids, got shape {ids.shape}")
    return ids.tolist()


def _write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data), encoding="utf-8")


def _read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a UTF-8 JSON tokenizer file: {exc}") from None


def _read_json(path: str | os.PathLike, kind: str, *, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, checked to say ``"type": kind`` and to hold ``keys``."""
    where = os.fspath(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where!r} is not a JSON tokenizer file: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where!r} holds a JSON {type(data).__name__}, not a tokenizer object")
    if data.get("type") != kind:
        raise ValueError(f"{where!r} holds a tokenizer of type {data.get('type')!r}, not {kind!r}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"{where!r} lacks the keys {missing} of a {kind} file")
    return data
