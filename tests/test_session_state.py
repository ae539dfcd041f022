"""The session's state machine: set at each transition of its turn, and an illegal transition raises."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.controls import ControlPatch
from adapters.media import RenderRequest
from tth_server.config import load_config
from tth_server.events import InterruptReason, TurnCompleted, TurnInterrupted
from tth_server.runtime import Runtime
from tth_server.session import TRANSITIONS, IllegalTransition, Session, SessionState

S = SessionState


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[SessionState, SessionState]]]:
    """Every transition a session makes, as (from, to)."""
    made: list[tuple[SessionState, SessionState]] = []
    to = Session._to

    def recording(self: Session, state: SessionState) -> None:
        before = self.state
        to(self, state)
        made.append((before, state))

    monkeypatch.setattr(Session, "_to", recording)
    yield made


async def _runtime() -> Runtime:
    runtime = Runtime(load_config("mock", env={}, overrides={"session": {"max_lead_ms": 1_000_000}}))
    await runtime.start()
    return runtime


async def test_a_turn_walks_the_states_forward_and_back_to_idle_and_close_is_final(
    moves: list[tuple[SessionState, SessionState]],
) -> None:
    runtime = await _runtime()
    try:
        session = runtime.new_session("", ControlPatch(), RenderRequest(), "config")
        attachment = await runtime.sessions.open(session)
        assert session.state is S.IDLE
        await session.say("Tell me about the harbour.", ControlPatch())
        while (item := await session.next_event(attachment)) is not None:
            if isinstance(item[1], TurnCompleted):
                break
        assert [to for _, to in moves] == [
            S.LLM_RUN,
            S.TTS_RUN,
            S.AVATAR_RUN,
            S.STREAMING_OUTPUT,
            S.TURN_COMPLETE,
            S.IDLE,
        ]
        await session.close()
        assert session.state is S.CLOSED and session.closed and moves[-1] == (S.IDLE, S.CLOSED)
        with pytest.raises(IllegalTransition, match="closed -> llm_run"):
            session._to(S.LLM_RUN)
        await runtime.sessions.end(session)
    finally:
        await runtime.aclose()


async def test_an_interrupted_turn_ends_through_interrupted(moves: list[tuple[SessionState, SessionState]]) -> None:
    runtime = Runtime(load_config("mock", env={}))  # paced: the turn is still running when it is interrupted
    await runtime.start()
    try:
        session = runtime.new_session("", ControlPatch(), RenderRequest(), "config")
        attachment = await runtime.sessions.open(session)
        await session.say("Now talk for a while, as long as you like.", ControlPatch())
        while (item := await session.next_event(attachment)) is not None:
            if session.state is S.STREAMING_OUTPUT:
                assert await session.interrupt(InterruptReason.CLIENT)
            if isinstance(item[1], TurnInterrupted):
                break
        assert session.state is S.IDLE and moves[-2:] == [(S.STREAMING_OUTPUT, S.INTERRUPTED), (S.INTERRUPTED, S.IDLE)]
        await runtime.sessions.end(session)
    finally:
        await runtime.aclose()


def test_the_transitions_go_forward_through_a_turn_and_only_idle_closes() -> None:
    assert TRANSITIONS[S.IDLE] == {S.LLM_RUN, S.CLOSED}
    assert S.LLM_RUN not in TRANSITIONS[S.TTS_RUN] and S.TTS_RUN not in TRANSITIONS[S.STREAMING_OUTPUT]
    for state in (S.TURN_COMPLETE, S.INTERRUPTED, S.TURN_FAILED):
        assert TRANSITIONS[state] == {S.IDLE}
        assert all(state in TRANSITIONS[running] for running in (S.LLM_RUN, S.TTS_RUN, S.AVATAR_RUN))
    assert not TRANSITIONS[S.CLOSED] and all(S.CLOSED not in TRANSITIONS[s] for s in S if s is not S.IDLE)
