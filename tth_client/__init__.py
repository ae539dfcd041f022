"""The TTH Python SDK: text in; the reply's text, speech and a talking face out, over gRPC.

    import tth_client

    async with tth_client.Session("127.0.0.1:50051", persona="casual") as session:
        result = await session.say("Hello!", emotion="happy", intensity=0.8)
        print(result.text, result.audio_ms, len(result.frames))

        tth_client.save(result, "hello.mp4")  # or .wav, or .png (a contact sheet)

        async for event in session.say("Tell me more"):
            if isinstance(event, tth_client.AudioEvent):
                play(event.audio.data)

The same without asyncio: `tth_client.SyncSession`, `tth_client.SyncClient`.
Message types are generated from `protos/tth/v1` into `tth_client.v1`.
"""

from tth_client._channel import DEFAULT_TARGET, ChannelOptions, Connection
from tth_client._client import Client, HealthStatus
from tth_client._controls import Controls, EmotionName, LatencyName, render_options, turn_control
from tth_client._events import (
    AudioEvent,
    ErrorEvent,
    Event,
    NoticeEvent,
    StartedEvent,
    TextDeltaEvent,
    TurnCompleteEvent,
    TurnInterruptedEvent,
    VideoEvent,
    events_from_response,
)
from tth_client._exceptions import (
    AuthenticationError,
    ClosedError,
    ConnectError,
    InvalidArgumentError,
    InvalidControlError,
    NotFoundError,
    ResourceExhaustedError,
    ResumeOutOfRangeError,
    SessionTakenOverError,
    StatusError,
    TimeoutError,
    TTHError,
    TurnFailedError,
    TurnResourceExhaustedError,
)
from tth_client._media import save
from tth_client._session import Session
from tth_client._sync import SyncClient, SyncSession, SyncTurn
from tth_client._turn import Outcome, Turn, TurnResult

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "AudioEvent",
    "AuthenticationError",
    "ChannelOptions",
    "Client",
    "ClosedError",
    "ConnectError",
    "Connection",
    "Controls",
    "EmotionName",
    "ErrorEvent",
    "Event",
    "HealthStatus",
    "InvalidArgumentError",
    "InvalidControlError",
    "LatencyName",
    "NotFoundError",
    "NoticeEvent",
    "Outcome",
    "ResourceExhaustedError",
    "ResumeOutOfRangeError",
    "Session",
    "SessionTakenOverError",
    "StartedEvent",
    "StatusError",
    "SyncClient",
    "SyncSession",
    "SyncTurn",
    "TTHError",
    "TextDeltaEvent",
    "TimeoutError",
    "Turn",
    "TurnCompleteEvent",
    "TurnFailedError",
    "TurnInterruptedEvent",
    "TurnResourceExhaustedError",
    "TurnResult",
    "VideoEvent",
    "__version__",
    "events_from_response",
    "render_options",
    "save",
    "turn_control",
]
