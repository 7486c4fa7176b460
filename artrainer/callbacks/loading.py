"""Load a user's callback from ``path/file.py:ClassName`` (what recipes' --callback takes)."""

from __future__ import annotations

import importlib.util
import json
import os

from artrainer.callbacks.base import Callback


def load_callback(spec: str) -> Callback:
    """Instantiate ``'path/file.py:ClassName'`` or ``'path/file.py:ClassName:{"json": "kwargs"}'``."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0].endswith(".py") or not parts[1].isidentifier():
        raise ValueError(f"--callback {spec!r} must look like path/file.py:ClassName "
                         "(optionally followed by :{json keyword arguments})")
    path, name = parts[0], parts[1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--callback {spec!r}: no file {path}")
    try:
        kwargs = json.loads(parts[2]) if len(parts) == 3 else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--callback {spec!r}: keyword arguments are not valid JSON ({exc})") from exc
    if not isinstance(kwargs, dict):
        raise ValueError(f"--callback {spec!r}: keyword arguments must be a JSON object")
    module_name = "artrainer_user_callback_" + os.path.splitext(os.path.basename(path))[0]
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(import_spec)
    import_spec.loader.exec_module(module)
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise TypeError(f"--callback {spec!r}: {name} in {path} is not an artrainer.Callback subclass")
    return cls(**kwargs)
