"""Adapter options as typed models, and the one formatter of their errors (and the server's settings').

Each adapter declares its options as a pydantic dataclass subclassing `AdapterOptions`
and names it in its class attribute `Options`:

    @dataclass(frozen=True, config=OPTIONS, kw_only=True)
    class EspeakOptions(AdapterOptions):
        voice: str = "en-us"
        workers: Annotated[int, Field(ge=1, le=8)] = 2

The options a configuration gives (`components.<stage>.options`) are validated once,
where the adapter is built: an unknown key, a mistyped value or one out of its range
fails at start with a `ConfigError` that names the key and what is allowed, e.g.
`components.tts.options.workers must be <= 8, got 12`. Adapter code reads typed
attributes (`self.options.workers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar, cast, get_args, get_origin

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from adapters.errors import ConfigError

# Every options model refuses keys it does not know; numbers given where text is expected are taken as text.
OPTIONS = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class AdapterOptions:
    """No options; a subclass declares its own (`model`, where there is one: ListModels reports it)."""


OptionsT = TypeVar("OptionsT", bound=AdapterOptions)
_VALIDATORS: dict[type[Any], TypeAdapter[Any]] = {}


def parse_options(kind: type[OptionsT], options: Mapping[str, Any] | OptionsT, where: str = "options") -> OptionsT:
    """`options` validated as `kind`; ConfigError names the key under `where` and what is allowed."""
    if isinstance(options, kind):
        return options
    validator = _VALIDATORS.get(kind)
    if validator is None:
        validator = _VALIDATORS[kind] = TypeAdapter(kind)
    try:
        parsed: OptionsT = validator.validate_python(dict(cast(Mapping[str, Any], options)))
    except ValidationError as exc:
        raise ConfigError(describe_error(exc.errors(include_url=False)[0], kind, prefix=where)) from None
    return parsed


# ---- errors -------------------------------------------------------------------------------------------------------

_KINDS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _key(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_at(root: Any, loc: tuple[int | str, ...]) -> tuple[Any, Any]:
    """(the type that holds the setting at `loc` under `root`, the setting's pydantic FieldInfo or None)."""
    holder: Any = root
    info = None
    for part in loc:
        if is_dataclass(holder) and isinstance(part, str):
            info = getattr(holder, "__pydantic_fields__", {}).get(part)
            holder = info.annotation if info is not None else None
        elif get_origin(holder) in (dict, tuple):
            info, holder = None, get_args(holder)[-1 if get_origin(holder) is dict else 0]
        else:
            return None, None
    return holder, info


def describe_error(error: Any, root: Any, *, prefix: str = "", hidden: tuple[str, ...] = ()) -> str:
    """One pydantic error about data validated as `root`: the key (under `prefix`) and what is allowed.

    `hidden` are fields of `root` not to list as allowed (they are not read from the data).
    """
    loc = tuple(error["loc"])
    key, kind, given = _key(loc, prefix), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        holder, _ = _field_at(root, loc[:-1])
        allowed = sorted(f.name for f in fields(holder) if f.name not in hidden) if is_dataclass(holder) else []
        return f"{key} is not a setting; allowed: {allowed}"
    if kind in ("literal_error", "enum"):
        return f"{key} must be one of {ctx.get('expected', '')}, got {given!r}"
    if kind in _KINDS:
        return f"{key} must be {_KINDS[kind]}, got {given!r}"
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
        _, info = _field_at(root, loc)
        hint = f" ({info.description})" if info is not None and info.description else ""
        return f"{key} must be {_BOUNDS[kind]} {bound:g}{hint}, got {given!r}"
    if kind == "missing":
        return f"{key} is required"
    if kind in ("dict_type", "dataclass_type", "dataclass_exact_type", "model_type"):
        return f"{key} must be a mapping, got {given!r}"
    if kind == "string_too_short":
        return f"{key} must not be empty"
    if kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
        return text if not key else f"{key}: {text}" if not text.startswith(key.split(".")[0]) else text
    return f"{key}: {error['msg']}" if key else str(error["msg"])


# What an adapter's constructor takes: the options as the configuration gives them, or already validated.
GivenOptions = Mapping[str, Any] | AdapterOptions
