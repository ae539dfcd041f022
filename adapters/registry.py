"""The adapter registry: adapters by name, built-in and third-party alike.

Every adapter, ours included, is declared in the `tth.adapters` entry-point
group (see pyproject.toml), so a third-party package adds providers by
declaring its own entries; `register()` adds one in-process. An unknown name
fails at start with the list of known names; `create` validates the options
against the adapter's `Options` model (see `adapters.options`) before building it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from adapters.base import Adapter
from adapters.errors import ConfigError
from adapters.options import parse_options

GROUP = "tth.adapters"
_registered: dict[str, type[Adapter]] = {}


def register(name: str, cls: type[Adapter]) -> None:
    """Register an adapter class in-process, under `name`."""
    _registered[name] = cls


def unregister(name: str) -> None:
    """Forget an adapter `register()` added (entry points are not affected); unknown names are ignored."""
    _registered.pop(name, None)


def known() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)} | set(_registered))


def adapter_class(name: str, where: str) -> type[Adapter]:
    if name in _registered:
        return _registered[name]
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise ConfigError(f"{where}: unknown adapter {name!r}; known: {known()}")
    try:
        cls: Any = matches[0].load()
    except ImportError as exc:
        raise ConfigError(f"{where}: adapter {name!r} cannot be loaded: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError(f"{where}: entry point {name!r} is not an Adapter subclass")
    return cls


def create(stage: str, name: str, options: Mapping[str, Any], where: str) -> Adapter:
    """Instantiate adapter `name` for `stage`; `where` is its place in the config, named by every error."""
    cls = adapter_class(name, f"{where}.adapter")
    if cls.stage.value != stage:
        raise ConfigError(f"{where}.adapter: {name!r} is a {cls.stage.value} adapter, not {stage}")
    parsed = parse_options(cls.Options, options, f"{where}.options")
    try:
        return cls(name, parsed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}.options: {exc}") from None
