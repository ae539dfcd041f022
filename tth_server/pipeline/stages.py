"""The stage adapters of a server, and the pipeline that runs each turn through them."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import AvatarAdapter, LLMAdapter, RealtimeAdapter, TTSAdapter
from tth_server.pipeline.cascade import run_cascade
from tth_server.pipeline.realtime import run_realtime
from tth_server.pipeline.report import ReportBuilder
from tth_server.pipeline.turn import TurnRun, TurnSink
from tth_server.router import TurnRoutes, for_turn


@dataclass(frozen=True, slots=True)
class Stages:
    """The stage adapters: llm and tts, or one combined realtime provider; and the avatar."""

    llm: LLMAdapter | None
    tts: TTSAdapter | None
    avatar: AvatarAdapter
    realtime: RealtimeAdapter | None = None

    @property
    def sample_rate_hz(self) -> int:
        speech = self.realtime or self.tts
        assert speech is not None, "Stages needs a tts or a realtime adapter"
        return speech.sample_rate_hz

    def for_turn(self, routes: TurnRoutes) -> Stages:
        """The same adapters, the routed ones bound to the turn that `routes` records."""
        return Stages(
            for_turn(self.llm, routes),
            for_turn(self.tts, routes),
            for_turn(self.avatar, routes),
            for_turn(self.realtime, routes),
        )


class TurnPipeline:
    """Runs a turn through the cascade (LLM, TTS, avatar) or, with a realtime provider, the realtime path.

    Each turn makes a `TurnRoutes` record and binds the stages to it; the routed
    adapters note which provider served and whether a fallback fired, and the
    turn's stage timings and control report are stamped from it when the turn ends.
    """

    def __init__(self, stages: Stages) -> None:
        self.stages = stages

    async def run(self, run: TurnRun, sink: TurnSink) -> None:
        """Run the turn to its end. Raises what a stage raised; cancel to interrupt (every stage task at once)."""
        routes = TurnRoutes()
        stages = self.stages.for_turn(routes)
        report = ReportBuilder(run.report)
        try:
            if stages.realtime is not None:
                await run_realtime(run, sink, report, stages.realtime, stages.avatar, routes)
            else:
                assert stages.llm is not None and stages.tts is not None, "the cascade needs llm and tts adapters"
                await run_cascade(run, sink, report, stages.llm, stages.tts, stages.avatar)
        finally:
            routes.apply(run.metrics.stages)
            for stage, mapping in routes.mappings:
                report.add(stage, mapping)
