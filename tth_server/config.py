"""Configuration: `config/base.yaml`, then `config/profiles/<profile>.yaml`, then `TTH_` environment.

Environment variables override any key by its path, with `__` between levels:
`TTH_SESSION__MAX_LEAD_MS=300`, `TTH_SERVER__LISTEN=0.0.0.0:50051`; a value is read
as YAML (`true`, `[a, b]`). `TTH_PROFILE` picks the profile and `TTH_CONFIG_DIR` the
config folder. Provider API keys come from the environment only (each adapter names
its variable); a key written into YAML is refused at start.

The settings are pydantic dataclasses: types, ranges and choices are declared on the
fields, read from pydantic-settings sources (the two YAML files and the environment,
later ones over earlier ones), and every error names the key and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, YamlConfigSettingsSource

from adapters.errors import ConfigError
from adapters.options import describe_error

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
STAGES = ("llm", "tts", "avatar", "realtime")
_SECRET_HINTS = ("api_key", "apikey", "secret", "password", "token")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # an environment variable's name, as the *_env options hold

# Every section refuses keys it does not know; numbers given where text is expected are taken as text.
_STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

Unlimited = Annotated[int, Field(ge=0, description="0 means unlimited")]
UnlimitedSeconds = Annotated[float, Field(ge=0, description="0 means unlimited")]


def _only_stages(mapping: Mapping[str, Any], where: str) -> None:
    """ValueError naming the first key of `mapping` that is not a stage."""
    for stage in mapping:
        if stage not in STAGES:
            raise ValueError(f"{where}.{stage} is not a stage; allowed: {list(STAGES)}")


@dataclass(frozen=True, config=_STRICT)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    grace_period_s: Annotated[float, Field(ge=0)] = 10.0
    max_message_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    # server processes on `listen` (SO_REUSEPORT); 1 serves in the tth-server process itself
    workers: Annotated[int, Field(ge=1, description="1: serve in this process")] = 1


@dataclass(frozen=True, config=_STRICT)
class SessionSettings:
    default_persona: str = "neutral"
    max_text_chars: Annotated[int, Field(ge=1)] = 4000
    history_turns: Annotated[int, Field(ge=0)] = 20
    attach_timeout_s: Annotated[int, Field(ge=1)] = 600
    outbox_capacity: Annotated[int, Field(ge=1)] = 256
    # errors, notices and turn ends queued unread before the call ends
    max_unread_events: Annotated[int, Field(ge=1)] = 256
    config_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_lead_ms: Annotated[float, Field(gt=0)] = 500.0
    # how long a session whose stream dropped waits for a resume
    resume_window_s: Annotated[float, Field(ge=0, description="0: a dropped stream ends its session")] = 30.0
    replay_events: Annotated[int, Field(ge=1)] = 2048  # sent events kept per session for a resume to replay
    replay_bytes: Annotated[int, Field(ge=1)] = 4 * 1024 * 1024  # ... and at most this many bytes of them
    # SessionConfig.portrait / GenerateRequest.portrait
    max_portrait_bytes: Annotated[int, Field(ge=1)] = 4 * 1024 * 1024


@dataclass(frozen=True, config=_STRICT)
class RenderDefaults:
    fps: Annotated[int, Field(ge=1, le=60)] = 25
    width: Annotated[int, Field(ge=64, le=1024)] = 256
    height: Annotated[int, Field(ge=64, le=1024)] = 256
    latency_mode: Literal["low", "balanced", "quality"] = "balanced"


@dataclass(frozen=True, config=_STRICT)
class SegmenterSettings:
    """How the LLM's text is cut for the TTS (`tth_server.pipeline.SegmentPolicy` takes its defaults from here)."""

    first_clause_min_chars: Annotated[int, Field(ge=1)] = 12
    max_chars: Annotated[int, Field(ge=16)] = 240


@dataclass(frozen=True, config=_STRICT)
class LogSettings:
    level: str = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: JSON when stderr is not a terminal


@dataclass(frozen=True, config=_STRICT)
class StageBudget:
    """A stage's time budget for one provider call; 0 means no limit."""

    # from the call (for the avatar: from its first audio) to the first output
    first_byte_ms: Annotated[float, Field(ge=0, description="0 means no limit")] = 10000.0
    total_ms: Annotated[float, Field(ge=0, description="0 means no limit")] = 0.0  # time spent waiting on the provider


_BUDGETS = {
    "llm": StageBudget(10000.0, 120000.0),
    "tts": StageBudget(10000.0, 60000.0),
    "avatar": StageBudget(10000.0, 0.0),
    "realtime": StageBudget(10000.0, 120000.0),
}


@dataclass(frozen=True, config=_STRICT)
class BreakerSettings:
    failure_threshold: Annotated[int, Field(ge=1)] = 3  # consecutive failures that open a provider's circuit
    cooldown_s: Annotated[float, Field(gt=0)] = 30.0  # how long it stays open before one trial call (half-open)


