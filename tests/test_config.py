"""Configuration errors name the key and the allowed values; switching adapters is config only."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import registry
from adapters.errors import ConfigError
from tth_server.config import DEFAULT_CONFIG_DIR, load_config
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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"session": {"max_lead": 3}}, "session.max_lead is not a setting; allowed: ['attach_timeout_s', "),
        ({"nonsense": 1}, "nonsense is not a setting; allowed: ['auth', 'components', "),
        (
            {"render": {"latency_mode": "fast"}},
            "render.latency_mode must be one of 'low', 'balanced' or 'quality', got 'fast'",
        ),
        ({"session": {"max_text_chars": "many"}}, "session.max_text_chars must be an integer, got 'many'"),
        ({"session": {"max_text_chars": 2.5}}, "session.max_text_chars must be an integer, got 2.5"),
        ({"auth": {"open_health": "maybe"}}, "auth.open_health must be true or false, got 'maybe'"),
        ({"limits": {"max_sessions": -1}}, "limits.max_sessions must be >= 0 (0 means unlimited), got -1"),
        ({"server": {"workers": 0}}, "server.workers must be >= 1 (1: serve in this process), got 0"),
        ({"metrics": {"port": 70000}}, "metrics.port must be <= 65535, got 70000"),
        ({"store": {"kind": "etcd"}}, "store.kind must be one of 'memory' or 'redis', got 'etcd'"),
        ({"store": {"kind": "redis", "url": "http://x"}}, "store.url must be a redis://, rediss:// or unix:// URL"),
        ({"tls": {"cert_file": "c.pem"}}, "tls.cert_file and tls.key_file must be set together"),
        ({"router": {"budgets": {"nope": {}}}}, "router.budgets.nope is not a stage; allowed: ['llm', 'tts', "),
        ({"router": {"budgets": {"tts": {"total_ms": -5}}}}, "router.budgets.tts.total_ms must be >= 0 (0 means no"),
        ({"router": {"breaker": {"failure_threshold": 0}}}, "router.breaker.failure_threshold must be >= 1, got 0"),
        ({"components": {"bogus": {"adapter": "x"}}}, "components.bogus is not a stage; allowed: ['llm', 'tts', "),
        ({"components": {"avatar": None}}, "components must name llm and tts (or realtime), and avatar"),
        ({"components": {"tts": {"adapter": ""}}}, "components.tts.adapter must not be empty"),
        ({"components": {"tts": {"voice": "x"}}}, "components.tts.voice is not a setting; allowed: ['adapter', "),
        (
            {"components": {"tts": {"fallback": [{"adapter": "espeak_tts", "voice": "x"}]}}},
            "components.tts.fallback[0].voice is not a setting; allowed: ['adapter', 'options']",
        ),
        ({"session": "hello"}, "session must be a mapping, got 'hello'"),
    ],
)
def test_every_bad_setting_names_its_key_and_what_is_allowed(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config("mock", env={}, overrides=overrides)
    assert str(refused.value).startswith(message)


def test_a_bad_environment_value_names_the_key_it_sets() -> None:
    with pytest.raises(ConfigError, match=r"^session\.max_lead_ms must be a number, got 'soon'$"):
        load_config("mock", env={"TTH_SESSION__MAX_LEAD_MS": "soon"})


def test_a_budget_given_in_part_keeps_the_rest_of_its_stages_defaults() -> None:
    config = load_config("mock", env={}, overrides={"router": {"budgets": {"tts": {"total_ms": 5}}}})
    assert (config.router.budgets["tts"].first_byte_ms, config.router.budgets["tts"].total_ms) == (10000.0, 5.0)
    assert config.router.budgets["llm"].total_ms == 120000.0


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
    switched = load_config("mock", env={"TTH_AUTH__OPEN_HEALTH": "false", "TTH_SESSION__DEFAULT_PERSONA": "42"})
    assert switched.auth.open_health is False and switched.session.default_persona == "42"


@pytest.mark.usefixtures("recording_llm")
def test_switching_an_adapter_is_a_config_change_only() -> None:
    one = Runtime(load_config("mock", env={}))
    two = Runtime(load_config("mock", env={"TTH_COMPONENTS__LLM__ADAPTER": "recording_llm"}))
    assert type(one.pipeline.stages.llm).__name__ == "ScriptedResponder"
    assert type(two.pipeline.stages.llm).__name__ == "RecordingLLM"
    assert "recording_llm" in registry.known()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TTH_COMPONENTS__TTS__OPTIONS__CHUNK_MSS": "40"},
            "components.tts.options.chunk_mss is not a setting; allowed: ['chunk_ms', 'fail_after', ",
        ),
        ({"TTH_COMPONENTS__TTS__OPTIONS__CHUNK_MS": "fast"}, "components.tts.options.chunk_ms must be a number, got"),
        (
            {"TTH_COMPONENTS__LLM__OPTIONS__FAIL_CATEGORY": "oops"},
            "components.llm.options.fail_category must be one of 'auth', ",
        ),
        (
            {"TTH_COMPONENTS__TTS__ADAPTER": "espeak_tts", "TTH_COMPONENTS__TTS__OPTIONS__WORKERS": "99"},
            "components.tts.options.workers must be <= 8, got 99",
        ),
    ],
)
def test_an_unknown_or_mistyped_adapter_option_fails_at_start_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Runtime(load_config("mock", env=env))
    assert str(err.value).startswith(message), str(err.value)
