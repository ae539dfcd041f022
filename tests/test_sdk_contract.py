"""The SDK's side of the contract's seams: request ids, retry-after, resume and takeover errors, `Connection`."""

from __future__ import annotations

import grpc
import pytest

import tth_client
from tests.conftest import ServerFactory
from tth_client import ErrorEvent, Outcome, Session
from tth_client._exceptions import status_error

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


# ---- errors with hints that fit ------------------------------------------------------------------------------------


async def test_a_session_limit_raises_resource_exhausted_with_retry_after_s_from_the_trailer(
    start_server: ServerFactory,
) -> None:
    server = await start_server(**UNPACED, limits={"max_sessions": 1})
    target = f"127.0.0.1:{server.port}"
    async with Session(target):
        with pytest.raises(tth_client.ResourceExhaustedError, match=r"limits\.max_sessions") as err:
            async with Session(target, reconnect=False):
                pass
        async with tth_client.Client(target) as client:
            with pytest.raises(tth_client.ResourceExhaustedError) as generate:
                await client.generate("Hi")
    assert err.value.retry_after_s == 5.0 and generate.value.retry_after_s == pytest.approx(5.0, abs=0.01)
    assert "wait and retry" in str(err.value)


async def test_a_text_refused_by_the_turn_rate_limit_raises_with_retry_after_s(start_server: ServerFactory) -> None:
    server = await start_server(**UNPACED, limits={"turns_per_minute_per_key": 1})
    async with Session(f"127.0.0.1:{server.port}") as session:
        assert (await session.say("One")).outcome is Outcome.COMPLETED
        refused = await session.say("Two")
    with pytest.raises(tth_client.ResourceExhaustedError) as err:  # and, as before, a TurnFailedError
        refused.raise_for_outcome()
    assert isinstance(err.value, tth_client.TurnFailedError) and isinstance(
        err.value, tth_client.TurnResourceExhaustedError
    )
    assert err.value.retry_after_s is not None and 0 < err.value.retry_after_s <= 60.001
    assert err.value.retry_after_s == refused.error.retry_after_ms / 1000  # type: ignore[union-attr]


def test_an_exception_without_advice_has_no_retry_after() -> None:

    error = status_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "unread events", "t")
    assert isinstance(error, tth_client.ResourceExhaustedError) and error.retry_after_s is None


async def test_resuming_after_events_no_longer_held_raises_resume_out_of_range_with_what_to_do(
    start_server: ServerFactory,
) -> None:
    server = await start_server(session={**UNPACED["session"], "replay_events": 8}, log={"level": "warning"})
    target = f"127.0.0.1:{server.port}"
    async with Session(target) as first:
        await first.say("Hello, tell me something long enough to send more than eight events.")
        late = Session(target, session_id=first.session_id, resume_after_seq=1)
        with pytest.raises(tth_client.ResumeOutOfRangeError, match="too old") as err:
            async with late:
                pass
        assert (await first.say("Still mine?")).outcome is Outcome.COMPLETED  # a refused resume takes nothing
    assert isinstance(err.value, tth_client.InvalidArgumentError)  # as OUT_OF_RANGE was before
    assert err.value.field == "resume_after_seq" and "start a new session" in err.value.hint
    assert "change the field" not in str(err.value)


async def test_a_session_resumed_elsewhere_ends_here_with_session_taken_over(start_server: ServerFactory) -> None:
    server = await start_server(session={"max_lead_ms": 100}, log={"level": "warning"})
    target = f"127.0.0.1:{server.port}"
    async with Session(target) as first:
        await first.say("Hello")
        running = first.say("Now talk for a while, as long as you like, about anything at all.")
        async for event in running:
            if isinstance(event, tth_client.AudioEvent):
                break
        async with Session(target, session_id=first.session_id, resume_after_seq=first.last_seq) as second:
            with pytest.raises(tth_client.SessionTakenOverError) as err:
                await running
            with pytest.raises(tth_client.SessionTakenOverError):
                async for _ in first:
                    pass
            await second.interrupt()
            assert (await second.say("Hi, it is me now")).outcome is Outcome.COMPLETED
    assert isinstance(err.value, tth_client.StatusError) and "take it back" in err.value.hint
