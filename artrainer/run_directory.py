"""A recipe's run directory (``--out``): claimed by one process, checked before it is written.

The rules keep a user's runs safe: a fresh run never lands in a directory that already
holds one (unless ``--overwrite`` says so), two processes never train into the same
directory at once, and a resume compares the configuration it would write with what the
directory holds before it changes a single byte.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from typing import Any

#: What a training run writes directly under its directory (and ``--overwrite`` removes).
RUN_ARTIFACTS = ("checkpoints", "logs", "samples", "model_config.json", "tokenizer.json", "config.yaml")


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked: it holds another run, or is in use."""


class RunDirectory:
    """The directory ``path`` of one training run.

    ``claim`` decides whether this run may use it; ``lock`` keeps other processes out
    while it trains (an ``flock`` on the directory itself, which the kernel releases when
    the process ends, however it ends, so a crashed run leaves nothing stuck).
    """

    def __init__(self, path: str | os.PathLike, *, flag: str = "--out"):
        self.path = os.fspath(path)
        self.flag = flag
        self._lock_fd: int | None = None
        self._created = False

    def holds_run(self) -> bool:
        """Whether a training run has written anything here."""
        return any(os.path.exists(os.path.join(self.path, name)) for name in RUN_ARTIFACTS)

    def claim(self, *, resume: str | None, overwrite: bool) -> None:
        """Take the directory for a run: refuse a fresh run into an existing one.

        ``resume`` continues what is there; ``overwrite`` removes the earlier run's
        artifacts (``RUN_ARTIFACTS``, nothing else) once the lock is held.
        """
        if resume is not None and overwrite:
            raise RunDirectoryError("--resume continues the run in --out and --overwrite deletes it; give one")
        if resume is None and not overwrite and self.holds_run():
            raise RunDirectoryError(
                f"{self.flag} {self.path} already holds a run; continue it with --resume last, "
                f"start over with --overwrite (deletes it), or choose another {self.flag}")
        self.lock()
        if overwrite:
            for name in RUN_ARTIFACTS:
                target = os.path.join(self.path, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)

    def lock(self) -> None:
        """Hold the directory for this process (created if needed) until it exits."""
        if self._lock_fd is not None:
            return
        self._created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirectoryError(f"another process is training into {self.flag} {self.path} right now; "
                                        f"wait for it to finish or choose another {self.flag}") from None
            raise
        self._lock_fd = fd

    def release(self) -> None:
        """Let other processes in; a directory this run created and left empty (it failed
        before writing anything) is removed, so a mistake leaves no trace."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            if self._created and not os.listdir(self.path):
                os.rmdir(self.path)

    def check_json(self, name: str, expected: dict[str, Any], *, what: str) -> bool:
        """Compare ``expected`` with the JSON file ``name`` here; True if it is there and equal.

        A file with other contents means this run's configuration is not the saved run's:
        a :class:`RunDirectoryError` lists the keys that differ, before anything is written.
        """
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as file:
            saved = json.load(file)
        if saved == expected:
            return True
        if isinstance(saved, dict):
            keys = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
            differences = ", ".join(f"{k}: saved {saved.get(k)!r}, now {expected.get(k)!r}" for k in keys)
        else:
            differences = "the file differs"
        raise RunDirectoryError(f"the run in {self.flag} {self.path} was trained with another {what} "
                                f"({differences}); resume with the flags it was trained with "
                                f"(its config.yaml), or start a new run with another {self.flag}")

    def write_text(self, name: str, text: str) -> str:
        """Write ``name`` atomically (a temporary file renamed over it); returns its path."""
        path = os.path.join(self.path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(name)}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    def write_json(self, name: str, data: dict[str, Any]) -> str:
        return self.write_text(name, json.dumps(data, indent=2) + "\n")


def next_free_name(directory: str, stem: str, suffix: str) -> str:
    """``<directory>/<stem>_<n><suffix>`` with the smallest ``n`` no earlier output took (a
    file ``<stem>_<n><suffix>``, or a set ``<stem>_<n>_*``): outputs never overwrite outputs."""
    taken = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    n = 0
    while f"{stem}_{n:03d}{suffix}" in taken or any(name.startswith(f"{stem}_{n:03d}_") for name in taken):
        n += 1
    return os.path.join(directory, f"{stem}_{n:03d}{suffix}")
