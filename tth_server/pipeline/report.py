"""A turn's control report, built as the stages map the controls: what each applied and what it downgraded."""

from __future__ import annotations

from adapters.base import ControlMapping, Stage
from tth_server.events import AppliedControl, ControlReport, DowngradedControl


class ReportBuilder:
    """Collects each stage's applied and downgraded controls, once per distinct entry."""

    def __init__(self, report: ControlReport) -> None:
        self._report = report
        self._seen: set[tuple[str, Stage, str]] = set()

    def add(self, stage: Stage, mapping: ControlMapping) -> None:
        controls = mapping.controls
        for a in mapping.applied:
            name = a.field.split(".", 1)[1]
            value = controls.value_text(name)
            if (a.field, stage, value) not in self._seen:
                self._seen.add((a.field, stage, value))
                source = controls.sources.get(name, "default")
                self._report.applied.append(AppliedControl(a.field, value, source, stage, a.detail))
        for d in mapping.downgraded:
            if (d.field, stage, "") not in self._seen:
                self._seen.add((d.field, stage, ""))
                self._report.downgraded.append(DowngradedControl(d.field, stage, d.reason))
