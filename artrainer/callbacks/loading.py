"""Load a user's callback from ``path/file.py:ClassName`` (what recipes' --callback takes)."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
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
    _check_keywords(spec, cls, kwargs)
    return cls(**kwargs)


def _check_keywords(spec: str, cls: type, kwargs: dict) -> None:
    """Refuse keyword arguments ``cls`` does not take, naming the nearest one it does."""
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in accepted:
            hint = difflib.get_close_matches(key, accepted, n=1)
            raise TypeError(f"--callback {spec!r}: {cls.__name__} takes no argument {key!r}"
                            + (f"; did you mean {hint[0]!r}?" if hint else "")
                            + f" It takes: {', '.join(accepted) or 'no arguments'}")
