"""`elevenlabs` against a fake streaming text-to-speech endpoint with PCM output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.controls import ControlPatch, Controls, EmotionLabel, resolve
from adapters.elevenlabs.tts import ElevenLabsTTS, voice_settings
from adapters.errors import ErrorCategory, ProviderError
from tests.fakes.elevenlabs import KEY, FakeElevenLabs
from tests.fakes.http import Faults


@pytest.fixture
async def fake() -> AsyncIterator[FakeElevenLabs]:
    server = await FakeElevenLabs(split=11).start()
    yield server
    await server.aclose()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", KEY)


def controls(**fields: Any) -> Controls:
    return resolve([("turn", ControlPatch(**fields))])


async def test_pcm_streams_at_the_requested_rate_with_voice_settings(fake: FakeElevenLabs) -> None:
    async with ElevenLabsTTS("elevenlabs", {"base_url": fake.url, "sample_rate_hz": 22050}) as tts:
        assert isinstance(tts, ElevenLabsTTS)
        mapping = tts.map_controls(controls(label=EmotionLabel.HAPPY, intensity=0.8))
        chunks = [c async for c in tts.synthesize("Hello world!", mapping)]
    assert all(c.sample_rate_hz == 22050 and len(c.pcm) % 2 == 0 for c in chunks)
    assert sum(c.samples for c in chunks) == int(22050 * len("Hello world!") * 0.02)
    assert fake.queries[-1] == {"output_format": "pcm_22050"}
    assert fake.paths[-1] == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream"
    body = fake.bodies[-1]
    assert body["model_id"] == "eleven_flash_v2_5" and body["text"] == "Hello world!"
    assert set(body["voice_settings"]) == {"stability", "similarity_boost", "style", "use_speaker_boost", "speed"}


def test_emotion_makes_the_voice_less_stable_and_more_stylised() -> None:
    calm, _ = voice_settings(controls(label=EmotionLabel.NEUTRAL, expressivity=0.3))
    moved, _ = voice_settings(controls(label=EmotionLabel.ANGRY, intensity=1.0, expressivity=1.0))
    assert moved["stability"] < calm["stability"] and moved["style"] > calm["style"]
    for settings in (calm, moved):
        assert (
            0 <= settings["stability"] <= 1 and 0 <= settings["style"] <= 1 and 0 <= settings["similarity_boost"] <= 1
        )


def test_speed_is_clamped_to_the_documented_range_and_reported() -> None:
    tts = ElevenLabsTTS("elevenlabs", {})
    fast = tts.map_controls(controls(speech_rate=2.0))
    assert fast.params["voice_settings"]["speed"] == 1.2
    assert any(d.field == "character.speech_rate" and "[0.7, 1.2]" in d.reason for d in fast.downgraded)
    normal = tts.map_controls(controls(speech_rate=1.1))
    assert normal.params["voice_settings"]["speed"] == 1.1
    assert not any(d.field == "character.speech_rate" for d in normal.downgraded)


def test_labels_without_a_voice_are_downgraded_and_with_one_applied() -> None:
    plain = ElevenLabsTTS("elevenlabs", {}).map_controls(controls(label=EmotionLabel.SAD, pitch_shift=0.4))
    fields = {d.field for d in plain.downgraded}
    assert {"emotion.label", "character.pitch_shift"} <= fields
    voiced = ElevenLabsTTS("elevenlabs", {"emotion_voices": {"sad": "v-sad"}}).map_controls(
        controls(label=EmotionLabel.SAD)
    )
    assert voiced.params["voice_id"] == "v-sad"
    assert any(a.field == "emotion.label" and a.detail == "voice v-sad" for a in voiced.applied)


async def test_every_mapping_the_adapter_makes_is_accepted_by_the_server(fake: FakeElevenLabs) -> None:
    async with ElevenLabsTTS("elevenlabs", {"base_url": fake.url}) as tts:
        assert isinstance(tts, ElevenLabsTTS)
        for label in EmotionLabel:
            for rate in (0.25, 1.0, 4.0):
                mapping = tts.map_controls(
                    controls(label=label, intensity=1.0, speech_rate=rate, arousal=1.0, expressivity=1.0)
                )
                assert [c async for c in tts.synthesize("ok", mapping)]


@pytest.mark.parametrize(
    ("faults", "category", "retryable"),
    [
        (Faults(status=401), ErrorCategory.AUTH, False),
        (Faults(status=429, retry_after="1"), ErrorCategory.RATE_LIMIT, True),
        (Faults(status=500), ErrorCategory.SERVER, True),
    ],
)
async def test_error_statuses(fake: FakeElevenLabs, faults: Faults, category: ErrorCategory, retryable: bool) -> None:
    fake.faults = faults
    async with ElevenLabsTTS("elevenlabs", {"base_url": fake.url}) as tts:
        assert isinstance(tts, ElevenLabsTTS)
        with pytest.raises(ProviderError) as err:
            _ = [c async for c in tts.synthesize("Hello", tts.map_controls(controls()))]
    assert (err.value.category, err.value.retryable) == (category, retryable)


async def test_a_wrong_key_is_auth_and_not_echoed(fake: FakeElevenLabs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_wrong_wrong")
    async with ElevenLabsTTS("elevenlabs", {"base_url": fake.url}) as tts:
        assert isinstance(tts, ElevenLabsTTS)
        with pytest.raises(ProviderError) as err:
            _ = [c async for c in tts.synthesize("Hello", tts.map_controls(controls()))]
    assert err.value.category is ErrorCategory.AUTH and "invalid_api_key" in str(err.value)
    assert "sk_wrong_wrong" not in str(err.value)


async def test_a_dropped_stream_is_connectivity(fake: FakeElevenLabs) -> None:
    fake.faults = Faults(drop_after=2)
    async with ElevenLabsTTS("elevenlabs", {"base_url": fake.url}) as tts:
        assert isinstance(tts, ElevenLabsTTS)
        with pytest.raises(ProviderError) as err:
            _ = [c async for c in tts.synthesize("Hello there, a longer sentence.", tts.map_controls(controls()))]
    assert err.value.category is ErrorCategory.CONNECTIVITY
