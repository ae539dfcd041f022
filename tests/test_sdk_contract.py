"""The SDK's side of the contract's seams: request ids, retry-after, resume and takeover errors, `Connection`."""

from __future__ import annotations

import pytest

import tth_client
from tests.conftest import ServerFactory
from tth_client import ErrorEvent, Outcome, Session

UNPACED = {"session": {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}, "log": {"level": "warning"}}


@pytest.fixture
async def target(start_server: ServerFactory) -> str:
    return f"127.0.0.1:{(await start_server(**UNPACED)).port}"


# ---- request ids ---------------------------------------------------------------------------------------------------


async def test_each_say_gets_its_own_request_id_and_every_event_of_its_turn_carries_it(target: str) -> None:
    async with Session(target) as session:
        mine = session.say("Hello!", request_id="my-log-line-17")
        first = await mine
        made = session.say("And you?")
        second = await made

    assert mine.request_id == "my-log-line-17" and made.request_id.startswith("say-") and made.request_id != ""
    assert first.outcome is second.outcome is Outcome.COMPLETED and first.turn_id != second.turn_id
    assert {e.request_id for e in mine.events} == {"my-log-line-17"}
    assert {e.request_id for e in made.events} == {made.request_id}


async def test_a_refused_text_fails_its_own_say_whatever_the_order_of_the_others(target: str) -> None:
    async with Session(target) as session:
        accepted = session.say("Hi", request_id="ok-1")
        refused = session.say("x" * 100_000, request_id="too-long-1")
        after = session.say("Hi again", request_id="ok-2")
        with pytest.raises(tth_client.InvalidArgumentError, match="the limit is 4000"):
            await refused
        assert (await accepted).outcome is Outcome.INTERRUPTED  # barged in by "ok-2", not ended by the refusal
        assert (await after).outcome is Outcome.COMPLETED
    assert {e.request_id for e in accepted.events} == {"ok-1"} and {e.request_id for e in after.events} == {"ok-2"}
    assert refused.turn_id == "" and refused.events == []  # no turn was made for it


async def test_a_refused_interrupt_never_ends_a_turn_that_waits(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tth_client._session as sdk_session

    async with Session(target) as session:
        await session.say("Warm up")  # the server has echoed an id: from now on only ids pair turns
        monkeypatch.setattr(sdk_session, "check_request_id", lambda rid: rid)  # let the server refuse it instead
        await session.interrupt(request_id="i" * 65)
        waiting = session.say("Hello")
        result = await waiting
        refusals = []
        async for event in session:
            if isinstance(event, ErrorEvent):
                refusals.append(event)
                break

    assert result.outcome is Outcome.COMPLETED and {e.request_id for e in waiting.events} == {waiting.request_id}
    assert "interrupt.request_id is 65 characters; the limit is 64" in refusals[0].error.message


async def test_a_request_id_over_64_characters_or_used_twice_is_refused_before_sending(target: str) -> None:
    async with Session(target) as session:
        with pytest.raises(tth_client.InvalidArgumentError, match="request_id is 65 characters") as err:
            session.say("Hi", request_id="r" * 65)
        assert err.value.field == "request_id"
        with pytest.raises(tth_client.InvalidArgumentError, match="request_id is 65 characters"):
            await session.update_controls(intensity=0.5, request_id="r" * 65)
        first = session.say("Hi", request_id="same")
        with pytest.raises(tth_client.InvalidArgumentError, match="already used"):
            session.say("Hi", request_id="same")
        assert (await first).outcome is Outcome.COMPLETED
