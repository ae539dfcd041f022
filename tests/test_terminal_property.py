"""Under any mix of injected faults, interrupts, barge-ins and dropped streams, every turn ends exactly once.

Hypothesis draws a conversation: per turn, which stage fails (if any), after how
many outputs and how, and what the client does after how many of the turn's
events: nothing, interrupt, barge in with new text, or drop the stream and
resume it. Whatever it draws, the client must see: one terminal event per turn,
nothing of a turn after its terminal event, turns that never interleave, and a
gap-free sequence with nothing twice across resumes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.errors import ErrorCategory
from adapters.local.knobs import Knobs
from adapters.local.scripted import ScriptedResponder
from adapters.local.stub_avatar import StubAvatar
from adapters.local.tone_tts import ToneTTS
from tests.conftest import ServerFactory, adapters_registered
from tests.wire import Conversation, is_terminal
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

FAULTS: dict[str, Knobs] = {}  # the injected fault, by stage, for the turn being started


class _Faulty:
    """Takes its knobs from FAULTS at every output instead of from its options."""

    fault_stage = ""

    @property
    def _knobs(self) -> Knobs:
        return FAULTS.get(self.fault_stage, Knobs())

    @_knobs.setter
    def _knobs(self, _: Knobs) -> None:
        pass  # the base class sets its own; FAULTS decides


class FaultyLLM(_Faulty, ScriptedResponder):
    fault_stage = "llm"


class FaultyTTS(_Faulty, ToneTTS):
    fault_stage = "tts"


class FaultyAvatar(_Faulty, StubAvatar):
    fault_stage = "avatar"


REPLY = "Well, here is a reply of two sentences. It is long enough to be cut in many places."


@dataclass(frozen=True)
class TurnPlan:
    stage: str | None  # the stage that fails, or None
    fail_after: int  # outputs it produces before failing
    category: ErrorCategory
    action: str  # what the client does during the turn: none, interrupt, barge_in, drop
    after_events: int  # ... after this many of the turn's events

    def knobs(self) -> Mapping[str, Knobs]:
        return (
            {} if self.stage is None else {self.stage: Knobs(fail_after=self.fail_after, fail_category=self.category)}
        )


turn_plans = st.builds(
    TurnPlan,
    stage=st.sampled_from([None, "llm", "tts", "avatar"]),
    fail_after=st.integers(0, 30),
    category=st.sampled_from(list(ErrorCategory)),
    action=st.sampled_from(["none", "interrupt", "barge_in", "drop"]),
    after_events=st.integers(0, 40),
)


@pytest.fixture
def faulty_adapters() -> Iterator[None]:
    with adapters_registered({"faulty_llm": FaultyLLM, "faulty_tts": FaultyTTS, "faulty_avatar": FaultyAvatar}):
        yield


@pytest.fixture
async def stub(faulty_adapters: None, start_server: ServerFactory) -> AsyncIterator[pb_grpc.ConversationServiceStub]:
    components: dict[str, Any] = {
        "llm": {"adapter": "faulty_llm", "options": {"reply": REPLY, "hints": False, "tokens_per_s": 300}},
        "tts": {"adapter": "faulty_tts", "options": {"sample_rate_hz": 16000}},
        "avatar": {"adapter": "faulty_avatar"},
    }
    server = await start_server(
        session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000},
        limits={"turns_per_minute_per_key": 0},
        components=components,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.ConversationServiceStub(channel)
    finally:
        FAULTS.clear()


class Client:
    """A client that keeps every event it received, across resumed streams."""

    def __init__(self, stub: pb_grpc.ConversationServiceStub) -> None:
        self.stub = stub
        self.conv = Conversation(stub)
        self.received: list[pb.ConverseResponse] = []
        self.session_id = ""

    async def start(self) -> None:
        started = await self.conv.start()
        self.session_id = started.session_id
        self.received.append(started)

    async def next(self) -> pb.ConverseResponse:
        event = await self.conv.next()
        if event.seq:  # a resumed stream's `started` (seq 0) is outside the sequence
            self.received.append(event)
        return event

    async def drop_and_resume(self) -> None:
        self.conv.call.cancel()
        self.conv = Conversation(self.stub)
        started = await self.conv.start(session_id=self.session_id, resume_after_seq=self.received[-1].seq)
        assert started.seq == 0 and started.started.resumed.lossless

    async def finish(self) -> grpc.StatusCode:
        await self.conv.call.done_writing()
        while (event := await self.conv.call.read()) is not grpc.aio.EOF:
            self.received.append(event)
        return await self.conv.call.code()

    async def rest_of_turn(self, turn_id: str) -> None:
        while not any(is_terminal(e) and e.turn_id == turn_id for e in self.received):
            await self.next()


async def _run(client: Client, plan: TurnPlan, text: str) -> int:
    """Run one planned turn to its end; returns how many turns it started (2 with a barge-in)."""
    FAULTS.clear()
    FAULTS.update(plan.knobs())
    await client.conv.say(text)
    first = await client.next()
    turn_id, seen = first.turn_id, 1
    assert turn_id, f"a turn's first event has its turn_id: {first}"
    while not is_terminal(client.received[-1]):
        if seen == plan.after_events and plan.action != "none":
            if plan.action == "interrupt":
                await client.conv.interrupt()
            elif plan.action == "barge_in":
                FAULTS.clear()
                await client.conv.say("Sorry, another thing.")
                await client.rest_of_turn(turn_id)
                nxt = await client.next()  # the barged-in turn's first event follows the old turn's terminal
                await client.rest_of_turn(nxt.turn_id)
                return 2
            else:
                await client.drop_and_resume()
        await client.next()
        seen += 1
    return 1


def _check(received: list[pb.ConverseResponse], turns_started: int) -> None:
    seqs = [e.seq for e in received]
    assert seqs == list(range(1, len(seqs) + 1)), "the sequence has a gap or a repeat"
    terminals: dict[str, int] = {}
    order: list[str] = []
    for event in received:
        turn_id = event.turn_id
        if not turn_id:
            continue
        assert turn_id not in terminals, f"an event of turn {turn_id} follows its terminal event"
        if not order or order[-1] != turn_id:
            assert turn_id not in order, f"turn {turn_id} interleaves with another"
            order.append(turn_id)
        if is_terminal(event):
            terminals[turn_id] = terminals.get(turn_id, 0) + 1
    assert len(order) == turns_started and set(terminals) == set(order)
    assert all(count == 1 for count in terminals.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=st.lists(turn_plans, min_size=1, max_size=4))
async def test_every_turn_ends_with_exactly_one_terminal_event(
    stub: pb_grpc.ConversationServiceStub, plans: list[TurnPlan]
) -> None:
    client = Client(stub)
    await client.start()
    started = 0
    for i, plan in enumerate(plans):
        started += await _run(client, plan, f"Turn number {i}, please.")
    FAULTS.clear()
    assert await client.finish() == grpc.StatusCode.OK
    _check(client.received, started)
