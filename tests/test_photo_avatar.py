"""The photo avatar: a real portrait (NASA's public-domain astronaut photo from scikit-image) speaks.

Frames are decoded and measured from their pixels against the portrait's own
landmarks; portraits that cannot be animated are refused with the problem named;
the landmark cache is reused across detectors and sessions.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.base import AvatarInput, ControlMapping
from adapters.controls import ControlPatch, Controls, EmotionLabel, resolve
from adapters.media import AudioChunk, RenderSettings, VideoEncoding, VideoFrame
from adapters.photo.avatar import PhotoAvatar
from adapters.photo.portrait import DEFAULT_MAX_BYTES, Detector, PortraitError
from adapters.photo.workers import ProcessRenderer
from tests.test_face_avatar import RATE, chunks, speech_like

skimage_data = pytest.importorskip("skimage.data")


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return png(skimage_data.astronaut())


@pytest.fixture
async def avatar(astronaut: bytes, tmp_path: Path) -> AsyncIterator[tuple[PhotoAvatar, str]]:
    adapter = PhotoAvatar("photo", {"cache_dir": str(tmp_path), "seed": 3})
    async with adapter:
        yield adapter, await adapter.prepare(astronaut)


def still(controls: Controls | None = None) -> Controls:
    """Controls with no head motion, so pixel comparisons see only the face's own movement."""
    return resolve([("turn", ControlPatch(motion_gain=0.0))]) if controls is None else controls


async def render(adapter: PhotoAvatar, portrait: str, inputs: Sequence[AvatarInput]) -> list[VideoFrame]:
    async def feed() -> AsyncIterator[AvatarInput]:
        for item in inputs:
            yield item

    settings = RenderSettings(portrait_id=portrait)
    return [frame async for frame in adapter.render(feed(), settings)]


def decode(frame: VideoFrame) -> np.ndarray:
    image = Image.open(io.BytesIO(frame.data))
    assert image.format == "JPEG" and image.size == (frame.width, frame.height)
    return np.asarray(image.convert("RGB")).astype(np.int16)


def regions(adapter: PhotoAvatar, portrait: str) -> tuple[tuple[slice, slice], np.ndarray]:
    """The mouth-and-chin box of the rigged portrait, and a mask of everything outside the face's lower half."""
    rig = adapter.rig(portrait, 256, 256)
    p = rig.points
    x0, x1 = int(p[48][0] - 8), int(p[54][0] + 8)
    y0, y1 = int(p[33][1]), int(p[8][1] + 10)
    outside = np.ones((256, 256), bool)
    outside[y0 - 30 : y1 + 20, int(p[2][0]) - 6 : int(p[14][0]) + 6] = False
    return (slice(y0, y1), slice(x0, x1)), outside


async def test_portrait_frames_decode_on_the_audio_clock(avatar: tuple[PhotoAvatar, str]) -> None:
    adapter, portrait = avatar
    frames = await render(adapter, portrait, chunks(speech_like(1.2), controls=still()))
    assert len(frames) == 30
    for i, frame in enumerate(frames):
        assert frame.encoding is VideoEncoding.JPEG and frame.frame_index == i
        assert frame.timestamp_ms == pytest.approx(i * 40.0) and frame.source_audio_ms == frame.timestamp_ms
        decode(frame)


