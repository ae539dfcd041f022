"""The abstract bases every adapter implements, and the small types they exchange.

Three kinds of stage: `LLMAdapter` streams reply text, `TTSAdapter` streams PCM
for a piece of text, `AvatarAdapter` turns a stream of audio into frames on the
audio clock. A provider avatar (`SessionAvatarAdapter`) keeps one connection
per TTH session (`AvatarConnection`, held in the session's `AvatarConnections`)
and still meets the per-turn `AvatarAdapter.render` contract. Adapters are
async context managers (`start` on enter, `aclose` on exit); they declare what
they can honour in `capabilities()` and translate the resolved controls into
their own parameters in `map_controls()`, saying what they applied and what
they had to downgrade.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from adapters.controls import PUBLIC_NAMES, Controls, EmotionLabel
from adapters.logs import log
from adapters.media import AudioChunk, RenderSettings, VideoFrame
from adapters.options import AdapterOptions, GivenOptions, parse_options


class Stage(StrEnum):
    LLM = "llm"
    TTS = "tts"
    AVATAR = "avatar"
    REALTIME = "realtime"


class Mode(StrEnum):
    """How an adapter reaches its model."""

    LOCAL = "local"
    API = "api"
    SELF_HOST = "self_host"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an adapter can honour."""

    streaming: bool = True
    """Output streams as it is produced."""
    controls: frozenset[str] = frozenset()
    """Dotted control names the adapter honours, e.g. "character.speech_rate"."""
    emotions: frozenset[EmotionLabel] = frozenset()
    """Emotion labels it can express."""
    speech_marks: bool = False
    """It reports (TTS) or uses (avatar) word and phoneme timing."""


