"""A raw Converse stream for tests: send requests, collect events turn by turn."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

TERMINAL = ("turn_complete", "turn_interrupted")


def is_terminal(event: pb.ConverseResponse) -> bool:
    arm = event.WhichOneof("event")
    return arm in TERMINAL or (arm == "error" and bool(event.turn_id))


def control(**fields: Any) -> cpb.TurnControl:
    """TurnControl from flat names: label="happy", intensity=0.7, persona_id="casual" ..."""
    emotion, character = {}, {}
    for name, value in fields.items():
        if name == "label":
            emotion["label"] = getattr(cpb, f"EMOTION_LABEL_{value.upper()}")
        elif name in ("intensity", "valence", "arousal"):
            emotion[name] = value
        else:
            character[name] = value
    return cpb.TurnControl(emotion=cpb.EmotionControl(**emotion), character=cpb.CharacterControl(**character))


class Conversation:
    """One Converse call; `events` collects everything received, in order."""

    def __init__(self, stub: pb_grpc.ConversationServiceStub, key: str | None = None) -> None:
        self.call = stub.Converse(metadata=(("authorization", f"Bearer {key}"),) if key else None)
        self.events: list[pb.ConverseResponse] = []

    async def start(self, **config: Any) -> pb.ConverseResponse:
        await self.call.write(pb.ConverseRequest(config=pb.SessionConfig(**config)))
        return await self.next()

    async def say(self, text: str, request_id: str = "", **controls: Any) -> None:
        user_text = pb.UserText(text=text, control=control(**controls), request_id=request_id)
        await self.call.write(pb.ConverseRequest(text=user_text))

    async def update(self, request_id: str = "", **controls: Any) -> None:
        update = pb.ControlUpdate(control=control(**controls), request_id=request_id)
        await self.call.write(pb.ConverseRequest(control=update))

    async def interrupt(self, played_ms: int | None = None, request_id: str = "") -> None:
        interrupt = pb.Interrupt(request_id=request_id)
        if played_ms is not None:
            interrupt.played_ms = played_ms
        await self.call.write(pb.ConverseRequest(interrupt=interrupt))

    async def next(self) -> pb.ConverseResponse:
        event = await asyncio.wait_for(self.call.read(), 20.0)
        assert event is not grpc.aio.EOF, "stream ended"
        self.events.append(event)
        return event

    async def until_terminal(self) -> list[pb.ConverseResponse]:
        """Events up to and including the next terminal event."""
        out = []
        while True:
            event = await self.next()
            out.append(event)
            if is_terminal(event):
                return out

    async def until(self, arm: str) -> pb.ConverseResponse:
        while (event := await self.next()).WhichOneof("event") != arm:
            pass
        return event

    async def finish(self) -> grpc.StatusCode:
        """Half-close, read the rest, and return the call's status."""
        await self.call.done_writing()
        while (event := await self.call.read()) is not grpc.aio.EOF:
            self.events.append(event)
        code: grpc.StatusCode = await self.call.code()
        return code


def arms(events: list[pb.ConverseResponse]) -> list[str]:
    return [e.WhichOneof("event") or "" for e in events]
