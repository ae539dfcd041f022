"""A client's own portrait over the wire: the SDK sends it in SessionConfig, the server refuses bad ones
precisely, the session's frames are that face, and an interrupt stops them.

A real server on port 0 (mock LLM and tone TTS, so the face is what is exercised)
with the photo avatar, and the real SDK.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tth_client
from adapters.errors import ConfigError
from tests.conftest import ServerFactory
from tests.test_photo_avatar import png
from tth_client import AudioEvent, Client, Outcome, Session, TurnInterruptedEvent, VideoEvent

skimage_data = pytest.importorskip("skimage.data")


def jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def photo_server(tmp_path: Path, **session: object) -> dict[str, object]:
    avatar = {"adapter": "photo_avatar", "options": {"cache_dir": str(tmp_path)}}
    return {"components": {"avatar": avatar}, "session": {"max_lead_ms": 1_000_000, **session}}


async def test_a_session_with_a_portrait_speaks_with_that_face(start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(**photo_server(tmp_path))
    portrait = skimage_data.astronaut()
    async with Session(f"127.0.0.1:{server.port}", portrait=png(portrait)) as session:
        result = await session.say("Hello there!")
    assert result.outcome is Outcome.COMPLETED and result.frames
    first = np.asarray(Image.open(io.BytesIO(result.frames[0].data)).convert("RGB")).astype(np.int16)
    assert first.shape == (256, 256, 3)
    # The frame is the portrait's face (skin tones at the centre), not the drawn face.
    centre = first[100:140, 110:150].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[2] + 30
    assert all(f.timestamp_ms == pytest.approx(i * 40.0) for i, f in enumerate(result.frames))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: b"not an image at all", "config.portrait: portrait is not a JPEG or PNG image"),
        (lambda: jpeg(skimage_data.coffee()), "config.portrait: no face found"),
        (lambda: png(skimage_data.astronaut()[::5, ::5]), "too small"),
        (lambda: b"\x89PNG" + b"0" * 300_000, "config.portrait is 300004 bytes, over the limit of 200000"),
    ],
)
async def test_a_bad_portrait_is_refused_with_invalid_argument_naming_the_problem(
    start_server: ServerFactory, tmp_path: Path, make: object, problem: str
) -> None:
    server = await start_server(**photo_server(tmp_path, max_portrait_bytes=200_000))
    assert callable(make)
    with pytest.raises(tth_client.InvalidArgumentError, match=problem):
        async with Session(f"127.0.0.1:{server.port}", portrait=make()):
            pass


async def test_two_faces_are_refused_in_generate_too(start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(**photo_server(tmp_path))
    face = skimage_data.astronaut()[:300]
    async with Client(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(tth_client.InvalidArgumentError, match="portrait: 2 faces found"):
            await client.generate("Hi", portrait=png(np.concatenate([face, face[:, ::-1]], axis=1)))


async def test_a_portrait_sent_to_a_server_without_a_photo_avatar_is_refused(start_server: ServerFactory) -> None:
    server = await start_server()
    with pytest.raises(tth_client.InvalidArgumentError, match="does not animate portraits"):
        async with Session(f"127.0.0.1:{server.port}", portrait=png(skimage_data.astronaut())):
            pass


async def test_interrupt_stops_the_photo_faces_frames(start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(**photo_server(tmp_path, max_lead_ms=100))
    async with Session(f"127.0.0.1:{server.port}", portrait=png(skimage_data.astronaut())) as session:
        turn = session.say("Tell me a long story about the sea")
        async for event in turn:
            if isinstance(event, VideoEvent):
                break
        await turn.interrupt()
        result = await turn
    assert result.outcome is Outcome.INTERRUPTED
    cut = next(i for i, e in enumerate(turn.events) if isinstance(e, TurnInterruptedEvent))
    assert cut == len(turn.events) - 1
    assert not any(isinstance(e, VideoEvent | AudioEvent) for e in turn.events[cut + 1 :])


def personas_with_portraits(tmp_path: Path, **portraits: bytes) -> str:
    """A personas file beside the given portraits, each persona naming its own by a relative path."""
    lines = ["personas:", "  neutral: {name: Alex}"]
    for pid, data in portraits.items():
        (tmp_path / f"{pid}.png").write_bytes(data)
        lines.append(f"  {pid}: {{name: {pid.title()}, portrait: {pid}.png}}")
    path = tmp_path / "personas.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def centre(frame: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB")).astype(np.int16)
    return rgb[100:140, 110:150].reshape(-1, 3).mean(axis=0)


async def test_a_persona_with_a_portrait_speaks_with_it_unless_the_session_sent_its_own(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    personas = personas_with_portraits(tmp_path, host=png(skimage_data.astronaut()))
    server = await start_server(**photo_server(tmp_path), personas_file=personas)
    target = f"127.0.0.1:{server.port}"
    async with Session(target, persona="host") as session:
        by_persona = await session.say("Hello there!")
        # Switching to a persona with no portrait, on a server with no default portrait, is a failed turn.
        other = await session.say("Hi", persona="neutral")
    assert by_persona.outcome is Outcome.COMPLETED and by_persona.frames
    assert centre(by_persona.frames[0].data)[0] > centre(by_persona.frames[0].data)[2] + 30  # the astronaut's face
    assert other.outcome is Outcome.FAILED and "no portrait" in str(other.error)
    grey = np.repeat(skimage_data.astronaut().mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    async with Session(target, persona="host", portrait=png(grey)) as session:
        own = await session.say("Hello there!")
    red, _, blue = centre(own.frames[0].data)
    assert abs(red - blue) < 10  # the session's grey portrait, not the persona's colour one


async def test_a_persona_portrait_with_no_face_stops_the_start_naming_the_persona(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    personas = personas_with_portraits(tmp_path, host=png(skimage_data.coffee()))
    with pytest.raises(ConfigError, match=r"personas\.yaml: host\.portrait: no face found"):
        await start_server(**photo_server(tmp_path), personas_file=personas)
    (tmp_path / "host.png").unlink()
    with pytest.raises(ConfigError, match=r"host\.portrait: cannot read .*host\.png.*No such file"):
        await start_server(**photo_server(tmp_path), personas_file=personas)


async def test_persona_portraits_leave_a_server_with_the_drawn_face_as_it_was(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    personas = personas_with_portraits(tmp_path, host=png(skimage_data.astronaut()))
    server = await start_server(personas_file=personas, session={"max_lead_ms": 1_000_000})
    async with Session(f"127.0.0.1:{server.port}", persona="host") as session:
        result = await session.say("Hello there!")
    assert result.outcome is Outcome.COMPLETED and result.frames