@dataclass(frozen=True, slots=True)
class Applied:
    field: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Downgrade:
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class ControlMapping:
    """An adapter's own parameters for a set of controls, and what it made of them."""

    controls: Controls
    params: Mapping[str, Any] = field(default_factory=dict)
    applied: tuple[Applied, ...] = ()
    downgraded: tuple[Downgrade, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthStatus:
    healthy: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What an LLM adapter needs for one reply."""

    system_prompt: str
    user_text: str
    history: tuple[Message, ...] = ()
    controls: Controls = field(default_factory=Controls)


@dataclass(frozen=True, slots=True)
class AvatarInput:
    """One audio chunk on the turn's clock, with the controls of its segment."""

    chunk: AudioChunk
    mapping: ControlMapping


class Adapter(ABC):
    """Base of every adapter: options from config, lifecycle, health, controls."""

    stage: ClassVar[Stage]
    mode: ClassVar[Mode] = Mode.LOCAL
    # The adapter's options as a typed model (see `adapters.options`); a subclass names its own
    # and declares `options: ThatModel`, so its code reads typed attributes.
    Options: ClassVar[type[AdapterOptions]] = AdapterOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        """`options` as the configuration gives them, or already validated; ConfigError names a bad one."""
        self.name = name
        self.options = parse_options(self.Options, options)

    @property
    def model(self) -> str:
        """The provider's model name, where there is one."""
        return str(getattr(self.options, "model", ""))

    async def start(self) -> None:
        """Connect, load or warm up; called once before the first use."""

    async def aclose(self) -> None:
        """Release connections, threads and processes; safe to call twice."""

    async def health(self) -> HealthStatus:
        return HealthStatus(True)

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def map_controls(self, controls: Controls) -> ControlMapping:
        """Translate resolved controls into this adapter's parameters.

        The default honours nothing and says so for every control that was set by
        a caller or persona (not left at its default).
        """
        downgraded = tuple(
            Downgrade(PUBLIC_NAMES[name], f"{self.name} has no way to express it")
            for name, source in controls.sources.items()
            if source != "default" and name != "persona_id"
        )
        return ControlMapping(controls, downgraded=downgraded)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class LLMAdapter(Adapter):
    stage = Stage.LLM

    @abstractmethod
    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Yield the reply's text as it is produced. Cancelling stops the provider call."""


class TTSAdapter(Adapter):
    stage = Stage.TTS

    @property
    @abstractmethod
    def sample_rate_hz(self) -> int:
        """The rate of every chunk this adapter yields."""

    @abstractmethod
    def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        """Yield PCM16 mono for `text`, chunk by chunk, as it is produced.

        Chunks carry `timestamp_ms` and marks relative to the start of this call;
        the pipeline moves them onto the turn's clock.
        """


class AvatarAdapter(Adapter):
    stage = Stage.AVATAR

    @abstractmethod
    def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        """Yield frames on the turn's clock for the audio as it arrives.

        Frame i is shown at i * settings.frame_ms. When `audio` ends, frames keep
        coming until they cover all of it (the last frame starts before its end).
        """

    def session_started(self, connections: AvatarConnections) -> bool:
        """A TTH session began (a stream attached): a provider avatar may open its connection now.

        Returns at once (any connecting goes on in the background); True when a
        connection began opening. A local face has nothing to open.
        """
        return False


class PortraitAvatar(ABC):
    """An avatar that can take a client's own portrait as a session's face (mixed into an AvatarAdapter)."""

    @abstractmethod
    async def prepare(self, data: bytes) -> str:
        """Check and measure a portrait; return the id that `RenderSettings.portrait_id` names it by.

        Raises ValueError with a message naming what is wrong with it.
        """


class RealtimeConversation(ABC):
    """One TTH session's conversation with a combined LLM+TTS provider."""

    @abstractmethod
    def respond(self, request: LLMRequest, mapping: ControlMapping) -> AsyncIterator[str | AudioChunk]:
        """Yield the reply as text deltas (str) and audio chunks (relative timestamps).

        Cancelling the iterator cancels the provider's response.
        """

    @abstractmethod
    async def truncate(self, played_ms: float) -> None:
        """Tell the provider the last reply was heard only up to `played_ms`."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the provider connection."""


class RealtimeAdapter(Adapter):
    """A combined LLM+TTS stage; holds one provider conversation per TTH session."""

    stage = Stage.REALTIME

    @property
    @abstractmethod
    def sample_rate_hz(self) -> int:
        """The rate of every chunk its conversations yield."""

    @abstractmethod
    async def open(self, system_prompt: str, mapping: ControlMapping) -> RealtimeConversation:
        """Open a conversation for one session."""


class AvatarConnection(ABC):
    """One TTH session's connection to a provider avatar, used turn after turn."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """The provider ended it (idle or length limit, an error, a dropped socket): the next turn reconnects."""

    @abstractmethod
    def speak(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        """Stream one turn's audio in and yield its frames on the turn's clock (as `AvatarAdapter.render`)."""

    @abstractmethod
    async def interrupt(self) -> None:
        """Make the provider drop what it has not played yet; the connection stays usable."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the provider connection; safe to call twice."""


class AvatarConnections:
    """The provider-avatar connections of one TTH session, one per adapter; closed with the session.

    A connection is opened either by the turn that first needs it (`connection`)
    or ahead of it when the session starts (`connect_soon`, for `connect:
    session_start`); a turn that comes while that is still under way waits for
    it rather than opening a second one, and one that failed is reported once, to
    the turn that asks next, which the router then retries or falls back from.
    """

    def __init__(self) -> None:
        self._open: dict[int, AvatarConnection] = {}
        self._opening: dict[int, asyncio.Task[AvatarConnection]] = {}
        self._closed = False

    def get(self, adapter: SessionAvatarAdapter) -> AvatarConnection | None:
        connection = self._open.get(id(adapter))
        return None if connection is None or connection.closed else connection

    def put(self, adapter: SessionAvatarAdapter, connection: AvatarConnection) -> None:
        self._open[id(adapter)] = connection

    def opening(self, adapter: SessionAvatarAdapter) -> bool:
        """A connection to `adapter` is being opened ahead of the first turn."""
        task = self._opening.get(id(adapter))
        return task is not None and not task.done()

    def connect_soon(self, adapter: SessionAvatarAdapter) -> bool:
        """Start opening a connection to `adapter` in the background; False when one is open or opening."""
        if self._closed or self.get(adapter) is not None or id(adapter) in self._opening:
            return False
        task = asyncio.get_running_loop().create_task(adapter.connect(), name=f"connect {adapter.name}")
        task.add_done_callback(_retrieved)
        self._opening[id(adapter)] = task
        return True

    async def connection(self, adapter: SessionAvatarAdapter) -> AvatarConnection:
        """The session's usable connection to `adapter`: the one opened ahead (awaited), else a new one.

        A connection opened ahead that failed raises its error here, once. Cancelling
        the caller leaves a connection still being opened to the next turn.
        """
        task = self._opening.get(id(adapter))
        if task is not None:
            try:
                connection = await asyncio.shield(task)
            finally:
                if task.done() and self._opening.get(id(adapter)) is task:
                    del self._opening[id(adapter)]
            self.put(adapter, connection)
        found = self.get(adapter)
        if found is not None:
            return found
        await self.drop(adapter)  # one the provider ended between turns (an idle limit): its peer is still open
        connection = await adapter.connect()
        self.put(adapter, connection)
        return connection

    async def drop(self, adapter: SessionAvatarAdapter) -> None:
        connection = self._open.pop(id(adapter), None)
        if connection is not None:
            await connection.aclose()

    async def aclose(self) -> None:
        self._closed = True
        opening, self._opening = list(self._opening.values()), {}
        for task in opening:
            task.cancel()
        if opening:
            await asyncio.wait(opening)
        late = [t.result() for t in opening if not t.cancelled() and t.exception() is None]
        connections, self._open = [*self._open.values(), *late], {}
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)


