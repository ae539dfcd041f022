"""The procedural face: its mouth follows the speech, its face follows the controls, its frames follow the clock.

Frames are decoded with Pillow and measured from their pixels; nothing here looks
inside the renderer except the mouth-interior colour, which is what "open mouth"
means on this face.
"""

from __future__ import annotations

import io
import math
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import pytest
from PIL import Image

from adapters.base import AvatarInput, ControlMapping
from adapters.controls import ControlPatch, Controls, EmotionLabel, resolve
from adapters.face.avatar import FaceAvatar
from adapters.face.render import MOUTH_INTERIOR
from adapters.face.visemes import viseme_for
from adapters.media import AudioChunk, MarkKind, RenderSettings, SpeechMark, VideoEncoding, VideoFrame

RATE = 16000
SETTINGS = RenderSettings()

# Regions of the frame, as fractions of (width, height): they hold the drawn mouth and brows
# with room for the few pixels of head sway.
MOUTH_REGION = (0.30, 0.56, 0.70, 0.84)
BROW_REGION = (0.28, 0.32, 0.72, 0.43)
EYE_REGION = (0.28, 0.40, 0.72, 0.52)
LIP_BAND = (0.36, 0.60, 0.64, 0.70)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts of a voiced buzz with random loudness and length, and silent gaps."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    total = int(seconds * RATE)
    while sum(len(x) for x in out) < total:
        n = int(rng.uniform(0.08, 0.3) * RATE)
        t = np.arange(n) / RATE
        f0 = rng.uniform(110, 220)
        buzz = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        out.append(rng.uniform(0.1, 1.0) * 7000 * np.hanning(n) * buzz)
        out.append(np.zeros(int(rng.uniform(0.02, 0.3) * RATE)))
    pcm: np.ndarray = np.clip(np.concatenate(out)[:total], -32768, 32767).astype(np.int16)
    return pcm


def chunks(
    pcm: np.ndarray, chunk_ms: float = 100.0, start_ms: float = 0.0, controls: Controls | None = None
) -> list[AvatarInput]:
    step = int(chunk_ms * RATE / 1000)
    mapping = ControlMapping(controls or Controls())
    return [
        AvatarInput(AudioChunk(pcm[i : i + step].tobytes(), RATE, start_ms + i * 1000 / RATE), mapping)
        for i in range(0, len(pcm), step)
    ]


async def feed(inputs: Sequence[AvatarInput]) -> AsyncIterator[AvatarInput]:
    for item in inputs:
        yield item


async def render_all(
    inputs: Sequence[AvatarInput], settings: RenderSettings = SETTINGS, options: Mapping[str, object] | None = None
) -> list[VideoFrame]:
    avatar = FaceAvatar("face", options or {})
    return [frame async for frame in avatar.render(feed(inputs), settings)]


def decode(frame: VideoFrame) -> np.ndarray:
    image = Image.open(io.BytesIO(frame.data))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB")).astype(np.int16)