async def test_mouth_moves_with_speech_and_rests_in_silence(avatar: tuple[PhotoAvatar, str]) -> None:
    adapter, portrait = avatar
    t = np.arange(int(1.0 * RATE)) / RATE
    vowel = (7000 * np.sin(2 * np.pi * 140 * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    pcm = np.concatenate([vowel, np.zeros(RATE, np.int16)])
    frames = [decode(f) for f in await render(adapter, portrait, chunks(pcm, controls=still()))]
    mouth, _ = regions(adapter, portrait)
    speaking = [float(np.abs(a[mouth] - b[mouth]).mean()) for a, b in itertools.pairwise(frames[2:25])]
    resting = [float(np.abs(a[mouth] - b[mouth]).mean()) for a, b in itertools.pairwise(frames[30:50])]
    assert max(speaking) > 4.0, speaking
    assert max(resting) < 0.5, resting
    # Open during the vowel: between the lips it is dark (the cavity), at rest it is lip and skin.
    p = adapter.rig(portrait, 256, 256).points
    lips = (slice(int(p[62][1]), int(p[62][1] + 8)), slice(int(p[60][0] + 6), int(p[64][0] - 6)))
    assert frames[12][lips].mean() < frames[45][lips].mean() - 30


async def test_the_rest_of_the_portrait_stays_close_while_speaking(avatar: tuple[PhotoAvatar, str]) -> None:
    adapter, portrait = avatar
    frames = [decode(f) for f in await render(adapter, portrait, chunks(speech_like(1.5, seed=2), controls=still()))]
    _, outside = regions(adapter, portrait)
    original = adapter.rig(portrait, 256, 256).base[:, :, ::-1].astype(np.int16)
    for frame in frames:
        # JPEG noise is ~1-2 levels; blinks and brows are within the face box, excluded here.
        assert float(np.abs(frame - original)[outside].mean()) < 3.0


async def test_emotion_shows_on_the_face_and_is_reported(avatar: tuple[PhotoAvatar, str]) -> None:
    adapter, portrait = avatar
    silence = np.zeros(RATE // 2, np.int16)
    neutral = await render(adapter, portrait, chunks(silence, controls=still()))
    happy_controls = resolve([("turn", ControlPatch(label=EmotionLabel.HAPPY, intensity=1.0, motion_gain=0.0))])
    happy = await render(adapter, portrait, chunks(silence, controls=happy_controls))
    mouth, _ = regions(adapter, portrait)
    assert float(np.abs(decode(neutral[-1])[mouth] - decode(happy[-1])[mouth]).mean()) > 2.0
    mapping = adapter.map_controls(happy_controls)
    assert any(a.field == "emotion.label" and "happy" in a.detail for a in mapping.applied)


async def test_the_same_audio_and_seed_give_the_same_video(avatar: tuple[PhotoAvatar, str]) -> None:
    adapter, portrait = avatar
    inputs = chunks(speech_like(0.8, seed=5))
    first = [f.data for f in await render(adapter, portrait, inputs)]
    again = [f.data for f in await render(adapter, portrait, inputs)]
    assert first == again


async def test_stopping_the_render_stops_frames_at_once(avatar: tuple[PhotoAvatar, str]) -> None:
    adapter, portrait = avatar

    async def endless() -> AsyncIterator[AvatarInput]:
        start = 0.0
        while True:
            for item in chunks(speech_like(0.4), start_ms=start):
                yield item
            start += 400.0

    stream = adapter.render(endless(), RenderSettings(portrait_id=portrait))
    got = [await anext(stream) for _ in range(5)]
    await stream.aclose()
    assert [f.frame_index for f in got] == [0, 1, 2, 3, 4]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"hello, not a picture", "not a JPEG or PNG image"),
        (b"", "empty"),
        (b"G" * (DEFAULT_MAX_BYTES + 1), "over the limit of"),
    ],
)
def test_a_portrait_that_is_not_an_image_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(PortraitError, match=problem):
        Detector(cache_dir=None).measure(data)


def test_a_portrait_with_no_face_two_faces_or_too_small_is_refused(astronaut: bytes) -> None:
    detector = Detector(cache_dir=None)
    with pytest.raises(PortraitError, match="no face found"):
        detector.measure(png(skimage_data.coffee()))
    face = skimage_data.astronaut()
    with pytest.raises(PortraitError, match="2 faces found"):
        detector.measure(png(np.concatenate([face[:300], face[:300, ::-1]], axis=1)))
    with pytest.raises(PortraitError, match="too small"):
        detector.measure(png(face[::5, ::5]))
    tiny_face = np.full((600, 600, 3), 200, np.uint8)
    tiny_face[260:360, 260:360] = face[40:240:2, 130:330:2]
    with pytest.raises(PortraitError, match=r"too small|no face"):
        detector.measure(png(tiny_face))
    gif = io.BytesIO()
    Image.fromarray(face).save(gif, "GIF")
    with pytest.raises(PortraitError, match="JPEG or PNG image, got GIF"):
        detector.measure(gif.getvalue())


def test_landmarks_are_cached_by_content_and_reused(astronaut: bytes, tmp_path: Path) -> None:
    first = Detector(cache_dir=tmp_path)
    measured = first.measure(astronaut)
    assert first.detections == 1 and list(tmp_path.glob(f"{measured.digest}.dlib68.json"))
    second = Detector(cache_dir=tmp_path)
    again = second.measure(astronaut)
    assert second.detections == 0
    np.testing.assert_allclose(again.landmarks, measured.landmarks, atol=0.01)


async def test_a_portrait_prepared_twice_is_measured_once(astronaut: bytes, tmp_path: Path) -> None:
    adapter = PhotoAvatar("photo", {"cache_dir": ""})
    ids = [await adapter.prepare(astronaut), await adapter.prepare(astronaut)]
    assert ids[0] == ids[1] and adapter.detector.detections == 1


