"""Converse end to end over a real server and a real gRPC client, on the keyless mock profile."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from tests.conftest import ServerFactory
from tests.recording import RecordingLLM
from tests.wire import Conversation, arms, is_terminal
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
SLOW_REPLY = (
    "One two three four five six, seven eight nine ten. Eleven twelve thirteen fourteen. "
    "Fifteen sixteen seventeen eighteen nineteen twenty. Twenty-one twenty-two twenty-three."
)


async def _stub(start_server: ServerFactory, **overrides: object) -> pb_grpc.ConversationServiceStub:
    server = await start_server(**overrides)
    channel = start_server.channel(server.port)
    return pb_grpc.ConversationServiceStub(channel)


def _llm(**options: object) -> dict[str, object]:
    return {"llm": {"adapter": "scripted", "options": options}}


async def test_first_message_must_be_config(stub: pb_grpc.ConversationServiceStub) -> None:
    call = stub.Converse()
    await call.write(pb.ConverseRequest(text=pb.UserText(text="hi")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first ConverseRequest must set config" in (err.value.details() or "")


async def test_stream_closed_before_config_is_invalid_argument(stub: pb_grpc.ConversationServiceStub) -> None:
    call = stub.Converse()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_invalid_config_names_the_field_and_limit(stub: pb_grpc.ConversationServiceStub) -> None:
    conv = Conversation(stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.start(render=cpb.RenderOptions(fps=0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.render.fps must be in [1, 60]" in (err.value.details() or "")


async def test_unknown_persona_in_config_lists_the_known_ones(stub: pb_grpc.ConversationServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await Conversation(stub).start(persona_id="pirate")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.persona_id 'pirate'" in (err.value.details() or "") and "casual" in (err.value.details() or "")


async def test_started_comes_first_with_formats_and_persona(stub: pb_grpc.ConversationServiceStub) -> None:
    first = await Conversation(stub).start(persona_id="casual")
    assert first.WhichOneof("event") == "started" and first.seq == 1
    assert first.started.session_id == first.session_id != ""
    assert first.started.audio.sample_rate_hz == 24000 and first.started.audio.channels == 1
    assert (first.started.video.width, first.started.video.height, first.started.video.fps) == (256, 256, 25)
    assert first.started.persona_id == "casual" and first.started.persona_name == "Sam"


async def test_three_turns_each_get_text_audio_video_and_one_terminal_event(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    conv = Conversation(stub)
    started = await conv.start()
    turn_ids = []
    for text in ("Hello!", "What is the weather like?", "Thanks, bye."):
        await conv.say(text)
        events = await conv.until_terminal()
        kinds = arms(events)
        assert {"text_delta", "audio", "video"} <= set(kinds)
        assert kinds[-1] == "turn_complete" and sum(map(is_terminal, events)) == 1
        assert len({e.turn_id for e in events}) == 1
        turn_ids.append(events[0].turn_id)
        audio = [e.audio for e in events if e.HasField("audio")]
        assert all(a.duration_ms > 0 for a in audio)
        # Audio is contiguous on the turn's clock, starting at 0.
        assert audio[0].timestamp_ms == 0
        for a, b in itertools.pairwise(audio):
            assert b.timestamp_ms == pytest.approx(a.timestamp_ms + a.duration_ms)
        frames = [e.video for e in events if e.HasField("video")]
        assert frames[0].data[:2] == b"\xff\xd8"  # JPEG
        # Frames cover the audio within one frame.
        audio_end = audio[-1].timestamp_ms + audio[-1].duration_ms
        assert frames[-1].timestamp_ms < audio_end <= frames[-1].timestamp_ms + 40 + 1e-6
        metrics = events[-1].turn_complete.metrics
        assert metrics.frames == len(frames) and metrics.audio_ms == pytest.approx(audio_end)
        assert 0 < metrics.time_to_first_text_ms <= metrics.time_to_first_audio_ms <= metrics.time_to_first_video_ms
    assert len(set(turn_ids)) == 3
    seqs = [e.seq for e in conv.events]
    assert seqs == list(range(1, len(seqs) + 1)) and conv.events[0] is started
    assert await conv.finish() == grpc.StatusCode.OK


async def test_half_close_finishes_the_running_turn_then_ends_ok(start_server: ServerFactory) -> None:
    # Paced: the turn is still running when the client half-closes.
    stub = await _stub(start_server, session={"max_lead_ms": 100}, components=_llm(reply="One, two, three."))
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Tell me a story.")
    assert await conv.finish() == grpc.StatusCode.OK
    assert arms(conv.events)[-1] == "turn_complete"


async def test_barge_in_ends_the_running_turn_before_the_next_turns_first_event(start_server: ServerFactory) -> None:
    stub = await _stub(start_server, session={"max_lead_ms": 100})
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Tell me a long story.")
    await conv.until("audio")
    await conv.say("Actually, stop.")
    first = await conv.until_terminal()
    assert first[-1].WhichOneof("event") == "turn_interrupted"
    assert first[-1].turn_interrupted.reason == pb.INTERRUPT_REASON_BARGE_IN
    second = [await conv.until("audio")]
    await conv.interrupt()
    second += await conv.until_terminal()
    assert second[-1].WhichOneof("event") == "turn_interrupted"
    assert second[-1].turn_interrupted.reason == pb.INTERRUPT_REASON_CLIENT
    assert {e.turn_id for e in second}.isdisjoint({first[-1].turn_id})


@pytest.mark.usefixtures("recording_llm")
async def test_interrupt_stops_media_and_history_keeps_only_what_was_heard(start_server: ServerFactory) -> None:
    RecordingLLM.requests.clear()
    components = {"llm": {"adapter": "recording_llm", "options": {"reply": SLOW_REPLY}}}
    stub = await _stub(start_server, session={"max_lead_ms": 100}, components=components)
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Count for me.")
    while (await conv.next()).WhichOneof("event") != "audio" or conv.events[-1].audio.timestamp_ms < 400:
        pass
    turn_id = conv.events[-1].turn_id
    await conv.interrupt(played_ms=300)
    events = await conv.until_terminal()
    stopped = events[-1]
    assert stopped.WhichOneof("event") == "turn_interrupted" and stopped.turn_id == turn_id
    assert stopped.turn_interrupted.reason == pb.INTERRUPT_REASON_CLIENT
    assert stopped.turn_interrupted.played_ms == 300
    spoken = stopped.turn_interrupted.spoken_text
    assert spoken and SLOW_REPLY.startswith(spoken) and len(spoken) < len(SLOW_REPLY) / 2
    # Nothing of the interrupted turn follows its terminal event.
    await conv.say("Again?")
    after = [await conv.until("audio")]
    await conv.interrupt()
    after += await conv.until_terminal()
    assert all(e.turn_id != turn_id for e in after)
    # The next turn's history holds only what was heard.
    history = RecordingLLM.requests[-1].history
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].text == spoken


async def test_interrupt_with_no_turn_running_does_nothing(stub: pb_grpc.ConversationServiceStub) -> None:
    conv = Conversation(stub)
    await conv.start()
    await conv.interrupt()
    await conv.say("Hello!")
    events = await conv.until_terminal()
    assert arms(events)[-1] == "turn_complete"


async def test_control_update_applies_from_the_next_turn_on(start_server: ServerFactory) -> None:
    paced = {"max_lead_ms": 100}
    stub = await _stub(start_server, session=paced, components=_llm(hints=False, reply="One, two. Three."))
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Hello!")
    await conv.until("audio")
    await conv.update(label="sad", speech_rate=0.8)
    reports = [(await conv.until_terminal())[-1].turn_complete.control_report]
    for text in ("And now?", "And again?"):
        await conv.say(text)
        reports.append((await conv.until_terminal())[-1].turn_complete.control_report)

    def tts(report: pb.ControlReport, field: str) -> pb.AppliedControl:
        return next(a for a in report.applied if a.field == field and a.stage == pb.STAGE_TTS)

    assert tts(reports[0], "emotion.label").value == "neutral"
    for report in reports[1:]:
        assert (tts(report, "emotion.label").value, tts(report, "emotion.label").source) == ("sad", "pending")
        assert tts(report, "character.speech_rate").value == "0.8"


async def test_an_inline_hint_from_the_llm_applies_to_the_speech_from_its_segment_on(
    start_server: ServerFactory,
) -> None:
    reply = "Well, let me see. [sad 0.9] That is a pity. It rained all week. [happy] But the sun is out now."
    stub = await _stub(start_server, session=UNPACED, components=_llm(reply=reply))
    conv = Conversation(stub)
    await conv.start()
    await conv.say("How was the week?")
    events = await conv.until_terminal()
    done = events[-1].turn_complete
    assert "[" not in done.text and "pity" in done.text  # the tags are lifted out of the text
    tts = {
        (a.value, a.source)
        for a in done.control_report.applied
        if a.field == "emotion.label" and a.stage == pb.STAGE_TTS
    }
    assert tts == {("neutral", "default"), ("sad", "llm_hint"), ("happy", "llm_hint")}


async def test_turn_controls_override_the_pending_update_for_that_turn_only(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    conv = Conversation(stub)
    await conv.start()
    await conv.update(label="sad")
    await conv.say("Hi!", label="angry", intensity=0.9)
    first = (await conv.until_terminal())[-1].turn_complete.control_report
    await conv.say("Hi again!")
    second = (await conv.until_terminal())[-1].turn_complete.control_report
    label = next(a for a in first.applied if a.field == "emotion.label" and a.stage == pb.STAGE_TTS)
    assert (label.value, label.source) == ("angry", "turn")
    labels = {(a.value, a.source) for a in second.applied if a.field == "emotion.label" and a.stage == pb.STAGE_TTS}
    assert ("sad", "pending") in labels


async def test_five_emotions_give_five_different_tts_parameter_sets(start_server: ServerFactory) -> None:
    stub = await _stub(start_server, session=UNPACED, components=_llm(hints=False, reply="Hello there."))
    conv = Conversation(stub)
    await conv.start()
    details = set()
    for label in ("neutral", "happy", "sad", "angry", "surprised"):
        await conv.say("Say it.", label=label, intensity=1.0)
        report = (await conv.until_terminal())[-1].turn_complete.control_report
        details.add(next(a.detail for a in report.applied if a.field == "emotion.label" and a.stage == pb.STAGE_TTS))
    assert len(details) == 5


@pytest.mark.usefixtures("recording_llm")
async def test_two_personas_give_different_system_prompts(start_server: ServerFactory) -> None:
    RecordingLLM.requests.clear()
    stub = await _stub(start_server, session=UNPACED, components={"llm": {"adapter": "recording_llm"}})
    for persona in ("professional", "excited"):
        conv = Conversation(stub)
        await conv.start(persona_id=persona)
        await conv.say("Hello!")
        await conv.until_terminal()
        await conv.finish()
    professional, excited = (r.system_prompt for r in RecordingLLM.requests[-2:])
    assert professional != excited
    assert "Morgan" in professional and "professional" in professional
    assert "Jo" in excited and "happy" in excited


async def test_the_control_report_names_the_persona_in_use(stub: pb_grpc.ConversationServiceStub) -> None:
    conv = Conversation(stub)
    await conv.start(persona_id="casual")
    await conv.say("Hello!")
    report = (await conv.until_terminal())[-1].turn_complete.control_report
    personas = {(a.value, a.source) for a in report.applied if a.field == "character.persona_id"}
    assert personas == {("casual", "persona")}
    await conv.say("Hello!", persona_id="excited")
    report = (await conv.until_terminal())[-1].turn_complete.control_report
    assert {(a.value, a.source) for a in report.applied if a.field == "character.persona_id"} == {("excited", "turn")}


async def test_first_audio_arrives_before_a_slow_llm_has_finished(start_server: ServerFactory) -> None:
    stub = await _stub(start_server, session=UNPACED, components=_llm(tokens_per_s=50, hints=False))
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Tell me something.")
    events = await conv.until_terminal()
    kinds = arms(events)
    last_text = max(i for i, k in enumerate(kinds) if k == "text_delta")
    assert kinds.index("audio") < last_text
    assert kinds.index("video") < last_text


async def test_invalid_control_is_an_in_stream_error_and_the_session_goes_on(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Hi!", intensity=1.5)
    error = await conv.next()
    assert error.WhichOneof("event") == "error" and error.turn_id == ""
    assert error.error.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "text.control.emotion.intensity must be in [0.0, 1.0], got 1.5" in error.error.message
    await conv.update(speech_rate=9)
    error = await conv.next()
    assert "control.control.character.speech_rate must be in [0.25, 4.0]" in error.error.message
    await conv.say("   ")
    assert "text.text must not be empty" in (await conv.next()).error.message
    await conv.call.write(pb.ConverseRequest(config=pb.SessionConfig()))
    assert (await conv.next()).error.code == pb.ERROR_CODE_FAILED_PRECONDITION
    await conv.say("Hi!")
    assert arms(await conv.until_terminal())[-1] == "turn_complete"


async def test_a_failing_provider_fails_the_turn_once_and_the_session_goes_on(start_server: ServerFactory) -> None:
    tts = {"adapter": "tone_tts", "options": {"fail_after": 3, "fail_category": "rate_limit"}}
    stub = await _stub(start_server, session=UNPACED, components={"tts": tts})
    conv = Conversation(stub)
    await conv.start()
    for _ in range(2):
        await conv.say("Hello!")
        events = await conv.until_terminal()
        assert sum(map(is_terminal, events)) == 1
        failure = events[-1]
        assert failure.WhichOneof("event") == "error" and failure.turn_id
        assert failure.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED and failure.error.retryable
        # What the TTS made before it failed leaves as it is due; what had not left yet ends with the turn.
        assert 1 <= arms(events).count("audio") <= 3


async def test_create_session_then_attach_keeps_persona_and_defaults(stub: pb_grpc.ConversationServiceStub) -> None:
    from tests.wire import control

    created = await stub.CreateSession(
        pb.CreateSessionRequest(persona_id="excited", default_control=control(speech_rate=1.5))
    )
    conv = Conversation(stub)
    started = await conv.start(session_id=created.session_id)
    assert started.started.session_id == created.session_id and started.started.persona_id == "excited"
    await conv.say("Hello!")
    report = (await conv.until_terminal())[-1].turn_complete.control_report
    rate = next(a for a in report.applied if a.field == "character.speech_rate" and a.stage == pb.STAGE_TTS)
    assert (rate.value, rate.source) == ("1.5", "session")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await Conversation(stub).start(session_id=created.session_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_generate_streams_one_whole_turn(stub: pb_grpc.ConversationServiceStub) -> None:
    events = [e async for e in stub.Generate(pb.GenerateRequest(text="Hello!", persona_id="casual"))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "turn_complete"
    assert {"text_delta", "audio", "video"} <= set(kinds)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_generate_rejects_empty_text(stub: pb_grpc.ConversationServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Generate(pb.GenerateRequest(text="")):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text must not be empty" in str(err.value.details())


async def test_list_models_shows_each_stage(stub: pb_grpc.ConversationServiceStub) -> None:
    models = await stub.ListModels(pb.ListModelsRequest())
    by_stage = {m.stage: m for m in models.stages}
    assert by_stage[pb.STAGE_TTS].adapter == "tone_tts" and by_stage[pb.STAGE_TTS].mode == pb.ADAPTER_MODE_LOCAL
    assert by_stage[pb.STAGE_TTS].capabilities.speech_marks
    assert all(m.health == pb.ADAPTER_HEALTH_SERVING for m in models.stages)
    assert models.profile == "mock" and {"neutral", "professional", "casual", "excited"} <= set(models.persona_ids)


async def test_many_sessions_at_once_each_complete_their_turn(stub: pb_grpc.ConversationServiceStub) -> None:
    async def one(i: int) -> list[str]:
        conv = Conversation(stub)
        await conv.start()
        await conv.say(f"Hello number {i}!")
        events = await conv.until_terminal()
        await conv.finish()
        return arms(events)

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert all(r[-1] == "turn_complete" and "audio" in r and "video" in r for r in results)
