"""`openai_tts` against a fake /v1/audio/speech streaming PCM in pieces that split samples."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from adapters.controls import ControlPatch, Controls, EmotionLabel, resolve
from adapters.errors import ErrorCategory, ProviderError
from adapters.openai.tts import OpenAITTS, instructions_for, speed_for
from tests.fakes.http import Faults
from tests.fakes.openai import KEY, FakeOpenAI, pcm_for

TEXT = "Hello there, this is a sentence."


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.aclose()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def controls(**fields: Any) -> Controls:
    return resolve([("turn", ControlPatch(**fields))])


async def test_pcm_arrives_whole_and_exact_with_timestamps_from_zero(fake: FakeOpenAI) -> None:
    async with OpenAITTS("openai_tts", {"base_url": fake.url}) as tts:
        assert isinstance(tts, OpenAITTS)
        chunks = [c async for c in tts.synthesize(TEXT, tts.map_controls(controls()))]
    assert b"".join(c.pcm for c in chunks) == pcm_for(TEXT)
    assert all(len(c.pcm) % 2 == 0 and c.sample_rate_hz == 24000 for c in chunks)
    ends = [c.timestamp_ms for c in chunks[1:]]
    assert ends == pytest.approx([c.end_ms for c in chunks[:-1]])
    assert chunks[0].timestamp_ms == 0
    body = fake.speech_bodies[-1]
    assert (body["model"], body["response_format"], body["voice"], body["speed"]) == (
        "gpt-4o-mini-tts",
        "pcm",
        "nova",
        1.0,
    )
    assert "Tone:" in body["instructions"]


@pytest.mark.parametrize(
    ("label", "voice"),
    [
        ("neutral", "nova"),
        ("happy", "shimmer"),
        ("sad", "onyx"),
        ("angry", "echo"),
        ("surprised", "fable"),
        ("fearful", "alloy"),
        ("disgusted", "echo"),
    ],
)
def test_each_emotion_picks_the_seeds_voice(label: str, voice: str) -> None:
    tts = OpenAITTS("openai_tts", {})
    assert tts.map_controls(controls(label=EmotionLabel(label))).params["voice"] == voice


def test_speed_is_rate_times_arousal_clamped_and_reported() -> None:
    assert speed_for(controls(speech_rate=1.2, arousal=1.0))[0] == pytest.approx(1.38)
    assert speed_for(controls(speech_rate=0.25, arousal=-1.0))[0] == 0.25
    tts = OpenAITTS("openai_tts", {})
    mapping = tts.map_controls(controls(speech_rate=0.25, arousal=-1.0))
    assert mapping.params["speed"] == 0.25
    assert any(d.field == "character.speech_rate" and "outside" in d.reason for d in mapping.downgraded)


def test_instructions_describe_emotion_and_persona_and_tts1_downgrades_instead() -> None:
    c = controls(label=EmotionLabel.SAD, intensity=0.9, valence=-0.8, expressivity=0.9, persona_id="casual")
    text = instructions_for(c)
    assert "very sad" in text and "casual" in text and "negative" in text and "expressive" in text
    rich = OpenAITTS("openai_tts", {}).map_controls(c)
    assert {a.field for a in rich.applied} >= {"emotion.label", "emotion.intensity", "emotion.valence"}
    plain = OpenAITTS("openai_tts", {"model": "tts-1"}).map_controls(c)
    assert "instructions" not in plain.params
    assert {d.field for d in plain.downgraded} >= {"emotion.intensity", "emotion.valence", "character.expressivity"}


def test_pitch_shift_is_an_honest_downgrade() -> None:
    mapping = OpenAITTS("openai_tts", {}).map_controls(controls(pitch_shift=0.5))
    reasons = {d.field: d.reason for d in mapping.downgraded}
    assert "no pitch parameter" in reasons["character.pitch_shift"]
    unset = OpenAITTS("openai_tts", {}).map_controls(controls())
    assert "character.pitch_shift" not in {d.field for d in unset.downgraded}


async def test_tts1_sends_no_instructions_and_the_server_accepts_it(fake: FakeOpenAI) -> None:
    async with OpenAITTS("openai_tts", {"base_url": fake.url, "model": "tts-1"}) as tts:
        assert isinstance(tts, OpenAITTS)
        mapping = tts.map_controls(controls(label=EmotionLabel.HAPPY))
        chunks = [c async for c in tts.synthesize("Hi!", mapping)]
    assert chunks and "instructions" not in fake.speech_bodies[-1]


@pytest.mark.parametrize(
    ("faults", "category"),
    [
        (Faults(status=401), ErrorCategory.AUTH),
        (Faults(status=429, retry_after="2"), ErrorCategory.RATE_LIMIT),
        (Faults(status=500), ErrorCategory.SERVER),
    ],
)
async def test_error_statuses_before_any_audio(fake: FakeOpenAI, faults: Faults, category: ErrorCategory) -> None:
    fake.speech_faults = faults
    async with OpenAITTS("openai_tts", {"base_url": fake.url}) as tts:
        assert isinstance(tts, OpenAITTS)
        with pytest.raises(ProviderError) as err:
            _ = [c async for c in tts.synthesize(TEXT, tts.map_controls(controls()))]
    assert err.value.category is category
    assert KEY not in str(err.value)


async def test_a_connection_dropped_mid_audio_fails_after_the_audio_already_given(fake: FakeOpenAI) -> None:
    fake.speech_faults = Faults(drop_after=1)
    got = []
    async with OpenAITTS("openai_tts", {"base_url": fake.url, "chunk_ms": 20}) as tts:
        assert isinstance(tts, OpenAITTS)
        with pytest.raises(ProviderError) as err:
            async for chunk in tts.synthesize(TEXT, tts.map_controls(controls())):
                got.append(chunk)
    assert err.value.category is ErrorCategory.CONNECTIVITY
    assert b"".join(c.pcm for c in got) == pcm_for(TEXT)[: len(b"".join(c.pcm for c in got))]


def test_a_fixed_voice_and_voice_overrides() -> None:
    assert OpenAITTS("t", {"voice": "sage"}).map_controls(controls(label=EmotionLabel.SAD)).params["voice"] == "sage"
    tts = OpenAITTS("t", {"voices": {"sad": "ash"}})
    assert tts.map_controls(controls(label=EmotionLabel.SAD)).params["voice"] == "ash"
    assert tts.map_controls(replace(controls(), label=EmotionLabel.HAPPY)).params["voice"] == "shimmer"
