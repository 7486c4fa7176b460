"""Model configurations: one frozen dataclass per model, holding its constructor's arguments.

A model is built from keyword arguments (``TransformerAR(vocab_size=..., rngs=...)``) or
from a config (``TransformerAR(config=TransformerConfig(...), rngs=...)``), never both;
either way ``model.config`` is the validated config, ``model.hparams`` is
``dataclasses.asdict(model.config)``, and ``Model(config=Config(**model.hparams))``
rebuilds the same architecture (the recipes' ``model_config.json`` is read that way).

The config's fields are also the model's attributes (``model.hidden_dim``): they read the
config, and assigning one (``self.num_classes = 10`` in a subclass) replaces the config
by a validated copy, so ``hparams`` always says what the model was built with.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of the models' configs: frozen, checked in ``__post_init__``, JSON-able through
    :func:`dataclasses.asdict`. Checks store the normalised value (a Python int for a
    numpy int, a tuple for a JSON list) with :meth:`_store`."""

    def _store(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


class ConfigField:
    """A model attribute that reads ``model.config.<name>``; assigning it replaces the config
    by ``dataclasses.replace(config, name=value)``, which validates the new value."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, model: Any, owner: type | None = None) -> Any:
        if model is None:
            return self
        return getattr(model.config, self.name)

    def __set__(self, model: Any, value: Any) -> None:
        model.config = dataclasses.replace(model.config, **{self.name: value})


class ConfiguredModel:
    """Mixin of the models built from a :class:`ModelConfig` (``config_class``).

    A subclass that sets ``config_class`` gets a :class:`ConfigField` for each of its
    fields (unless the class defines that name itself) and ``hparams``.
    """

    config_class: ClassVar[type[ModelConfig]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config_class = vars(cls).get("config_class")
        if config_class is not None:
            for field in dataclasses.fields(config_class):
                if field.name not in vars(cls):
                    setattr(cls, field.name, ConfigField(field.name))

    @property
    def hparams(self) -> dict:
        """``dataclasses.asdict(self.config)`` (JSON-able), for loggers and run files. A property,
        not an attribute: a dict attribute would make the module's GraphDef unhashable (no
        static jit arg); the frozen config itself is hashable."""
        return dataclasses.asdict(self.config)

    def _configure(self, config: ModelConfig | None, function: Callable, arguments: Mapping[str, Any]) -> None:
        """Set ``self.config`` from what ``function`` (the constructor) was called with."""
        self.config = resolve_config(type(self).config_class, config, function, arguments, type(self).__name__)


def resolve_config(config_class: type[ModelConfig], config: ModelConfig | None, function: Callable,
                   arguments: Mapping[str, Any], model: str) -> ModelConfig:
    """``config`` itself, or a ``config_class`` of the ``arguments`` named like its fields.

    ``arguments`` are a constructor's ``locals()``; with ``config`` given, each of them must
    still be ``function``'s default (a TypeError names those that are not). Fields that are
    not among ``arguments`` keep the config's own default.
    """
    names = [field.name for field in dataclasses.fields(config_class) if field.name in arguments]
    if config is None:
        for field in dataclasses.fields(config_class):
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if required and arguments.get(field.name) is None:
                raise TypeError(f"{model} needs {field.name} (or a config={config_class.__name__}(...))")
        return config_class(**{name: arguments[name] for name in names})
    if type(config) is not config_class:
        raise TypeError(f"config must be a {config_class.__name__}; got {type(config).__name__}")
    defaults = inspect.signature(function).parameters
    given = [name for name in names if not _is_default(arguments[name], defaults[name].default)]
    if given:
        listed = ", ".join(f"{name}={arguments[name]!r}" for name in given)
        raise TypeError(f"{model} takes its configuration either as config= or as keyword arguments, not "
                        f"both; got config= and {listed} (dataclasses.replace(config, ...) changes a config)")
    return config


def _is_default(value: Any, default: Any) -> bool:
    """Whether ``value`` is the parameter's ``default`` (compared only for plain values)."""
    return value is default or (type(value) is type(default) and isinstance(value, (int, float, str))
                                and value == default)