def region(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[int(box[1] * h) : int(box[3] * h), int(box[0] * w) : int(box[2] * w)]


def mouth_opening(rgb: np.ndarray) -> int:
    """Pixels of dark mouth interior: zero for closed lips, growing as the jaw drops."""
    distance = np.abs(region(rgb, MOUTH_REGION) - np.array(MOUTH_INTERIOR)).sum(axis=2)
    return int((distance < 60).sum())


def window_rms(pcm: np.ndarray, frames: Sequence[VideoFrame], frame_ms: float) -> np.ndarray:
    """RMS of the audio window each frame depicts: centred on its timestamp, one frame long."""
    out = []
    for frame in frames:
        a = max(0, int((frame.timestamp_ms - frame_ms / 2) * RATE / 1000))
        b = max(a, int((frame.timestamp_ms + frame_ms / 2) * RATE / 1000))
        window = pcm[a:b].astype(np.float64)
        out.append(math.sqrt(float(np.mean(window**2))) if len(window) else 0.0)
    return np.array(out)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


STILL = Controls(motion_gain=0.0)


# --- the mouth follows the speech ------------------------------------------------------------


async def test_mouth_opening_tracks_loudness_frame_by_frame_without_phonemes() -> None:
    pcm = speech_like(6.0)
    frames = await render_all(chunks(pcm))
    opening = np.array([mouth_opening(decode(f)) for f in frames], dtype=np.float64)
    loud = window_rms(pcm, frames, SETTINGS.frame_ms)

    def correlation(shift: int) -> float:
        a, b = (opening[shift:], loud[: len(loud) - shift]) if shift >= 0 else (opening[:shift], loud[-shift:])
        return float(np.corrcoef(a, b)[0, 1])

    # Openness is a quantized, compressive function of RMS, so the fit is not linear; 0.8 leaves
    # room for that while a mouth unrelated to the audio scores about 0. Syllables here last
    # 80-300 ms, so a mouth one frame late scores far lower: in sync means best at shift 0.
    assert correlation(0) > 0.8
    assert correlation(0) > max(correlation(-1), correlation(1)) + 0.1
    assert opening[loud == 0].max() == 0, "silent windows show a closed mouth"


async def test_silence_between_chunks_shows_a_closed_mouth() -> None:
    burst = speech_like(1.0, seed=3)
    # One second of speech, 600 ms with no audio at all, then one more second.
    inputs = [*chunks(burst), *chunks(burst, start_ms=1600.0)]
    frames = await render_all(inputs)
    opening = [mouth_opening(decode(f)) for f in frames]
    gap = [o for f, o in zip(frames, opening, strict=True) if 1000 + 20 <= f.timestamp_ms <= 1600 - 20]
    assert len(gap) >= 13
    assert max(gap) == 0
    assert max(opening) > 200, "the speech around the gap does open the mouth"


def tone(ms: float, amplitude: float = 6000.0) -> np.ndarray:
    t = np.arange(int(ms * RATE / 1000)) / RATE
    return (amplitude * np.sin(2 * np.pi * 150 * t)).astype(np.int16)


def with_phonemes(pcm: np.ndarray, marks: Sequence[tuple[float, str]], controls: Controls = STILL) -> AvatarInput:
    phonemes = tuple(SpeechMark(MarkKind.PHONEME, t, p) for t, p in marks)
    return AvatarInput(AudioChunk(pcm.tobytes(), RATE, 0.0, phonemes), ControlMapping(controls))


async def test_closed_lip_phonemes_close_the_mouth_that_open_vowels_open() -> None:
    # Loud audio throughout: by loudness alone the mouth would stay open, so only the
    # phoneme marks can close it on p, b and m.
    sequence = ["m", "'a", "b", "A:", "p", "'aI", "m", "a"]
    marks = [(i * 200.0, p) for i, p in enumerate(sequence)]
    frames = await render_all([with_phonemes(tone(1600), marks)])
    by_kind: dict[str, list[int]] = {"closed": [], "open": []}
    for frame in frames:
        slot = int(frame.timestamp_ms // 200)
        if abs(frame.timestamp_ms - slot * 200) < 40 or abs(frame.timestamp_ms - (slot + 1) * 200) < 40:
            continue  # windows that straddle two phonemes
        kind = "closed" if sequence[slot] in ("m", "b", "p") else "open"
        by_kind[kind].append(mouth_opening(decode(frame)))
    assert len(by_kind["closed"]) >= 8 and len(by_kind["open"]) >= 8
    assert max(by_kind["closed"]) == 0
    assert min(by_kind["open"]) > 200


async def test_a_bilabial_shorter_than_a_frame_still_closes_the_lips() -> None:
    # espeak's /b/ and /m/ between vowels can last 25-30 ms. This /m/ straddles two frame
    # windows, 15 ms in one and 10 ms in the other, so in neither does it last longest.
    frames = await render_all([with_phonemes(tone(600), [(0.0, "'a"), (325.0, "m"), (350.0, "a")])])
    openings = {round(f.timestamp_ms): mouth_opening(decode(f)) for f in frames}
    assert min(openings[320], openings[360]) == 0
    assert openings[280] > 200 and openings[400] > 200


async def test_a_vowel_mark_followed_by_silence_closes_the_mouth() -> None:
    pcm = np.concatenate([tone(300), np.zeros(int(0.3 * RATE), np.int16)])
    frames = await render_all([with_phonemes(pcm, [(0.0, "'a")])])
    openings = [mouth_opening(decode(f)) for f in frames]
    assert min(openings[1:7]) > 200
    assert max(openings[9:]) == 0


async def test_rounded_and_spread_vowels_give_different_mouth_shapes() -> None:
    frames = await render_all([with_phonemes(tone(800), [(0.0, "u:"), (400.0, "i:")])])
    rounded, spread = decode(frames[5]), decode(frames[15])
    # The mouth's extent across the face: a pursed /u/ is narrower than a spread /i/.
    widths = []
    for rgb in (rounded, spread):
        skin = rgb[int(0.62 * rgb.shape[0]), int(0.37 * rgb.shape[1])]
        lips = np.abs(region(rgb, LIP_BAND) - skin).sum(axis=2)
        columns = np.nonzero((lips > 80).any(axis=0))[0]
        widths.append(columns.max() - columns.min())
    assert widths[0] < 0.8 * widths[1]


def test_espeak_mnemonics_map_to_the_mouth_shapes_they_need() -> None:
    assert {viseme_for(p) for p in ("p", "b", "m")} == {"mbp"}
    assert {viseme_for(p) for p in ("f", "v")} == {"fv"}
    assert viseme_for("'O:") == viseme_for("0") == "o"
    assert viseme_for("u:") == viseme_for(",U") == "u"
    assert viseme_for("'a") == viseme_for("A:") == viseme_for("'aI") == "aa"
    assert viseme_for("i:") == viseme_for("I2") == "i"
    assert viseme_for("_:") == "rest"
    assert viseme_for("ʃ") == viseme_for("S") == "sh"
    assert viseme_for(";") is None, "a symbol with no mouth meaning keeps the previous shape"


# --- the face follows the controls -----------------------------------------------------------


async def face(controls: Controls, options: Mapping[str, object] | None = None) -> np.ndarray:
    frames = await render_all(chunks(np.zeros(RATE // 5, np.int16), controls=controls), options=options)
    return decode(frames[0])


async def test_happy_and_sad_differ_in_brows_and_mouth() -> None:
    happy = await face(Controls(label=EmotionLabel.HAPPY, intensity=1.0, motion_gain=0.0))
    sad = await face(Controls(label=EmotionLabel.SAD, intensity=1.0, motion_gain=0.0))
    again = await face(Controls(label=EmotionLabel.SAD, intensity=1.0, motion_gain=0.0))
    assert mean_abs_diff(region(sad, BROW_REGION), region(again, BROW_REGION)) == 0, "rendering is deterministic"
    # Mean absolute differences in grey levels over the whole region; JPEG re-encoding noise
    # alone is about 1, and the features cover a small part of each region.
    assert mean_abs_diff(region(happy, BROW_REGION), region(sad, BROW_REGION)) > 5
    assert mean_abs_diff(region(happy, MOUTH_REGION), region(sad, MOUTH_REGION)) > 2


@pytest.mark.parametrize("label", [e for e in EmotionLabel if e is not EmotionLabel.NEUTRAL])
async def test_every_emotion_moves_the_brows_away_from_neutral(label: EmotionLabel) -> None:
    neutral = await face(STILL)
    emotional = await face(Controls(label=label, intensity=1.0, motion_gain=0.0))
    assert mean_abs_diff(region(neutral, BROW_REGION), region(emotional, BROW_REGION)) > 5


async def test_intensity_and_expressivity_scale_the_expression() -> None:
    neutral = await face(STILL)

    def change(rgb: np.ndarray) -> float:
        return mean_abs_diff(region(neutral, BROW_REGION), region(rgb, BROW_REGION))

    mild = change(await face(Controls(label=EmotionLabel.SURPRISED, intensity=0.3, motion_gain=0.0)))
    strong = change(await face(Controls(label=EmotionLabel.SURPRISED, intensity=1.0, motion_gain=0.0)))
    flat = change(await face(Controls(label=EmotionLabel.SURPRISED, intensity=1.0, expressivity=0.0, motion_gain=0.0)))
    assert 0 < mild < strong
    assert flat == 0


async def test_expression_follows_each_segments_controls() -> None:
    quiet = np.zeros(RATE, np.int16)
    calm = Controls(motion_gain=0.0)
    glad = Controls(label=EmotionLabel.HAPPY, intensity=1.0, motion_gain=0.0)
    frames = await render_all([*chunks(quiet, controls=calm), *chunks(quiet, start_ms=1000.0, controls=glad)])
    mouths = [region(decode(f), MOUTH_REGION) for f in frames]
    assert len(frames) == 50
    assert all(mean_abs_diff(m, mouths[0]) == 0 for m in mouths[:25])
    assert all(mean_abs_diff(m, mouths[25]) == 0 for m in mouths[25:])
    assert mean_abs_diff(mouths[0], mouths[25]) > 2


async def test_personas_look_different() -> None:
    looks = {
        p: await face(Controls(persona_id=p, motion_gain=0.0)) for p in ("neutral", "professional", "casual", "excited")
    }
    names = list(looks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            # Whole-frame mean difference: skin, hair, clothes and background all change.
            assert mean_abs_diff(looks[a], looks[b]) > 10, (a, b)


async def test_persona_option_defines_a_new_look() -> None:
    options = {"personas": {"pirate": {"skin": "#c68642", "hair": [20, 20, 20], "hair_style": "long"}}}
    pirate = await face(Controls(persona_id="pirate", motion_gain=0.0), options)
    neutral = await face(Controls(persona_id="neutral", motion_gain=0.0), options)
    assert mean_abs_diff(pirate, neutral) > 10
    with pytest.raises(ValueError, match=r"personas\.pirate\.skin"):
        FaceAvatar("face", {"personas": {"pirate": {"skin": "tan"}}})


async def test_head_motion_scales_with_motion_gain() -> None:
    quiet = np.zeros(4 * RATE, np.int16)

    async def motion(gain: float) -> float:
        frames = await render_all(chunks(quiet, controls=Controls(motion_gain=gain)))
        mouths = [region(decode(f), MOUTH_REGION) for f in frames]
        return float(np.mean([mean_abs_diff(m, mouths[0]) for m in mouths]))

    still, normal, lively = await motion(0.0), await motion(1.0), await motion(2.0)
    assert still == 0
    assert 0 < normal < lively


async def test_blinks_are_reproducible_per_seed() -> None:
    quiet = chunks(np.zeros(8 * RATE, np.int16), controls=STILL)
    first = await render_all(quiet, options={"seed": 1})
    again = await render_all(quiet, options={"seed": 1})
    other = await render_all(quiet, options={"seed": 2})
    assert [f.data for f in first] == [f.data for f in again]

    def blinking(frames: list[VideoFrame]) -> list[int]:
        eyes = [region(decode(f), EYE_REGION) for f in frames]
        return [i for i, e in enumerate(eyes) if mean_abs_diff(e, eyes[0]) > 1]

    assert len(blinking(first)) >= 2, "a still face blinks at least once in 8 s"
    assert blinking(first) != blinking(other)


# --- frames follow the clock -----------------------------------------------------------------


@pytest.mark.parametrize("fps", [25, 30])
async def test_frames_cover_the_audio_on_its_clock(fps: int) -> None:
    settings = RenderSettings(fps=fps)
    pcm = speech_like(1.2345, seed=5)
    # Uneven chunks with a 250 ms gap, ending at 1234.5 + 250 ms.
    first, second = pcm[: 7 * RATE // 10], pcm[7 * RATE // 10 :]
    inputs = [*chunks(first, chunk_ms=73.0), *chunks(second, chunk_ms=111.0, start_ms=950.0)]
    end_ms = inputs[-1].chunk.end_ms
    frames = await render_all(inputs, settings)
    assert len(frames) == math.ceil(end_ms / settings.frame_ms)
    assert frames[-1].timestamp_ms < end_ms
    for i, frame in enumerate(frames):
        assert frame.frame_index == i
        assert frame.timestamp_ms == pytest.approx(i * settings.frame_ms)
        assert abs(frame.drift_ms) <= settings.frame_ms / 2
        assert frame.encoding is VideoEncoding.JPEG


async def test_frames_stream_as_soon_as_their_audio_arrives() -> None:
    pcm = speech_like(2.0, seed=7)
    inputs = chunks(pcm, chunk_ms=200.0)
    sent_ms: list[float] = [0.0]

    async def source() -> AsyncIterator[AvatarInput]:
        for item in inputs:
            sent_ms[0] = item.chunk.end_ms
            yield item

    avatar = FaceAvatar("face", {})
    arrivals = [(frame, sent_ms[0]) async for frame in avatar.render(source(), SETTINGS)]
    half = SETTINGS.frame_ms / 2
    for frame, sent in arrivals:
        # Never rendered before its window's audio arrived, and never held back a whole chunk.
        assert frame.timestamp_ms + half <= sent + 1e-6
        assert frame.timestamp_ms + half > sent - 200.0 - 1e-6
    assert len(arrivals) == 50


@pytest.mark.parametrize(("width", "height"), [(256, 256), (512, 512), (320, 240)])
async def test_jpegs_decode_at_the_requested_size(width: int, height: int) -> None:
    settings = RenderSettings(width=width, height=height)
    frames = await render_all(chunks(speech_like(0.5, seed=9)), settings)
    assert len(frames) == 13
    for frame in frames:
        assert (frame.width, frame.height) == (width, height)
        assert decode(frame).shape == (height, width, 3)


# --- what the adapter says it does -----------------------------------------------------------


def test_map_controls_reports_what_the_face_shows_and_what_it_cannot() -> None:
    avatar = FaceAvatar("face", {})
    controls = resolve(
        [("turn", ControlPatch(label=EmotionLabel.HAPPY, intensity=0.7, speech_rate=1.5, persona_id="nobody"))]
    )
    mapping = avatar.map_controls(controls)
    applied = {a.field: a.detail for a in mapping.applied}
    downgraded = {d.field: d.reason for d in mapping.downgraded}
    assert applied["emotion.label"] == "expression=happy@0.75"
    assert {"emotion.intensity", "character.motion_gain", "character.expressivity"} <= set(applied)
    assert "character.speech_rate" in downgraded
    assert "character.persona_id" in downgraded, "an unknown persona is drawn with the neutral look"
    assert "character.pitch_shift" not in downgraded, "controls left at their defaults are not reported"
    caps = avatar.capabilities()
    assert caps.streaming and caps.speech_marks
    assert caps.emotions == frozenset(EmotionLabel)
    assert set(applied) <= caps.controls


async def test_start_draws_the_default_face_so_the_first_frame_needs_no_drawing() -> None:
    async with FaceAvatar("face", {}) as avatar:
        assert isinstance(avatar, FaceAvatar)
        built = avatar.atlas.stats.faces_built
        quiet = chunks(np.zeros(RATE // 10, np.int16), controls=STILL)
        frames = [frame async for frame in avatar.render(feed(quiet), SETTINGS)]
        assert frames and avatar.atlas.stats.faces_built == built == 1
        assert avatar.atlas.stats.hits >= 1


async def test_encoded_frame_cache_stays_within_its_budget() -> None:
    avatar = FaceAvatar("face", {"cache_mb": 0.1})
    pcm = speech_like(4.0, seed=11)
    frames = [frame async for frame in avatar.render(feed(chunks(pcm)), SETTINGS)]
    assert len(frames) == 100
    assert avatar.atlas.stats.frames_evicted > 0
    assert 0 < avatar.atlas.stats.bytes <= 0.1 * (1 << 20)
