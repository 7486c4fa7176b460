"""Text data: a byte-level tokenizer (no files needed) and fixed-length training windows."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Iterable

import numpy as np


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
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def read_text_files(paths: Iterable[str | os.PathLike]) -> str:
    """Concatenate text files (UTF-8, undecodable bytes replaced); errors name the file."""
    parts = []
    for path in paths:
        try:
            parts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise OSError(f"cannot read text file {os.fspath(path)!r}: {exc.strerror}") from exc
    if not parts or not any(parts):
        raise ValueError("no text: the given files are missing or empty")
    return "\n".join(parts)


def stdlib_corpus(max_bytes: int = 4_000_000) -> str:
    """The Python standard library's own ``.py`` sources: a corpus every machine has."""
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
    tokens, so the model also learns to predict a window's first real token.
    """
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length={length!r} must be an int >= 2")
    ids = np.asarray(ids, np.int32)
    body = length - 1 if bos_token_id is not None else length
    count = len(ids) // body
    if count == 0:
        raise ValueError(f"a stream of {len(ids)} tokens is too short for one window of length {length}")
    windows = ids[:count * body].reshape(count, body)
    if bos_token_id is not None:
        windows = np.concatenate([np.full((count, 1), bos_token_id, np.int32), windows], axis=1)
    return windows