def test_the_five_point_model_places_a_whole_face(astronaut: bytes) -> None:
    full = Detector("dlib68", cache_dir=None).measure(astronaut).landmarks
    fitted = Detector("dlib5", cache_dir=None).measure(astronaut).landmarks
    jaw = float(np.linalg.norm(full[16] - full[0]))
    # The mean face lands within a tenth of the jaw's width of the measured mouth and chin.
    for index in (8, 48, 54, 62, 66):
        assert float(np.linalg.norm(fitted[index] - full[index])) < 0.1 * jaw, index


async def test_no_portrait_anywhere_is_a_precise_provider_error() -> None:
    from adapters.errors import ProviderError

    adapter = PhotoAvatar("photo", {"cache_dir": ""})
    inputs = [AvatarInput(AudioChunk(b"\0\0" * 640, RATE, 0.0), ControlMapping(Controls()))]
    with pytest.raises(ProviderError, match="no portrait"):
        await render(adapter, "", inputs)


async def test_frames_from_worker_processes_and_from_threads_are_the_same(astronaut: bytes, tmp_path: Path) -> None:
    inputs = chunks(speech_like(0.8, seed=5))
    videos = []
    for processes in (0, 2):
        options = {"cache_dir": str(tmp_path), "seed": 3, "render_processes": processes}
        async with PhotoAvatar("photo", options) as adapter:
            videos.append([f.data for f in await render(adapter, await adapter.prepare(astronaut), inputs)])
    assert len(videos[0]) == 20 and videos[0] == videos[1]


async def test_a_render_worker_that_dies_is_replaced_and_the_frames_go_on(astronaut: bytes, tmp_path: Path) -> None:
    async with PhotoAvatar("photo", {"cache_dir": str(tmp_path), "render_processes": 1}) as adapter:
        portrait = await adapter.prepare(astronaut)
        assert isinstance(adapter.renderer, ProcessRenderer)
        (dead,) = adapter.renderer.pids()
        os.kill(dead, signal.SIGKILL)
        frames = await render(adapter, portrait, chunks(speech_like(0.8, seed=6)))
        assert adapter.renderer.pids() != [dead]
    assert len(frames) == 20
    assert all(Image.open(io.BytesIO(f.data)).size == (256, 256) for f in frames)


def slowed(adapter: PhotoAvatar, hold: asyncio.Event | None, delay_s: float = 0.0) -> None:
    """Make the adapter's renderer slow (`delay_s` per frame) or stuck after its first frame (until `hold` is set)."""
    render, calls = adapter.renderer.render, itertools.count()

    async def slow(*args: object) -> bytes:
        if next(calls) and hold is not None:
            await hold.wait()
        await asyncio.sleep(delay_s)
        return await render(*args)  # type: ignore[arg-type]

    adapter.renderer.render = slow  # type: ignore[method-assign]


async def test_a_busy_renderer_holds_the_previous_frame_rather_than_making_video_late(
    astronaut: bytes, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    async with PhotoAvatar("photo", {"cache_dir": str(tmp_path), "render_processes": 0}) as adapter:
        portrait = await adapter.prepare(astronaut)
        slowed(adapter, hold)

        async def real_time() -> AsyncIterator[AvatarInput]:
            for item in chunks(speech_like(0.8, seed=7), chunk_ms=40.0):
                yield item
                await asyncio.sleep(0.04)

        frames = [f async for f in adapter.render(real_time(), RenderSettings(portrait_id=portrait))]
        hold.set()
    assert [f.frame_index for f in frames] == list(range(20))  # every frame, on the clock, none waited forever
    assert adapter.stand_ins >= 18 and all(f.data == frames[0].data for f in frames[1:])


async def test_audio_faster_than_real_time_waits_for_every_pose(astronaut: bytes, tmp_path: Path) -> None:
    inputs = chunks(speech_like(0.8, seed=8))
    async with PhotoAvatar("photo", {"cache_dir": "", "render_processes": 0, "seed": 3}) as adapter:
        expected = [f.data for f in await render(adapter, await adapter.prepare(astronaut), inputs)]
    async with PhotoAvatar("photo", {"cache_dir": "", "render_processes": 0, "seed": 3}) as adapter:
        portrait = await adapter.prepare(astronaut)
        slowed(adapter, None, delay_s=0.02)  # slower than the cache, faster than the 40 ms frame clock
        assert [f.data for f in await render(adapter, portrait, inputs)] == expected
        assert adapter.stand_ins == 0


def test_render_processes_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"render_processes must be >= 0 \(0 renders in threads\), got -1"):
        PhotoAvatar("photo", {"render_processes": -1})
