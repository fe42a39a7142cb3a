"""One way to describe a built object: ``class_path``/``init_args``, recorded at construction.

Configs in ``configs/`` build objects through jsonargparse from ``class_path``/``init_args``
mappings. :class:`Configurable` closes the loop in the other direction: a class that mixes
it in records the arguments every instance was constructed with (bound to the constructor's
signature, defaults filled in), whether it was built by LightningCLI or directly in Python,
and :meth:`Configurable.init_config` returns them in the same form. Nested configurable
arguments (a codec's Mel-VAE, a pipeline's network) are recorded as nested
``class_path``/``init_args`` mappings. Nothing is copied by hand, so a new constructor
argument can never be forgotten.

:func:`build` is the inverse: it instantiates such a mapping with the same jsonargparse
machinery LightningCLI uses, so types are checked against the signatures and unknown or
misspelt arguments are refused.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["Configurable", "build", "check_class_paths", "dataclass_config", "ConfigError", "ALLOWED_PREFIXES"]

T = TypeVar("T")

# Model folders may come from the Hub; building only foley's own classes keeps a downloaded
# JSON file from naming an arbitrary importable callable.
ALLOWED_PREFIXES = ("foley.",)


class ConfigError(ValueError):
    """A ``class_path``/``init_args`` description that cannot be recorded or built."""


class _Unrecordable:
    """Stands for a constructor argument that has no JSON form (reported by ``init_config``)."""

    def __init__(self, value: Any) -> None:
        self.description = f"{type(value).__module__}.{type(value).__qualname__}"


def _to_plain(value: Any) -> Any:
    """JSON form of a constructor argument, or :class:`_Unrecordable`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Configurable):
        return value.init_config()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        items = [_to_plain(item) for item in value]
        return _Unrecordable(value) if any(isinstance(i, _Unrecordable) for i in items) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items = {k: _to_plain(v) for k, v in value.items()}
        return _Unrecordable(value) if any(isinstance(i, _Unrecordable) for i in items.values()) else items
    return _Unrecordable(value)


class Configurable:
    """Mixin: instances remember their constructor arguments as plain data.

    The arguments are bound in ``__new__`` (which receives the same arguments as
    ``__init__``), so subclasses need no decorator and no call to make; the most derived
    class's signature is the one recorded.
    """

    _foley_init_args: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any):
        instance = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(instance, *args, **kwargs)
        except TypeError:
            # Copies and unpickling call __new__ without arguments; their state (with the
            # recorded arguments) is restored afterwards. A real call with bad arguments
            # fails in __init__ with its own message.
            return instance
        bound.apply_defaults()
        recorded: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update({k: _to_plain(v) for k, v in value.items()})
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    recorded[name] = _Unrecordable(value)
            else:
                recorded[name] = _to_plain(value)
        object.__setattr__(instance, "_foley_init_args", recorded)
        return instance

    def init_config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` that rebuilds this object's architecture.

        Raises:
            ConfigError: an argument has no JSON form (e.g. a module that is not
                :class:`Configurable`).
        """
        cls = type(self)
        class_path = f"{cls.__module__}.{cls.__qualname__}"
        recorded = getattr(self, "_foley_init_args", None)
        if recorded is None:
            raise ConfigError(f"{class_path} was not built through its constructor; its arguments are unknown")
        bad = {k: v.description for k, v in recorded.items() if isinstance(v, _Unrecordable)}
        if bad:
            raise ConfigError(
                f"{class_path} was built with arguments that cannot be written as JSON: {bad}; "
                "pass plain values or foley modules (which record their own arguments)"
            )
        return {"class_path": class_path, "init_args": _copy(recorded)}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def check_class_paths(config: Any, where: str, prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> None:
    """Refuse ``class_path`` entries outside ``prefixes`` anywhere in ``config``.

    Args:
        config: A ``class_path``/``init_args`` mapping (nested ones are checked too).
        where: The file the config came from, for the error message.
        prefixes: Accepted module prefixes.

    Raises:
        ConfigError: a class outside ``prefixes`` is named.
    """
    if isinstance(config, Mapping):
        path = config.get("class_path")
        if isinstance(path, str) and not path.startswith(prefixes):
            raise ConfigError(
                f"{where}: class_path {path!r} is outside {', '.join(prefixes)}; model folders may only "
                "build foley's own classes"
            )
        for value in config.values():
            check_class_paths(value, where, prefixes)
    elif isinstance(config, list):
        for value in config:
            check_class_paths(value, where, prefixes)


def build(config: Mapping[str, Any], base: type[T], where: str = "config") -> T:
    """Instantiate a ``class_path``/``init_args`` mapping with jsonargparse (as LightningCLI does).

    Args:
        config: The description; nested ``class_path`` mappings are built too.
        base: The class the result must be (a subclass of).
        where: What to call the description in error messages (e.g. its file).

    Raises:
        ConfigError: the description does not fit the class's signature, or names a class
            outside foley.
    """
    from jsonargparse import ArgumentParser

    if not isinstance(config, Mapping) or not isinstance(config.get("class_path"), str):
        raise ConfigError(f"{where}: expected a mapping with 'class_path' and 'init_args'")
    check_class_paths(config, where)
    parser = ArgumentParser(exit_on_error=False)
    if dataclasses.is_dataclass(base):
        # Plain settings: jsonargparse builds a dataclass from its typed fields, not by class_path.
        expected = f"{base.__module__}.{base.__qualname__}"
        if config["class_path"] != expected:
            raise ConfigError(f"{where}: expected class_path {expected!r}, got {config['class_path']!r}")
        parser.add_class_arguments(base, "value", fail_untyped=False)
        value: Any = dict(config.get("init_args") or {})
    else:
        parser.add_subclass_arguments(base, "value", required=True, fail_untyped=False)
        value = dict(config)
    try:
        parsed = parser.parse_object({"value": value})
        return parser.instantiate(parsed).value
    except Exception as error:  # jsonargparse reports type and name problems as several exception types
        # jsonargparse ends with the whole given value, which the file already shows.
        reason = str(error).split("\n  Given value type:")[0]
        raise ConfigError(f"{where}: cannot build {config['class_path']}: {reason}") from error


def dataclass_config(value: Any) -> dict[str, Any]:
    """``class_path``/``init_args`` form of a settings dataclass (the inverse of :func:`build` on it)."""
    cls = type(value)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _copy(dataclasses.asdict(value))}
