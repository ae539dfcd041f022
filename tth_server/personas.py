"""Personas: named characters with a style for the LLM and default controls.

Loaded from `config/personas.yaml`. A persona's controls are one layer of the
control merge, below the turn, the pending update and the session defaults. A
persona may leave emotion fields unset so the LLM's inline hints can decide
them; one that sets them (a professional stays neutral) keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tth_server.controls import ControlError, ControlPatch
from tth_server.errors import echo


@dataclass(frozen=True, slots=True)
class Persona:
    id: str
    name: str
    style: str
    controls: ControlPatch


class PersonaCatalog:
    def __init__(self, personas: Mapping[str, Persona], default_id: str) -> None:
        if default_id not in personas:
            raise ControlError(f"session.default_persona {default_id!r} is not a persona; known: {sorted(personas)}")
        self._personas = dict(personas)
        self.default_id = default_id

    @classmethod
    def load(cls, path: Path, default_id: str) -> PersonaCatalog:
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_mapping(data.get("personas", {}), default_id, str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], default_id: str, where: str = "personas") -> PersonaCatalog:
        personas = {}
        for pid, spec in data.items():
            spec = spec or {}
            personas[pid] = Persona(
                id=pid,
                name=str(spec.get("name", pid.title())),
                style=str(spec.get("style", "")).strip(),
                controls=ControlPatch.from_mapping(spec.get("controls", {}) or {}, f"{where}: {pid}.controls"),
            )
        return cls(personas, default_id)

    def ids(self) -> list[str]:
        return sorted(self._personas)

    def get(self, persona_id: str, field: str = "persona_id") -> Persona:
        """The persona, or ControlError naming `field` and the known ids."""
        try:
            return self._personas[persona_id]
        except KeyError:
            raise ControlError(f"{field} {echo(persona_id)} is not a known persona; known: {self.ids()}") from None
