"""The Piper TTS adapter against the real bundled voice: speech, marks on the audio, interrupts, faults, bad input.

The voice is loaded once for the module (about 2 s); texts are short so the module stays fast.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import pytest_asyncio

from adapters.controls import Controls, EmotionLabel
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.media import AudioChunk, MarkKind
from adapters.piper.tts import PiperTTS
from adapters.piper.tts import _split_first as split_first
from tests.conftest import ServerFactory
from tth_client import Outcome, Session
from tth_client.v1 import conversation_pb2 as pb

# The voice is shared by the tests that take `tts`, so they run on the module's event loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tts(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PiperTTS]:
    adapter = PiperTTS("piper", {"cache_dir": str(tmp_path_factory.mktemp("piper-cache")), "threads": 2})
    async with adapter:
        yield adapter


async def render(tts: PiperTTS, text: str, controls: Controls | None = None) -> list[AudioChunk]:
    return [c async for c in tts.synthesize(text, tts.map_controls(controls or Controls()))]


def pcm(chunks: list[AudioChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2").astype(np.float64)


@on_module_loop
async def test_the_bundled_voice_speaks_with_phoneme_and_word_marks_inside_the_audio(tts: PiperTTS) -> None:
    chunks = await render(tts, "Hello there, my friend.")
    samples = pcm(chunks)
    assert tts.sample_rate_hz == 22050 and all(c.sample_rate_hz == 22050 for c in chunks)
    frames = samples[: len(samples) // 441 * 441].reshape(-1, 441)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert np.percentile(rms, 90) > 1000 and np.percentile(rms, 10) < 300
    # Chunks are contiguous, 40 ms each but the last.
    assert all(abs(b.timestamp_ms - a.end_ms) < 1e-6 for a, b in itertools.pairwise(chunks))
    assert all(abs(c.duration_ms - 40) < 0.1 for c in chunks[:-1])
    marks = [m for c in chunks for m in c.marks]
    audio_ms = chunks[-1].end_ms
    times = [m.time_ms for m in marks]
    assert times == sorted(times) and all(0 <= t <= audio_ms for t in times)
    assert all(c.timestamp_ms <= m.time_ms <= c.end_ms for c in chunks for m in c.marks)
    assert [m.text for m in marks if m.kind is MarkKind.WORD] == ["Hello", "there", "my", "friend"]
    phonemes = [m.text for m in marks if m.kind is MarkKind.PHONEME]
    assert {"h", "ð", "m", "f"} <= set(phonemes) and phonemes[-1] == "_"


@on_module_loop
async def test_marks_follow_the_audio_a_word_starts_where_its_sound_does(tts: PiperTTS) -> None:
    chunks = await render(tts, "Stop. Go.")
    samples, rate = pcm(chunks), 22050
    words = {m.text: m.time_ms for c in chunks for m in c.marks if m.kind is MarkKind.WORD}
    # Between the sentences there is a pause; "Go" starts after it, where energy rises again.
    window = samples[int(words["Go"] * rate / 1000) - 2205 : int(words["Go"] * rate / 1000)]
    after = samples[int(words["Go"] * rate / 1000) : int(words["Go"] * rate / 1000) + 2205]
    assert np.sqrt((after**2).mean()) > 2 * np.sqrt((window**2).mean())


@on_module_loop
async def test_numbers_and_emoji_still_get_a_word_mark_per_written_word(tts: PiperTTS) -> None:
    chunks = await render(tts, "I have 42 cats 😀 now.")
    words = [m.text for c in chunks for m in c.marks if m.kind is MarkKind.WORD]
    assert words == ["I", "have", "42", "cats", "😀", "now"]


@on_module_loop
async def test_speech_rate_changes_duration_and_pitch_is_reported_downgraded(tts: PiperTTS) -> None:
    text = "The quick brown fox."
    fast = await render(tts, text, Controls(speech_rate=1.5))
    slow = await render(tts, text, Controls(speech_rate=0.7))
    assert slow[-1].end_ms > 1.6 * fast[-1].end_ms
    mapping = tts.map_controls(Controls(pitch_shift=0.5, label=EmotionLabel.HAPPY, intensity=1.0))
    assert "character.pitch_shift" in {d.field for d in mapping.downgraded}
    assert {"character.speech_rate", "emotion.label"} <= {a.field for a in mapping.applied}
    clamped = tts.map_controls(Controls(speech_rate=4.0))
    assert any(d.field == "character.speech_rate" and "0.5..2.0" in d.reason for d in clamped.downgraded)


@on_module_loop
@pytest.mark.parametrize("text", ["😀😀😀", "Привет, мир", "你好", "?!...", "...", "\0\0", "a\u0301b\u200d"])
async def test_text_the_phonemizer_finds_odd_gives_speech_or_nothing_never_a_crash(tts: PiperTTS, text: str) -> None:
    chunks = await asyncio.wait_for(render(tts, text), 10)
    marks = [m.time_ms for c in chunks for m in c.marks]
    assert marks == sorted(marks)
    if chunks:
        assert all(len(c.pcm) % 2 == 0 for c in chunks)


@on_module_loop
async def test_a_4000_character_segment_is_spoken_in_pieces_and_first_audio_comes_early(tts: PiperTTS) -> None:
    text = ("this is a long run of words without any stop " * 90)[:4000]
    started = time.monotonic()
    stream = cast(AsyncGenerator[AudioChunk, None], tts.synthesize(text, tts.map_controls(Controls())))
    first = await anext(stream)
    first_s = time.monotonic() - started
    await stream.aclose()
    # One piece of at most 200 phonemes (a few seconds of speech), not all 4,000 characters, before the first chunk.
    assert first.timestamp_ms == 0 and first_s < 30
    with pytest.raises(ProviderError) as info:
        await render(tts, "a " * 10_001)
    assert info.value.category is ErrorCategory.INVALID_REQUEST and "20000" in str(info.value)


@on_module_loop
async def test_closing_the_stream_stops_synthesis_within_one_piece(tts: PiperTTS) -> None:
    text = "One two three four five six seven eight nine ten. " * 20
    before = tts.samples_synthesized
    stream = cast(AsyncGenerator[AudioChunk, None], tts.synthesize(text, tts.map_controls(Controls())))
    await anext(stream)
    await stream.aclose()
    await asyncio.sleep(0.5)  # a piece already running in a thread finishes; no new one starts
    # Each sentence here is one piece of about 2.5 s; all twenty would be about 50 s.
    assert tts.samples_synthesized - before <= 6 * 22050


async def test_a_missing_voice_stops_the_start_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await PiperTTS("piper", {"voice": str(tmp_path / "nope.onnx")}).start()
    assert "nope.onnx does not exist" in str(info.value) and "options.voice" in str(info.value)
    with pytest.raises(ConfigError, match="pip install no-such-voice"):
        await PiperTTS("piper", {"voice": "no-such-voice"}).start()


def _broken_voice(folder: Path) -> Path:
    model = folder / "broken.onnx"
    model.write_bytes(b"not an onnx model")
    Path(f"{model}.json").write_text('{"audio": {"sample_rate": 22050}}')
    return model


async def test_a_corrupt_voice_file_names_the_file_and_can_be_configured_to_fail_over(tmp_path: Path) -> None:
    model = _broken_voice(tmp_path)
    with pytest.raises(ConfigError, match="broken"):
        await PiperTTS("piper", {"voice": str(model), "cache_dir": str(tmp_path)}).start()
    degraded = PiperTTS("piper", {"voice": str(model), "cache_dir": str(tmp_path), "on_load_error": "fallback"})
    async with degraded:
        assert not (await degraded.health()).healthy
        with pytest.raises(ProviderError) as info:
            await render(degraded, "Hi.")
        assert info.value.retryable is False and "broken" in str(info.value)


async def test_the_local_profile_falls_back_to_espeak_when_the_voice_fails_to_load(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    tts = {"adapter": "piper_tts", "options": {"voice": str(tmp_path / "gone.onnx"), "on_load_error": "fallback"}}
    server = await start_server(
        "local",
        components={"tts": tts | {"fallback": [{"adapter": "espeak_tts", "options": {"workers": 1}}]}},
        session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000},
    )
    async with Session(f"127.0.0.1:{server.port}") as session:
        result = await session.say("Hello there!")
    assert result.outcome is Outcome.COMPLETED
    assert result.audio_ms > 500  # espeak-ng speech, not silence
    tts_timing = next(t for t in result.metrics.stages if t.stage == pb.STAGE_TTS)
    assert tts_timing.fallback_used and tts_timing.adapter == "espeak_tts"


async def test_a_first_piece_option_cuts_the_first_run_at_a_word_break_and_keeps_every_word(tmp_path: Path) -> None:
    options = {"first_piece_phonemes": 12, "threads": 1, "cache_dir": str(tmp_path)}
    async with PiperTTS("piper", options) as early:
        chunks = await render(early, "I think that we can do it, and we will start tomorrow morning.")
    words = [m.text for c in chunks for m in c.marks if m.kind is MarkKind.WORD]
    assert words == ["I", "think", "that", "we", "can", "do", "it", "and", "we", "will", "start", "tomorrow", "morning"]
    assert split_first(list("ab cd ef gh ij kl"), 4) == [list("ab cd "), list("ef gh ij kl")]
    assert split_first(list("abcdefgh"), 4) == [list("abcdefgh")]
