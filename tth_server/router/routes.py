"""What served one turn: the provider of each stage, whether a fallback fired, and the fallbacks' control mappings.

The pipeline makes one `TurnRoutes` per turn and binds the routed adapters to it
for that turn (`tth_server.router.for_turn`); they write into it, and
`apply` stamps the turn's stage timings when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.base import ControlMapping, Stage
from tth_server.events import StageTiming


@dataclass(slots=True)
class TurnRoutes:
    """Which provider served each stage in one turn, and whether a fallback fired."""

    first: dict[Stage, str] = field(default_factory=dict)
    fallback_used: set[Stage] = field(default_factory=set)
    preferred: dict[Stage, int] = field(default_factory=dict)
    mappings: list[tuple[Stage, ControlMapping]] = field(default_factory=list)

    def served(self, stage: Stage, name: str, index: int) -> None:
        """Provider `index` of the stage's chain delivered output; the turn tries it first from now on."""
        self.first.setdefault(stage, name)
        self.preferred[stage] = index
        if index > 0:
            self.fallback_used.add(stage)

    def apply(self, stages: list[StageTiming]) -> None:
        """Stamp the turn's stage timings with the provider that served first and the fallback flag."""
        for timing in stages:
            if timing.stage in self.first:
                timing.adapter = self.first[timing.stage]
            timing.fallback_used = timing.fallback_used or timing.stage in self.fallback_used
