"""The service core behind the servicer: adapters, personas, sessions, and one-shot turns.

Built once from a `Config`. It owns the stage adapters, each behind the provider
router (`tth_server.router`: budgets, retries, breaker, fallbacks; started on
`start`, closed on `aclose`), the persona catalogue, the turn pipeline and the live
sessions (a `SessionTable`, with their state in the configured `SessionStore`),
including those made ahead of time by `CreateSession`, which expire when nothing
attaches to them in time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from adapters.base import Adapter, AvatarAdapter, LLMAdapter, PortraitAvatar, RealtimeAdapter, TTSAdapter
from adapters.controls import ControlError, ControlPatch
from adapters.errors import ConfigError
from adapters.logs import log
from adapters.media import AudioChunk, RenderRequest, RenderSettings, VideoFrame
from tth_server import metrics, router, tracing
from tth_server.auth import ANONYMOUS, KeyStore
from tth_server.config import Config
from tth_server.errors import turn_failure
from tth_server.events import (
    AudioOut,
    ErrorCode,
    Event,
    Notice,
    NoticeKind,
    Outgoing,
    Started,
    TextOut,
    TurnCompleted,
    VideoOut,
)
from tth_server.limits import Limits
from tth_server.outbox import gather_media
from tth_server.personas import PersonaCatalog
from tth_server.pipeline import Pacer, SegmentPolicy, Stages, TurnPipeline, TurnRequest, TurnRun
from tth_server.session import Session, SessionServices
from tth_server.sessions import SessionTable
from tth_server.store import make_store

_LEADS = {"low": 0.5, "balanced": 1.0, "quality": 2.0}  # multiples of session.max_lead_ms


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        try:
            self.personas = PersonaCatalog.load(config.personas_file, config.session.default_persona)
        except (ControlError, OSError) as exc:
            raise ConfigError(f"personas_file {config.personas_file}: {exc}") from None
        built = {stage: router.route(stage, spec, config.router) for stage, spec in config.components.items()}
        self.adapters: dict[str, Adapter] = built
        llm, tts, avatar, realtime = (built.get(s) for s in ("llm", "tts", "avatar", "realtime"))
        if isinstance(realtime, RealtimeAdapter) and isinstance(avatar, AvatarAdapter):
            if llm is not None or tts is not None:
                raise ConfigError("components: a realtime stage replaces llm and tts; remove them or remove realtime")
            self.pipeline = TurnPipeline(Stages(None, None, avatar, realtime))
        elif isinstance(llm, LLMAdapter) and isinstance(tts, TTSAdapter) and isinstance(avatar, AvatarAdapter):
            self.pipeline = TurnPipeline(Stages(llm, tts, avatar))
        else:
            raise ConfigError("components: this server needs llm, tts and avatar adapters (or realtime and avatar)")
        self.store = make_store(config.store)
        self.limits = Limits(config.limits)
        self.sessions = SessionTable(
            SessionServices(config.session, self.personas, self.pipeline, self.store), self.limits
        )
        self.keys = KeyStore.from_settings(config.auth, config.api_keys)

    @property
    def draining(self) -> bool:
        """Set by shut_down: no new sessions or turns."""
        return self.sessions.draining

    @property
    def sample_rate_hz(self) -> int:
        return self.pipeline.stages.sample_rate_hz

    async def start(self) -> None:
        await self.store.start()
        await asyncio.gather(*(a.start() for a in self.adapters.values()))
        await self._prepare_persona_portraits()

    async def _prepare_persona_portraits(self) -> None:
        """Each persona's `portrait:` checked and prepared like a client's, so its first turn starts at once.

        A bad portrait stops the start naming the persona; on an avatar that animates no portraits
        (the drawn face) they are left aside with a warning, as every profile shares the personas file.
        """
        named = self.personas.with_portraits()
        if not named:
            return
        if self._portrait_taker() is None:
            log.warning(
                "personas name portraits, but this server's avatar does not animate portraits; they are not used",
                personas=[p.id for p in named],
                avatar=self.adapters["avatar"].name,
            )
            return
        for persona in named:
            where = f"{self.config.personas_file}: {persona.id}.portrait"
            assert persona.portrait is not None
            try:
                data = await asyncio.to_thread(persona.portrait.read_bytes)
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {str(persona.portrait)!r}: {exc.strerror}") from None
            try:
                portrait_id = await self.prepare_portrait(data, where)
            except ControlError as exc:
                raise ConfigError(str(exc)) from None
            self.personas.set_portrait_id(persona.id, portrait_id)

    async def shut_down(self, grace_s: float) -> None:
        """Stop taking work; let running turns finish within `grace_s`; then end every session with UNAVAILABLE."""
        self.sessions.draining = True
        live = list(self.sessions.values())
        notice = Notice(
            NoticeKind.SERVER_SHUTTING_DOWN,
            f"the server is shutting down: no new turns; the running turn may finish within {grace_s:g} s",
            int(grace_s * 1000),
        )
        for session in live:
            session.notify(notice)
        if live:
            await asyncio.wait([asyncio.ensure_future(s.drain()) for s in live], timeout=grace_s)
        for session in live:
            await session.end(ErrorCode.UNAVAILABLE, "the server is shutting down; reconnect to another replica")
        for session in live:
            if not session.attached:  # no stream to end it: leave it in the store for another replica now
                await self.sessions.end(session)

    async def aclose(self) -> None:
        await self.sessions.aclose()
        await self.store.aclose()
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

    async def prepare_portrait(self, data: bytes, where: str) -> str:
        """A client's portrait checked and measured by the avatar; its id for RenderSettings.portrait_id.

        Raises ControlError naming the field and the problem. Detection runs in a worker thread,
        so other sessions go on meanwhile.
        """
        limit = self.config.session.max_portrait_bytes
        if len(data) > limit:
            raise ControlError(f"{where} is {len(data)} bytes, over the limit of {limit} (session.max_portrait_bytes)")
        taker = self._portrait_taker()
        if taker is None:
            raise ControlError(
                f"{where}: this server's avatar ({self.adapters['avatar'].name}) does not animate portraits"
            )
        try:
            return await taker.prepare(data)
        except ValueError as exc:
            raise ControlError(f"{where}: {exc}") from None

    def _portrait_taker(self) -> PortraitAvatar | None:
        """Behind the router: the first provider of the avatar chain that takes portraits (the primary first)."""
        avatar = self.adapters["avatar"]
        candidates = [avatar.primary, *avatar.fallbacks] if isinstance(avatar, router.RoutedAvatar) else [avatar]
        return next((a for a in candidates if isinstance(a, PortraitAvatar)), None)

    def new_session(
        self,
        persona_id: str,
        defaults: ControlPatch,
        render: RenderRequest,
        where: str,
        key_id: str = ANONYMOUS,
        portrait_id: str = "",
    ) -> Session:
        """A validated session, not yet live: `sessions.open` or `sessions.add_waiting` makes it so."""
        persona = self.personas.get(persona_id or self.personas.default_id, f"{where}.persona_id")
        if defaults.persona_id is not None:
            self.personas.get(defaults.persona_id, f"{where}.default_control.character.persona_id")
        settings, policy, lead = self.render_settings(render, f"{where}.render")
        settings = replace(settings, portrait_id=portrait_id)
        return Session(
            self.sessions.services,
            persona.id,
            defaults,
            settings,
            policy,
            lead,
            key_id=key_id,
            on_superseded=self.sessions.supersede,
        )

    async def create_session(
        self, persona_id: str, defaults: ControlPatch, render: RenderRequest, key_id: str = ANONYMOUS
    ) -> Session:
        """A session made ahead of time; it expires unless a stream attaches in time."""
        session = self.new_session(persona_id, defaults, render, "", key_id)
        await self.sessions.add_waiting(session, self.config.session.attach_timeout_s)
        return session

    async def generate(
        self,
        text: str,
        persona_id: str,
        patch: ControlPatch,
        render: RenderRequest,
        batch_media: bool = False,
        portrait_id: str = "",
    ) -> AsyncIterator[Outgoing]:
        """One whole turn, unpaced, as events; the last is TurnCompleted or an ErrorOut. With `batch_media`, media
        events come as `MediaBatch`es of what was ready together, as on a batching Converse stream."""
        persona = self.personas.get(persona_id or self.personas.default_id, "persona_id")
        if patch.persona_id is not None:
            persona = self.personas.get(patch.persona_id, "control.character.persona_id")
        settings, policy, _ = self.render_settings(render, "render")
        settings = replace(settings, portrait_id=portrait_id)
        turn_id = f"t-{uuid.uuid4().hex[:12]}"
        request = TurnRequest(turn_id, text, (), [("turn", patch)], persona, persona.render(settings), policy)
        run = TurnRun(request, Pacer(None))
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=64)
        sink = _QueueSink(queue, turn_id)

        async def produce() -> None:
            try:
                await tracing.turn(run, "", self.pipeline.run(run, sink))
            except Exception as exc:
                metrics.observe_turn("failed", run.metrics)
                await queue.put(turn_failure(exc, turn_id))
            else:
                metrics.observe_turn("completed", run.finish_metrics(0))
                await queue.put(TurnCompleted(turn_id, run.metrics, run.report, run.text))
            await queue.put(None)

        held: list[Event | None] = []  # what `take` found behind the media it gathered: sent next

        def take() -> AudioOut | VideoOut | None:
            if queue.empty():
                return None
            event = queue.get_nowait()
            if isinstance(event, AudioOut | VideoOut):
                return event
            held.append(event)
            return None

        task = asyncio.get_running_loop().create_task(produce())
        try:
            yield Started(self.sample_rate_hz, settings, persona.id, persona.name, turn_id)
            while (event := held.pop() if held else await queue.get()) is not None:
                yield gather_media(event, take) if batch_media and isinstance(event, AudioOut | VideoOut) else event
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
