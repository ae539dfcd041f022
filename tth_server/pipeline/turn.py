"""A turn's data: what it was asked (TurnRequest), what it has done so far (TurnRun), and where its output goes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from adapters.base import Message, RealtimeConversation
from adapters.controls import ControlPatch, Controls, resolve
from adapters.media import AudioChunk, RenderSettings, VideoFrame
from tth_server.config import SegmenterSettings
from tth_server.drift import DriftController
from tth_server.events import ControlReport, TurnMetrics
from tth_server.personas import Persona
from tth_server.pipeline.pacing import Pacer


class TurnSink(Protocol):
    """Where a turn's output goes: a session's outbox, or a Generate call's stream."""

    async def text(self, text: str) -> None: ...
    async def audio(self, chunk: AudioChunk) -> None: ...
    async def video(self, frame: VideoFrame) -> None: ...


class ConversationSlot:
    """A session's conversation with a realtime provider: opened at its first turn, closed with the session."""

    def __init__(self) -> None:
        self.conversation: RealtimeConversation | None = None

    async def aclose(self) -> None:
        conversation, self.conversation = self.conversation, None
        if conversation is not None:
            await conversation.aclose()


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    first_clause_min_chars: int = SegmenterSettings.first_clause_min_chars
    max_chars: int = SegmenterSettings.max_chars
    sentences_only: bool = False


@dataclass(frozen=True, slots=True)
class TurnRequest:
    turn_id: str
    user_text: str
    history: tuple[Message, ...]
    layers: Sequence[tuple[str, ControlPatch]]  # highest priority first, persona excluded
    persona: Persona
    render: RenderSettings
    segments: SegmentPolicy = SegmentPolicy()
    conversation: ConversationSlot | None = None  # the session's realtime conversation, if any

    def controls(self, hint: ControlPatch | None = None) -> Controls:
        """The turn's controls: its layers, then the persona's, then the LLM's inline `hint` when there is one."""
        # The persona layer names its own id, so the resolved persona_id is the persona in use.
        persona = replace(self.persona.controls, persona_id=self.persona.id)
        layers = [*self.layers, ("persona", persona)]
        if hint is not None:
            layers.append(("llm_hint", hint))
        return resolve(layers)


@dataclass(slots=True)
class SpokenSegment:
    text: str
    start_ms: float
    end_ms: float
    word_times: list[float] = field(default_factory=list)


@dataclass(slots=True)
class TurnRun:
    """What a running turn has done so far; read when it ends, however it ends."""

    request: TurnRequest
    pacer: Pacer
    started: float = field(default_factory=time.monotonic)
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    report: ControlReport = field(default_factory=ControlReport)
    text_parts: list[str] = field(default_factory=list)
    spoken: list[SpokenSegment] = field(default_factory=list)
    audio_end_ms: float = 0.0
    drift: DriftController | None = None
    played_ms: float | None = None  # what the client said it played, when it interrupted

    def since_start_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    @property
    def text(self) -> str:
        return "".join(self.text_parts).strip()

    def heard_ms(self, played_ms: float | None) -> float:
        """Audio counted as heard: what the client says it played, else what real time allows."""
        estimate = self.pacer.elapsed_ms() if played_ms is None else played_ms
        return max(0.0, min(estimate, self.audio_end_ms))

    def spoken_text(self, cut_ms: float) -> str:
        """The reply text whose audio starts before `cut_ms`, cut at a word boundary."""
        out: list[str] = []
        for seg in self.spoken:
            if seg.end_ms <= cut_ms:
                out.append(seg.text)
                continue
            if seg.start_ms < cut_ms:
                words = seg.text.split()
                if seg.word_times:
                    n = sum(1 for t in seg.word_times if t < cut_ms)
                else:
                    n = int(len(words) * (cut_ms - seg.start_ms) / max(seg.end_ms - seg.start_ms, 1e-6))
                out.append(" ".join(words[:n]))
            break
        return " ".join(p for p in out if p)

    def finish_metrics(self, dropped: int, unsent: int = 0) -> TurnMetrics:
        """Final metrics; `dropped` frames were shed for a slow reader, `unsent` cut by an interrupt."""
        m = self.metrics
        m.audio_ms = self.audio_end_ms
        m.frames_dropped = dropped
        m.frames -= dropped + unsent
        if self.drift is not None:
            m.drift_mean_ms = self.drift.mean_abs_ms
            m.drift_max_ms = self.drift.max_abs_ms
        m.total_ms = self.since_start_ms()
        return m
