"""The service core behind the servicer: adapters, personas, sessions, and one-shot turns.

Built once from a `Config`. It owns the stage adapters (started on `start`,
closed on `aclose`), the persona catalogue, the turn pipeline and the live
sessions, including those made ahead of time by `CreateSession`, which expire
when nothing attaches to them in time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.base import Adapter, AvatarAdapter, LLMAdapter, TTSAdapter
from tth_server import registry
from tth_server.config import Config, ConfigError
from tth_server.controls import ControlError, ControlPatch
from tth_server.errors import turn_failure
from tth_server.events import AudioOut, Event, Started, TextOut, TurnCompleted, VideoOut
from tth_server.media import AudioChunk, RenderSettings, VideoFrame
from tth_server.personas import PersonaCatalog
from tth_server.pipeline import Pacer, SegmentPolicy, Stages, TurnPipeline, TurnRequest, TurnRun
from tth_server.session import Session

_LEADS = {"low": 0.5, "balanced": 1.0, "quality": 2.0}  # multiples of session.max_lead_ms


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """Render options as a client asked for them; None means the server default."""

    fps: int | None = None
    width: int | None = None
    height: int | None = None
    latency_mode: str | None = None


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        try:
            self.personas = PersonaCatalog.load(config.personas_file, config.session.default_persona)
        except (ControlError, OSError) as exc:
            raise ConfigError(f"personas_file {config.personas_file}: {exc}") from None
        built = {stage: registry.create(stage, spec) for stage, spec in config.components.items()}
        self.adapters: dict[str, Adapter] = built
        llm, tts, avatar = built.get("llm"), built.get("tts"), built.get("avatar")
        if not (isinstance(llm, LLMAdapter) and isinstance(tts, TTSAdapter) and isinstance(avatar, AvatarAdapter)):
            raise ConfigError("components: this server needs llm, tts and avatar adapters")
        self.pipeline = TurnPipeline(Stages(llm, tts, avatar))
        self.sessions: dict[str, Session] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    @property
    def sample_rate_hz(self) -> int:
        return self.pipeline.stages.tts.sample_rate_hz

    async def start(self) -> None:
        await asyncio.gather(*(a.start() for a in self.adapters.values()))

    async def aclose(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        self.sessions.clear()
        await asyncio.gather(*(a.aclose() for a in self.adapters.values()), return_exceptions=True)

    def render_settings(self, req: RenderRequest, where: str) -> tuple[RenderSettings, SegmentPolicy, float]:
        """Validated render settings, segment policy and media lead for a session."""
        d = self.config.render
        fps = d.fps if req.fps is None else req.fps
        width = d.width if req.width is None else req.width
        height = d.height if req.height is None else req.height
        if not 1 <= fps <= 60:
            raise ControlError(f"{where}.fps must be in [1, 60], got {fps}")
        for name, value in (("width", width), ("height", height)):
            if not (64 <= value <= 1024 and value % 2 == 0):
                raise ControlError(f"{where}.{name} must be an even number in [64, 1024], got {value}")
        mode = req.latency_mode or d.latency_mode
        seg = self.config.segmenter
        policy = SegmentPolicy(
            first_clause_min_chars=1 if mode == "low" else seg.first_clause_min_chars,
            max_chars=seg.max_chars,
            sentences_only=mode == "quality",
        )
        return RenderSettings(fps, width, height), policy, self.config.session.max_lead_ms * _LEADS[mode]

    def new_session(self, persona_id: str, defaults: ControlPatch, render: RenderRequest, where: str) -> Session:
        persona = self.personas.get(persona_id or self.personas.default_id, f"{where}.persona_id")
        if defaults.persona_id is not None:
            self.personas.get(defaults.persona_id, f"{where}.default_control.character.persona_id")
        settings, policy, lead = self.render_settings(render, f"{where}.render")
        session = Session(self, persona.id, defaults, settings, policy, lead)
        self.sessions[session.id] = session
        return session

    def create_session(self, persona_id: str, defaults: ControlPatch, render: RenderRequest) -> Session:
        """A session made ahead of time; it expires unless a stream attaches in time."""
        session = self.new_session(persona_id, defaults, render, "")
        timeout = self.config.session.attach_timeout_s
        self._expiry[session.id] = asyncio.get_running_loop().call_later(timeout, self._expire, session.id)
        return session

    def attach(self, session_id: str) -> Session | None:
        handle = self._expiry.pop(session_id, None)
        if handle is not None:
            handle.cancel()
        return self.sessions.get(session_id) if handle is not None else None

    async def end_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        await session.close()

    def _expire(self, session_id: str) -> None:
        self._expiry.pop(session_id, None)
        self.sessions.pop(session_id, None)

    async def generate(
        self, text: str, persona_id: str, patch: ControlPatch, render: RenderRequest
    ) -> AsyncIterator[Event]:
        """One whole turn, unpaced, as events; the last is TurnCompleted or an ErrorOut."""
        persona = self.personas.get(persona_id or self.personas.default_id, "persona_id")
        if patch.persona_id is not None:
            persona = self.personas.get(patch.persona_id, "control.character.persona_id")
        settings, policy, _ = self.render_settings(render, "render")
        turn_id = f"t-{uuid.uuid4().hex[:12]}"
        request = TurnRequest(turn_id, text, (), [("turn", patch)], persona, settings, policy)
        run = TurnRun(request, Pacer(None))
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=64)
        sink = _QueueSink(queue, turn_id)

        async def produce() -> None:
            try:
                await self.pipeline.run(run, sink)
            except Exception as exc:
                await queue.put(turn_failure(exc, turn_id))
            else:
                await queue.put(TurnCompleted(turn_id, run.finish_metrics(0), run.report, run.text))
            await queue.put(None)

        task = asyncio.get_running_loop().create_task(produce())
        try:
            yield Started(self.sample_rate_hz, settings, persona.id, persona.name, turn_id)
            while (event := await queue.get()) is not None:
                yield event
        finally:
            task.cancel()
            await asyncio.wait([task])


class _QueueSink:
    def __init__(self, queue: asyncio.Queue[Event | None], turn_id: str) -> None:
        self._queue = queue
        self._turn_id = turn_id

    async def text(self, text: str) -> None:
        await self._queue.put(TextOut(self._turn_id, text))

    async def audio(self, chunk: AudioChunk) -> None:
        await self._queue.put(AudioOut(self._turn_id, chunk))

    async def video(self, frame: VideoFrame) -> None:
        # Generate drops nothing: frames wait for the reader like everything else.
        await self._queue.put(VideoOut(self._turn_id, frame))
