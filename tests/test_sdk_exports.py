"""Keep the SDK's surface honest: `__all__`, docstrings, the exception tree, and coverage of the protos."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

import tth_client
from tth_client import _exceptions
from tth_client._events import AudioEvent, VideoEvent, events_from_response
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb


def test_all_names_exactly_the_public_names_of_the_package() -> None:
    public = {
        name
        for name, value in vars(tth_client).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(tth_client.__all__) - {"__version__"} == public
    # (ruff's RUF022 keeps __all__ sorted)


def test_every_exported_class_and_function_states_what_it_guarantees_in_a_docstring() -> None:
    missing = [
        name
        for name in tth_client.__all__
        if (inspect.isclass(obj := getattr(tth_client, name)) or inspect.isfunction(obj)) and not inspect.getdoc(obj)
    ]
    assert missing == []


def test_the_package_ships_type_information() -> None:
    assert (Path(tth_client.__file__).parent / "py.typed").exists()


def test_every_sdk_exception_is_a_tth_error_and_is_drawn_in_the_tree() -> None:
    tree = inspect.getdoc(_exceptions) or ""
    exported = [getattr(tth_client, n) for n in tth_client.__all__]
    errors = [e for e in exported if inspect.isclass(e) and issubclass(e, BaseException)]
    assert errors and all(issubclass(e, tth_client.TTHError) for e in errors)
    assert [e.__name__ for e in errors if e.__name__ not in tree] == []
    assert issubclass(tth_client.TimeoutError, TimeoutError)
    assert issubclass(tth_client.InvalidControlError, ValueError)


def test_every_event_arm_of_both_streams_has_an_event_class() -> None:
    streams: list[tuple[Any, Any]] = [
        (pb.ConverseResponse, events_from_response),
        (pb.GenerateResponse, events_from_response),
    ]
    for message, convert in streams:
        for field in message.DESCRIPTOR.oneofs_by_name["event"].fields:
            name = field.message_type.name
            if name == "MediaBatch":  # unpacked into the events of the arms it batches
                batch = _media_message(name)(
                    audio=[_media_message("AudioChunk")()], video=[_media_message("VideoFrame")()]
                )
                events = convert(message(turn_id="t-1", seq=2, media=batch))
                assert [(type(e), e.seq) for e in events] == [(AudioEvent, 1), (VideoEvent, 2)]
                continue
            payload = getattr(pb, name, None) or _media_message(name)
            events = convert(message(turn_id="t-1", seq=1, **{field.name: payload()}))
            assert len(events) == 1 and events[0] is not None, f"{message.__name__}.{field.name} has no event class"
            assert getattr(events[0], field.name) == payload() and events[0].turn_id == "t-1"


def _media_message(name: str) -> type:
    from tth_client.v1 import media_pb2

    message: type = getattr(media_pb2, name)
    return message


def test_keyword_controls_cover_every_control_field_of_the_protos() -> None:
    renamed = {"label": "emotion", "persona_id": "persona"}
    fields = {f.name for m in (cpb.EmotionControl, cpb.CharacterControl) for f in m.DESCRIPTOR.fields}
    assert {renamed.get(f, f) for f in fields} == set(tth_client.Controls.__annotations__)


def test_the_sync_api_takes_the_same_arguments_and_offers_the_same_calls_as_the_async_api() -> None:
    def keywords(function: object) -> set[str]:
        return set(inspect.signature(function).parameters) - {"self"}  # type: ignore[arg-type]

    assert keywords(tth_client.SyncSession.__init__) == keywords(tth_client.Session.__init__) - {"channel"}
    assert keywords(tth_client.SyncClient.__init__) == keywords(tth_client.Client.__init__) - {"channel"}
    for name in ("say", "update_controls", "interrupt", "close", "abort", "open"):
        assert keywords(getattr(tth_client.SyncSession, name)) == keywords(getattr(tth_client.Session, name))
    for name in ("list_models", "create_session", "generate", "health", "session", "close"):
        assert keywords(getattr(tth_client.SyncClient, name)) == keywords(getattr(tth_client.Client, name))
    for name in ("result", "interrupt"):
        extra = {"timeout_s"} if name == "result" else set()
        assert keywords(getattr(tth_client.SyncTurn, name)) == keywords(getattr(tth_client.Turn, name)) | extra


def test_a_misspelt_keyword_control_is_refused_naming_it_rather_than_dropped() -> None:
    with pytest.raises(tth_client.InvalidControlError, match="'persona_id' is not a control") as refused:
        tth_client.turn_control(persona_id="casual")  # type: ignore[call-arg]
    assert refused.value.field == "persona_id" and "'persona'" in refused.value.hint