@dataclass(frozen=True, config=_STRICT)
class RouterSettings:
    """Budgets, retries and circuit breakers around every stage (see tth_server.router)."""

    retries: Annotated[int, Field(ge=0)] = 1  # extra tries on the same provider, only before it produced any output
    retry_backoff_ms: Annotated[float, Field(ge=0)] = 200.0  # wait before a retry, doubled each time
    # a longer Retry-After skips to the next provider instead
    max_retry_after_ms: Annotated[float, Field(ge=0)] = 2000.0
    route_local: bool = False  # also route in-process adapters that have no fallback
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    budgets: dict[str, StageBudget] = field(default_factory=lambda: dict(_BUDGETS))

    @field_validator("budgets", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        """A stage's budget given in part keeps that stage's defaults for the rest."""
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = dict(_BUDGETS)
        _only_stages(value, "router.budgets")
        for stage, spec in value.items():
            base = _BUDGETS.get(stage)
            if base is not None and isinstance(spec, Mapping):
                spec = {"first_byte_ms": base.first_byte_ms, "total_ms": base.total_ms, **spec}
            out[stage] = base if spec is None else spec
        return out


@dataclass(frozen=True, config=_STRICT)
class AuthSettings:
    """API keys come from TTH_API_KEYS (comma-separated) and `keys_file` (one per line); none means open."""

    keys_file: str = ""
    open_health: bool = True  # health checks need no key (load balancers, probes)
    open_reflection: bool = True  # reflection needs no key (grpcurl, buf curl)


@dataclass(frozen=True, config=_STRICT)
class TLSSettings:
    """TLS from certificate paths; `client_ca_file` turns on mutual TLS (clients must present a cert)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> TLSSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("tls.client_ca_file (mutual TLS) needs tls.cert_file and tls.key_file")
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"tls.{name}: {path} is not a readable file")
        return self


@dataclass(frozen=True, config=_STRICT)
class LimitSettings:
    """Per-server and per-key limits; 0 means unlimited."""

    max_sessions: Unlimited = 1000
    max_sessions_per_key: Unlimited = 100
    turns_per_minute_per_key: Unlimited = 120
    session_idle_s: UnlimitedSeconds = 300.0  # a session with no request for this long ends
    session_max_s: UnlimitedSeconds = 3600.0  # a session ends after this long, whatever it does
    end_notice_s: UnlimitedSeconds = 60.0  # how long before either end a notice is sent


@dataclass(frozen=True, config=_STRICT)
class MetricsSettings:
    """Prometheus metrics over HTTP at `/metrics` (see tth_server.metrics); port 0 serves none."""

    # 9464 is the usual choice; with several workers, worker i uses port + i
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    host: str = "127.0.0.1"  # 0.0.0.0 to let a scraper on another host in


@dataclass(frozen=True, config=_STRICT)
class StoreSettings:
    """Where session state lives between streams: this process (memory) or Redis, shared by replicas."""

    kind: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"  # a URL with a password belongs in TTH_STORE__URL, not YAML
    # a stored session nobody saves for this long is dropped (its replica died)
    ttl_s: Annotated[float, Field(gt=0)] = 900.0
    timeout_s: Annotated[float, Field(gt=0)] = 2.0  # longest wait for one store operation
    key_prefix: str = "tth:session:"

    @model_validator(mode="after")
    def _redis_url(self) -> StoreSettings:
        if self.kind == "redis" and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"store.url must be a redis://, rediss:// or unix:// URL, got {self.url!r}")
        return self


@dataclass(frozen=True, config=_STRICT)
class FallbackConfig:
    """An adapter the router turns to when the one before it fails (`components.<stage>.fallback`)."""

    adapter: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, config=_STRICT)
class ComponentConfig:
    """One stage: its adapter by entry-point name, the adapter's options, and its fallbacks in order."""

    adapter: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = field(default_factory=dict)
    fallback: tuple[FallbackConfig, ...] = ()

    @field_validator("options", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("fallback", mode="before")
    @classmethod
    def _names_are_adapters(cls, value: Any) -> Any:
        """`fallback: [espeak_tts]` is short for `fallback: [{adapter: espeak_tts}]`."""
        if value is None:
            return ()
        if isinstance(value, list | tuple):
            return tuple({"adapter": v} if isinstance(v, str) else v for v in value)
        return value


@dataclass(frozen=True, config=_STRICT)
class Config:
    profile: str
    config_dir: Path
    personas_file: Path
    components: dict[str, ComponentConfig]
    server: ServerSettings = field(default_factory=ServerSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    render: RenderDefaults = field(default_factory=RenderDefaults)
    segmenter: SegmenterSettings = field(default_factory=SegmenterSettings)
    log: LogSettings = field(default_factory=LogSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    api_keys: tuple[str, ...] = ()  # from TTH_API_KEYS only, never from YAML

    @field_validator("components", mode="before")
    @classmethod
    def _stages_left_out(cls, value: Any) -> Any:
        """A profile removes a stage of base.yaml by setting it to null."""
        if not isinstance(value, Mapping):
            return value
        _only_stages(value, "components")
        return {k: v for k, v in value.items() if v is not None}

    @model_validator(mode="after")
    def _a_whole_pipeline(self) -> Config:
        cascade = {"llm", "tts"} <= set(self.components) or "realtime" in self.components
        if not cascade or "avatar" not in self.components:
            raise ValueError("components must name llm and tts (or realtime), and avatar")
        return self


_VALIDATE = TypeAdapter(Config)


# ---- sources ------------------------------------------------------------------------------------------------------


class _Files(BaseSettings):
    """The settings class the pydantic-settings sources read for: any key, checked by `Config` afterwards."""

    model_config = {"extra": "allow"}


class _YamlFile(YamlConfigSettingsSource):
    """A YAML file of the configuration; a secret written in it is refused."""

    def __init__(self, path: Path, label: str) -> None:
        try:
            super().__init__(_Files, yaml_file=path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(self.yaml_data, dict):
            raise ConfigError(f"{path}: must hold a mapping")
        _refuse_secrets(self.yaml_data, label)


class _Environment(PydanticBaseSettingsSource):
    """`TTH_A__B=value` as `{a: {b: value}}`, the value read as YAML."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(_Files)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # the whole tree comes from __call__

    def __call__(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for name, raw in self._env.items():
            if not name.startswith("TTH_") or "__" not in name:
                continue
            path = [p.lower() for p in name[4:].split("__")]
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            try:
                node[path[-1]] = yaml.safe_load(raw) if raw else raw
            except yaml.YAMLError:
                node[path[-1]] = raw
        return tree


def _looks_secret(key: str) -> bool:
    """api_key, apikey, client_secret, password, auth_token ... but not max_tokens."""
    lowered = key.lower()
    words = re.split(r"[_\-.]", lowered)
    return any(h in lowered for h in _SECRET_HINTS if h != "token") or "token" in words


def _names_a_variable(key: str, value: Any) -> bool:
    """`api_key_env: OPENAI_API_KEY` names where a key lives; `api_key_required: false` is a switch."""
    if isinstance(value, bool):
        return True
    return key.endswith("_env") and isinstance(value, str) and _ENV_NAME.fullmatch(value) is not None


def _refuse_secrets(data: Any, where: str) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            if _looks_secret(str(key)) and value and not _names_a_variable(str(key), value):
                raise ConfigError(
                    f"{where}.{key}: API keys and secrets come from the environment only, never from YAML"
                )
            _refuse_secrets(value, f"{where}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _refuse_secrets(value, f"{where}[{i}]")


# ---- errors -------------------------------------------------------------------------------------------------------

_NOT_READ = ("config_dir", "api_keys")  # Config's fields that come from where it is read, not from a file


def _config_error(exc: ValidationError) -> ConfigError:
    return ConfigError(describe_error(exc.errors(include_url=False)[0], Config, hidden=_NOT_READ))


# ---- loading ------------------------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


def _forget_replaced_adapters(data: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without the options and fallbacks of each stage whose adapter `over` replaces.

    Options belong to their adapter: a profile (or variable) that names another adapter for
    a stage starts from that adapter's defaults, not from options the one before it took.
    """
    given, known = over.get("components"), data.get("components")
    if not isinstance(given, Mapping) or not isinstance(known, dict):
        return data
    components = dict(known)
    for stage, component in given.items():
        before = components.get(stage)
        if isinstance(component, Mapping) and isinstance(before, dict) and "adapter" in component:
            if component["adapter"] != before.get("adapter"):
                components[stage] = {"adapter": before.get("adapter")}
    return {**data, "components": components}


def list_profiles(config_dir: Path = DEFAULT_CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (config_dir / "profiles").glob("*.yaml"))


def load_config(
    profile: str | None = None,
    *,
    config_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load and validate the configuration for `profile` (default: TTH_PROFILE or base.yaml's)."""
    env = os.environ if env is None else env
    config_dir = Path(config_dir or env.get("TTH_CONFIG_DIR") or DEFAULT_CONFIG_DIR)
    base = _YamlFile(config_dir / "base.yaml", "base.yaml")()
    profile = profile or env.get("TTH_PROFILE") or str(base.get("profile", "local"))
    profile_path = config_dir / "profiles" / f"{profile}.yaml"
    if not profile_path.exists():
        raise ConfigError(f"profile {profile!r} does not exist; allowed: {list_profiles(config_dir)}")
    sources = [base, _YamlFile(profile_path, f"profiles/{profile}.yaml")(), _Environment(env)(), dict(overrides or {})]
    data: dict[str, Any] = {}
    for source in sources:
        data = _merge(_forget_replaced_adapters(data, source), source)
    data.pop("profile", None)
    for fixed in _NOT_READ:
        if fixed in data:
            raise ConfigError(f"{fixed} is not a setting; it comes from where the configuration is read")
    data["profile"] = profile
    data["config_dir"] = config_dir
    data["personas_file"] = config_dir / str(data.get("personas_file", "personas.yaml"))
    data["api_keys"] = tuple(k.strip() for k in env.get("TTH_API_KEYS", "").split(",") if k.strip())
    try:
        return _VALIDATE.validate_python(data)
    except ValidationError as exc:
        raise _config_error(exc) from None
