"""Configuration errors name the key and the allowed values; switching adapters is config only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tth_server import registry
from tth_server.config import DEFAULT_CONFIG_DIR, ConfigError, load_config
from tth_server.runtime import Runtime


def test_every_profile_loads_into_a_runtime_when_its_keys_are_set() -> None:
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "ELEVENLABS_API_KEY": "k"}
    for profile in sorted(p.stem for p in (DEFAULT_CONFIG_DIR / "profiles").glob("*.yaml")):
        config = load_config(profile, env=env)
        assert config.profile == profile and config.components


def test_unknown_profile_lists_the_profiles() -> None:
    with pytest.raises(ConfigError, match=r"profile 'nope' does not exist; allowed: \[.*'mock'"):
        load_config("nope", env={})


def test_unknown_adapter_fails_at_start_with_the_known_names() -> None:
    config = load_config("mock", env={}, overrides={"components": {"tts": {"adapter": "nope"}}})
    with pytest.raises(ConfigError, match=r"components.tts.adapter: unknown adapter 'nope'; known: \[.*'tone_tts'"):
        Runtime(config)


def test_an_adapter_of_the_wrong_stage_is_refused() -> None:
    config = load_config("mock", env={}, overrides={"components": {"tts": {"adapter": "scripted"}}})
    with pytest.raises(ConfigError, match="'scripted' is a llm adapter, not tts"):
        Runtime(config)


def test_unknown_settings_and_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"session.max_lead is not a setting; allowed: \["):
        load_config("mock", env={}, overrides={"session": {"max_lead": 3}})
    with pytest.raises(ConfigError, match=r"render\.latency_mode must be one of"):
        load_config("mock", env={}, overrides={"render": {"latency_mode": "fast"}})
    with pytest.raises(ConfigError, match=r"session\.max_text_chars must be a int"):
        load_config("mock", env={}, overrides={"session": {"max_text_chars": "many"}})


def test_api_keys_in_yaml_are_refused(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "base.yaml").write_text((DEFAULT_CONFIG_DIR / "base.yaml").read_text())
    (tmp_path / "profiles" / "leaky.yaml").write_text(
        "components:\n  llm: {adapter: scripted, options: {api_key: sk-123}}\n"
        "  tts: {adapter: tone_tts}\n  avatar: {adapter: stub_avatar}\n"
    )
    with pytest.raises(ConfigError, match="api_key: API keys and secrets come from the environment only"):
        load_config("leaky", config_dir=tmp_path, env={})


def test_environment_overrides_any_key_by_path() -> None:
    env = {"TTH_SESSION__MAX_LEAD_MS": "250", "TTH_COMPONENTS__TTS__OPTIONS__SAMPLE_RATE_HZ": "16000"}
    config = load_config("mock", env=env)
    assert config.session.max_lead_ms == 250.0
    assert config.components["tts"].options["sample_rate_hz"] == 16000


def test_switching_an_adapter_is_a_config_change_only() -> None:
    one = Runtime(load_config("mock", env={}))
    two = Runtime(load_config("mock", env={"TTH_COMPONENTS__LLM__ADAPTER": "recording_llm"}))
    assert type(one.pipeline.stages.llm).__name__ == "ScriptedResponder"
    assert type(two.pipeline.stages.llm).__name__ == "RecordingLLM"
    assert "recording_llm" in registry.known()


@pytest.fixture(autouse=True)
def _recording_registered() -> None:
    import tests.recording  # noqa: F401  (registers recording_llm)
