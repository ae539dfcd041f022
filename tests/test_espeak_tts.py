"""The espeak-ng TTS adapter: real speech, marks that line up, controls you can measure, safe concurrency.

Every test runs the real library in real worker processes. Audio is judged by what a
listener depends on: energy and zero crossings like speech, duration for rate,
fundamental frequency (autocorrelation) for pitch, loudness for volume.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pytest

from adapters.controls import Controls, EmotionLabel
from adapters.errors import ProviderError
from adapters.espeak.tts import EspeakTTS
from adapters.media import AudioChunk, MarkKind

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."


@pytest.fixture
async def tts() -> AsyncIterator[EspeakTTS]:
    adapter = EspeakTTS("espeak", {"workers": 2})
    async with adapter:
        yield adapter


@pytest.fixture
def mapper() -> EspeakTTS:
    """An adapter that is not started: mapping controls needs no worker."""
    return EspeakTTS("espeak", {})


class Rendered:
    """All the chunks of one call, and views of them."""

    def __init__(self, chunks: list[AudioChunk]) -> None:
        self.chunks = chunks
        self.rate = chunks[0].sample_rate_hz
        self.samples = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2").astype(np.float64)
        self.marks = [m for c in chunks for m in c.marks]

    @property
    def duration_ms(self) -> float:
        return len(self.samples) * 1000.0 / self.rate

    def texts(self, kind: MarkKind) -> list[str]:
        return [m.text for m in self.marks if m.kind is kind]

    def times(self, kind: MarkKind) -> list[float]:
        return [m.time_ms for m in self.marks if m.kind is kind]


async def render(tts: EspeakTTS, text: str, controls: Controls | None = None) -> Rendered:
    mapping = tts.map_controls(controls or Controls())
    return Rendered([chunk async for chunk in tts.synthesize(text, mapping)])


def frame_rms(samples: np.ndarray, frame: int) -> np.ndarray:
    usable = len(samples) // frame * frame
    rms: np.ndarray = np.sqrt(np.mean(samples[:usable].reshape(-1, frame) ** 2, axis=1))
    return rms


def median_f0_hz(samples: np.ndarray, rate: int) -> float:
    """Median fundamental frequency over the loud frames, by autocorrelation (60..500 Hz)."""
    frame = 1024
    rms = frame_rms(samples, frame)
    estimates = []
    for i in np.flatnonzero(rms > 0.3 * rms.max()):
        x = samples[i * frame : (i + 1) * frame]
        x = x - x.mean()
        ac = np.correlate(x, x, mode="full")[frame - 1 :]
        lo, hi = rate // 500, rate // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:  # clearly periodic: a voiced frame
            estimates.append(rate / lag)
    assert estimates, "no voiced frame found"
    return float(np.median(estimates))


async def test_audio_has_the_energy_and_zero_crossings_of_speech(tts: EspeakTTS) -> None:
    audio = await render(tts, SENTENCE)

    assert audio.rate == tts.sample_rate_hz == 22050
    assert 3000 < audio.duration_ms < 8000
    assert np.sqrt(np.mean(audio.samples**2)) > 1000  # int16 full scale is 32767; silence is 0
    crossings_per_s = np.count_nonzero(np.diff(np.signbit(audio.samples))) / (audio.duration_ms / 1000)
    assert 300 < crossings_per_s < 6000
    # Speech comes in syllables and pauses: loudness moves a lot from one 20 ms frame to the next.
    rms = frame_rms(audio.samples, audio.rate // 50)
    assert rms.std() / rms.mean() > 0.5
    assert 70 < median_f0_hz(audio.samples, audio.rate) < 250


async def test_chunks_are_contiguous_40_ms_pieces_with_a_shorter_last_one(tts: EspeakTTS) -> None:
    audio = await render(tts, SENTENCE)

    assert audio.chunks[0].timestamp_ms == 0
    for before, after in itertools.pairwise(audio.chunks):
        assert after.timestamp_ms == pytest.approx(before.end_ms)
    assert {c.samples for c in audio.chunks[:-1]} == {882}  # 40 ms at 22050 Hz
    assert 0 < audio.chunks[-1].samples <= 882


async def test_word_marks_name_the_words_of_the_text_in_order_within_the_audio(tts: EspeakTTS) -> None:
    text = "Hello there, it's 42 degrees today. Isn't that warm?"
    audio = await render(tts, text)

    assert audio.texts(MarkKind.WORD) == ["Hello", "there", "it's", "42", "degrees", "today", "Isn't", "that", "warm"]
    assert audio.texts(MarkKind.SENTENCE) == ["Hello there, it's 42 degrees today.", "Isn't that warm?"]
    times = audio.times(MarkKind.WORD)
    assert times == sorted(times)
    assert times[0] == 0
    assert times[-1] < audio.duration_ms - 100  # "warm" is spoken, not stamped at the end


async def test_words_espeak_folds_into_a_neighbour_still_get_their_own_marks(tts: EspeakTTS) -> None:
    text = "I am a scripted stand-in for a language model, so I am only a voice."
    audio = await render(tts, text)

    assert audio.texts(MarkKind.WORD) == [w.strip(",.") for w in text.split()]
    times = audio.times(MarkKind.WORD)
    assert times == sorted(times) and len(set(times)) == len(times)


async def test_each_mark_travels_in_the_chunk_whose_time_range_contains_it(tts: EspeakTTS) -> None:
    audio = await render(tts, SENTENCE)

    assert len(audio.marks) > 40
    for chunk in audio.chunks[:-1]:
        for mark in chunk.marks:
            assert chunk.timestamp_ms <= mark.time_ms < chunk.end_ms
    for mark in audio.chunks[-1].marks:
        assert audio.chunks[-1].timestamp_ms <= mark.time_ms <= audio.chunks[-1].end_ms


async def test_phoneme_marks_carry_espeak_mnemonics_in_order(tts: EspeakTTS) -> None:
    audio = await render(tts, "Hello world")

    phonemes = [p for p in audio.texts(MarkKind.PHONEME) if not p.startswith("_")]  # "_" marks are pauses
    assert phonemes == ["h", "@", "l", "'oU", "w", "'3:", "l", "d"]
    times = audio.times(MarkKind.PHONEME)
    assert times == sorted(times)
    assert times[-1] <= audio.duration_ms


async def test_faster_speech_rate_gives_proportionally_shorter_audio(tts: EspeakTTS) -> None:
    normal = await render(tts, SENTENCE)
    fast = await render(tts, SENTENCE, Controls(speech_rate=1.6))

    # Pauses do not shrink as much as speech, so less than the full 1/1.6 = 0.625.
    assert fast.duration_ms / normal.duration_ms < 0.75
    assert tts.map_controls(Controls(speech_rate=1.6)).params["rate_wpm"] == 280


async def test_pitch_shift_moves_the_fundamental_frequency(tts: EspeakTTS) -> None:
    low = await render(tts, SENTENCE, Controls(pitch_shift=-1.0))
    normal = await render(tts, SENTENCE)
    high = await render(tts, SENTENCE, Controls(pitch_shift=1.0))

    f0 = [median_f0_hz(a.samples, a.rate) for a in (low, normal, high)]
    # +-1 asks for +-6 semitones (x1.41); unvoiced edges and the final fall pull the median in, so expect most of it.
    assert f0[1] / f0[0] > 1.2
    assert f0[2] / f0[1] > 1.2


async def test_sad_speech_is_slower_lower_and_softer_than_happy(tts: EspeakTTS) -> None:
    happy = await render(tts, SENTENCE, Controls(label=EmotionLabel.HAPPY, intensity=1.0))
    sad = await render(tts, SENTENCE, Controls(label=EmotionLabel.SAD, intensity=1.0))

    assert sad.duration_ms > 1.15 * happy.duration_ms
    assert median_f0_hz(sad.samples, sad.rate) < 0.85 * median_f0_hz(happy.samples, happy.rate)
    assert np.sqrt(np.mean(sad.samples**2)) < 0.85 * np.sqrt(np.mean(happy.samples**2))


async def test_personas_speak_with_different_voices(tts: EspeakTTS) -> None:
    neutral = await render(tts, SENTENCE, Controls(persona_id="neutral"))
    casual = await render(tts, SENTENCE, Controls(persona_id="casual"))

    voices = {
        p: tts.map_controls(Controls(persona_id=p)).params["voice"]
        for p in ("neutral", "professional", "casual", "excited")
    }
    assert len(set(voices.values())) == 4
    assert median_f0_hz(casual.samples, casual.rate) > 1.4 * median_f0_hz(neutral.samples, neutral.rate)


async def test_voices_option_maps_a_persona_to_another_voice() -> None:
    tts = EspeakTTS("espeak", {"workers": 1, "voices": {"pirate": "en-gb-scotland+m7"}})
    async with tts:
        mapping = tts.map_controls(Controls(persona_id="pirate"))
        audio = await render(tts, "Ahoy there", Controls(persona_id="pirate"))

    assert mapping.params["voice"] == "en-gb-scotland+m7"
    assert audio.texts(MarkKind.WORD) == ["Ahoy", "there"]


def test_controls_are_reported_as_applied_with_espeak_values(mapper: EspeakTTS) -> None:
    mapping = mapper.map_controls(Controls(speech_rate=1.1, pitch_shift=1.0))

    applied = {a.field: a.detail for a in mapping.applied}
    assert applied["character.speech_rate"] == "rate=193 wpm"
    assert applied["character.pitch_shift"].startswith("pitch=75")
    assert applied["character.persona_id"] == "voice=en-us"
    assert set(applied) == mapper.capabilities().controls
    assert mapping.downgraded == ()


def test_speech_rate_beyond_espeak_limits_is_clamped_and_reported(mapper: EspeakTTS) -> None:
    fast = mapper.map_controls(Controls(speech_rate=4.0))
    slow = mapper.map_controls(Controls(speech_rate=0.25))

    assert fast.params["rate_wpm"] == 450
    assert slow.params["rate_wpm"] == 80
    assert [(d.field, d.reason) for d in fast.downgraded] == [
        ("character.speech_rate", "wanted 700 wpm; espeak allows 80..450 wpm, used 450 wpm")
    ]
    assert [d.field for d in slow.downgraded] == ["character.speech_rate"]


def test_unknown_persona_falls_back_to_the_default_voice_and_says_so(mapper: EspeakTTS) -> None:
    mapping = mapper.map_controls(Controls(persona_id="nobody"))

    assert mapping.params["voice"] == "en-us"
    assert [d.field for d in mapping.downgraded] == ["character.persona_id"]
    assert "nobody" in mapping.downgraded[0].reason


def test_motion_gain_set_by_a_caller_is_reported_as_not_expressible(mapper: EspeakTTS) -> None:
    controls = replace(Controls(motion_gain=1.5), sources={"motion_gain": "turn"})

    assert [d.field for d in mapper.map_controls(controls).downgraded] == ["character.motion_gain"]
    assert mapper.map_controls(Controls(motion_gain=1.5)).downgraded == ()  # left at its default source


async def test_cancelling_mid_sentence_stops_synthesis_and_the_next_call_works() -> None:
    long_text = " ".join([SENTENCE] * 400)  # about 30 minutes of speech
    first_chunk = asyncio.Event()

    async def consume(tts: EspeakTTS) -> None:
        async for _ in tts.synthesize(long_text, tts.map_controls(Controls())):
            first_chunk.set()

    # One worker: the next call runs only once the cancelled one has really stopped.
    tts = EspeakTTS("espeak", {"workers": 1})
    async with tts:
        task = asyncio.create_task(consume(tts))
        await first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await render(tts, "Still here")
        cancelled_s = tts.audio_synthesized_s - after.duration_ms / 1000

    assert after.texts(MarkKind.WORD) == ["Still", "here"]
    # Run to the end it would make all ~30 minutes; cancelled after its first chunk it stops almost at once.
    assert cancelled_s < 0.25 * 30 * 60


async def test_a_worker_that_dies_fails_its_call_retryably_and_is_replaced() -> None:
    long_text = " ".join([SENTENCE] * 400)
    tts = EspeakTTS("espeak", {"workers": 1})
    async with tts:
        calls = tts.synthesize(long_text, tts.map_controls(Controls()))
        await anext(calls)
        for process in multiprocessing.active_children():
            if process.name == "espeak-worker":
                process.kill()
        with pytest.raises(ProviderError) as failure:
            async for _ in calls:
                pass
        after = await render(tts, "Still here")
        health = await tts.health()

    assert failure.value.retryable
    assert after.texts(MarkKind.WORD) == ["Still", "here"]
    assert health.healthy


async def test_closing_fails_calls_still_waiting_for_a_worker() -> None:
    long_text = " ".join([SENTENCE] * 400)
    tts = EspeakTTS("espeak", {"workers": 1})
    await tts.start()
    busy = tts.synthesize(long_text, tts.map_controls(Controls()))
    await anext(busy)
    waiting = asyncio.create_task(render(tts, "Waiting in line"))
    await asyncio.sleep(0)  # let it queue for the only worker
    await tts.aclose()

    with pytest.raises(ProviderError):
        await waiting
    with pytest.raises(ProviderError):
        async for _ in busy:
            pass


async def test_concurrent_calls_each_get_exactly_their_own_audio() -> None:
    words = SENTENCE.rstrip(".").split()
    texts = [f"Caller {i}: " + " ".join(words[: 3 + i]) + "." for i in range(16)]
    tts = EspeakTTS("espeak", {"workers": 2})
    async with tts:
        alone = [await render(tts, text) for text in texts]
        together = await asyncio.gather(*(render(tts, text) for text in texts))

    for text, solo, mixed in zip(texts, alone, together, strict=True):
        assert mixed.texts(MarkKind.WORD) == solo.texts(MarkKind.WORD), text
        assert mixed.texts(MarkKind.PHONEME) == solo.texts(MarkKind.PHONEME), text
        # espeak ends each clause on a whole pitch period and carries the wave's phase from call to
        # call, so repeated runs differ by up to ~20 ms; one of espeak's buffers is 60 ms.
        assert mixed.duration_ms == pytest.approx(solo.duration_ms, abs=30), text
        assert mixed.times(MarkKind.WORD) == pytest.approx(solo.times(MarkKind.WORD), abs=30), text
        for before, after in itertools.pairwise(mixed.chunks):
            assert after.timestamp_ms == pytest.approx(before.end_ms)
    durations = sorted(a.duration_ms for a in alone)
    assert min(b - a for a, b in itertools.pairwise(durations)) > 60  # a swap could not hide


async def test_blank_text_yields_no_audio(tts: EspeakTTS) -> None:
    assert [c async for c in tts.synthesize("  \n ", tts.map_controls(Controls()))] == []


async def test_health_is_serving_only_while_started() -> None:
    tts = EspeakTTS("espeak", {"workers": 1})
    assert not (await tts.health()).healthy
    await tts.start()
    status = await tts.health()
    await tts.aclose()
    await tts.aclose()

    assert status.healthy
    assert "espeak-ng 1." in status.detail
    assert not (await tts.health()).healthy


def test_capabilities_declare_streaming_all_emotions_and_marks() -> None:
    caps = EspeakTTS("espeak", {}).capabilities()

    assert caps.streaming and caps.speech_marks
    assert caps.emotions == frozenset(EmotionLabel)
    assert "character.motion_gain" not in caps.controls


async def test_a_voice_espeak_does_not_have_fails_start_with_its_name() -> None:
    tts = EspeakTTS("espeak", {"workers": 1, "voices": {"robot": "en-us+nosuchvariant"}})

    with pytest.raises(ProviderError, match="nosuchvariant"):
        await tts.start()
    assert not (await tts.health()).healthy


@pytest.mark.parametrize("options", [{"workers": 0}, {"workers": 99}, {"chunk_ms": 0}, {"voices": ["en-us"]}])
def test_invalid_options_are_rejected_with_the_option_named(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        EspeakTTS("espeak", options)
