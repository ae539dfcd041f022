"""Personas: named characters with a style for the LLM and default controls.

Loaded from `config/personas.yaml`. A persona's controls are one layer of the
control merge, below the turn, the pending update and the session defaults. A
persona may leave emotion fields unset so the LLM's inline hints can decide
them; one that sets them (a professional stays neutral) keeps them.

A persona may name a `portrait:` (a JPEG/PNG path, relative to the personas file):
the face of its turns on an avatar that animates portraits, unless the session sent
its own. The runtime prepares it at start like a client's portrait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from adapters.controls import ControlError, ControlPatch
from adapters.media import RenderSettings
from tth_server.errors import echo


@dataclass(frozen=True, slots=True)
class Persona:
    id: str
    name: str
    style: str
    controls: ControlPatch
    portrait: Path | None = None
    """The persona's portrait file, if it names one."""
    portrait_id: str = ""
    """That portrait once the avatar prepared it (`RenderSettings.portrait_id`); empty before or for none."""

    def render(self, settings: RenderSettings) -> RenderSettings:
        """A turn's render settings: the session's own portrait, else this persona's."""
        if settings.portrait_id or not self.portrait_id:
            return settings
        return replace(settings, portrait_id=self.portrait_id)


class PersonaCatalog:
    def __init__(self, personas: Mapping[str, Persona], default_id: str) -> None:
        if default_id not in personas:
            raise ControlError(f"session.default_persona {default_id!r} is not a persona; known: {sorted(personas)}")
        self._personas = dict(personas)
        self.default_id = default_id

    @classmethod
    def load(cls, path: Path, default_id: str) -> PersonaCatalog:
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_mapping(data.get("personas", {}), default_id, str(path), path.parent)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], default_id: str, where: str = "personas", base_dir: Path = Path(".")
    ) -> PersonaCatalog:
        personas = {}
        for pid, spec in data.items():
            spec = spec or {}
            portrait = spec.get("portrait")
            personas[pid] = Persona(
                id=pid,
                name=str(spec.get("name", pid.title())),
                style=str(spec.get("style", "")).strip(),
                controls=ControlPatch.from_mapping(spec.get("controls", {}) or {}, f"{where}: {pid}.controls"),
                portrait=base_dir / Path(str(portrait)).expanduser() if portrait else None,
            )
        return cls(personas, default_id)

    def with_portraits(self) -> list[Persona]:
        """The personas that name a portrait."""
        return [p for p in self._personas.values() if p.portrait is not None]

    def set_portrait_id(self, persona_id: str, portrait_id: str) -> None:
        self._personas[persona_id] = replace(self._personas[persona_id], portrait_id=portrait_id)

    def ids(self) -> list[str]:
        return sorted(self._personas)

    def get(self, persona_id: str, field: str = "persona_id") -> Persona:
        """The persona, or ControlError naming `field` and the known ids."""
        try:
            return self._personas[persona_id]
        except KeyError:
            raise ControlError(f"{field} {echo(persona_id)} is not a known persona; known: {self.ids()}") from None