def _retrieved(task: asyncio.Task[AvatarConnection]) -> None:
    """Log a background connect's error (and so mark it seen: the turn that asks next re-raises it, if one does)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("provider avatar did not connect at session start", task=task.get_name(), error=str(exc))


session_avatars: ContextVar[AvatarConnections | None] = ContextVar("tth_session_avatars", default=None)
"""The running session's avatar connections; a turn's task sees its session's (a Generate call: none)."""

ConnectMode = Literal["session_start", "first_turn"]


class SessionAvatarAdapter(AvatarAdapter):
    """A provider avatar: one connection per TTH session, kept across turns.

    `options.connect` says when it opens: `session_start` (the default) as a
    stream first attaches to the session, in the background, so the first turn
    finds the provider ready; `first_turn` when the first turn needs it (nothing
    is spent on a session that never speaks). Without a session (a Generate
    call) the connection lives for the one turn. A turn that ends before its
    frames are all out (an interrupt, a failure, the router giving up on it)
    tells the provider to drop what it has not played, so the next turn starts
    clean; a connection that failed is closed and the next turn opens a new one.
    """

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        # Provider options models derive from `adapters.webrtc.SessionProviderOptions`, which declares `connect`.
        self.connect_on: ConnectMode = getattr(self.options, "connect", "session_start")

    @abstractmethod
    async def connect(self) -> AvatarConnection:
        """Open a connection to the provider, ready to take audio."""

    def session_started(self, connections: AvatarConnections) -> bool:
        """With `connect: session_start`, begin opening the session's connection; True when it began."""
        return self.connect_on == "session_start" and connections.connect_soon(self)

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        holder = session_avatars.get()
        connection = await holder.connection(self) if holder is not None else await self.connect()
        finished = False
        try:
            async for frame in connection.speak(audio, settings):
                yield frame
            finished = True
        finally:
            if not finished and not connection.closed:
                await connection.interrupt()
            if holder is None:
                await connection.aclose()
            elif connection.closed:
                await holder.drop(self)
