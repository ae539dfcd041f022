"""Configuration: `config/base.yaml`, then `config/profiles/<profile>.yaml`, then `TTH_` environment.

Environment variables override any key by its path, with `__` between levels:
`TTH_SESSION__MAX_LEAD_MS=300`, `TTH_SERVER__LISTEN=0.0.0.0:50051`. `TTH_PROFILE`
picks the profile and `TTH_CONFIG_DIR` the config folder. Provider API keys come
from the environment only (each adapter names its variable); a key written into
YAML is refused at start. Every error names the key and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
STAGES = ("llm", "tts", "avatar", "realtime")
LATENCY_MODES = ("low", "balanced", "quality")
_SECRET_HINTS = ("api_key", "apikey", "secret", "password", "token")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # an environment variable's name, as the *_env options hold


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the allowed values."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    grace_period_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    workers: int = 1  # server processes on `listen` (SO_REUSEPORT); 1 serves in the tth-server process itself


@dataclass(frozen=True, slots=True)
class SessionSettings:
    default_persona: str = "neutral"
    max_text_chars: int = 4000
    history_turns: int = 20
    attach_timeout_s: int = 600
    outbox_capacity: int = 256
    max_unread_events: int = 256  # errors, notices and turn ends queued unread before the call ends
    config_timeout_s: float = 30.0
    max_lead_ms: float = 500.0
    resume_window_s: float = 30.0  # how long a session whose stream dropped waits for a resume
    replay_events: int = 2048  # sent events kept per session for a resume to replay
    replay_bytes: int = 4 * 1024 * 1024  # ... and at most this many bytes of them
    max_portrait_bytes: int = 4 * 1024 * 1024  # SessionConfig.portrait / GenerateRequest.portrait


@dataclass(frozen=True, slots=True)
class RenderDefaults:
    fps: int = 25
    width: int = 256
    height: int = 256
    latency_mode: str = "balanced"


@dataclass(frozen=True, slots=True)
class SegmenterSettings:
    first_clause_min_chars: int = 12
    max_chars: int = 240


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"  # auto: JSON when stderr is not a terminal


@dataclass(frozen=True, slots=True)
class StageBudget:
    """A stage's time budget for one provider call; 0 means no limit."""

    first_byte_ms: float = 10000.0  # from the call (for the avatar: from its first audio) to the first output
    total_ms: float = 0.0  # time spent waiting on the provider over the whole call


_BUDGETS = {
    "llm": StageBudget(10000.0, 120000.0),
    "tts": StageBudget(10000.0, 60000.0),
    "avatar": StageBudget(10000.0, 0.0),
    "realtime": StageBudget(10000.0, 120000.0),
}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 3  # consecutive failures that open a provider's circuit
    cooldown_s: float = 30.0  # how long it stays open before one trial call (half-open)


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """Budgets, retries and circuit breakers around every stage (see tth_server.router)."""

    retries: int = 1  # extra tries on the same provider, only before it produced any output
    retry_backoff_ms: float = 200.0  # wait before a retry, doubled each time
    max_retry_after_ms: float = 2000.0  # a longer Retry-After skips to the next provider instead
    route_local: bool = False  # also route in-process adapters that have no fallback
    breaker: BreakerSettings = BreakerSettings()
    budgets: Mapping[str, StageBudget] = field(default_factory=lambda: dict(_BUDGETS))


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """API keys come from TTH_API_KEYS (comma-separated) and `keys_file` (one per line); none means open."""

    keys_file: str = ""
    open_health: bool = True  # health checks need no key (load balancers, probes)
    open_reflection: bool = True  # reflection needs no key (grpcurl, buf curl)


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """TLS from certificate paths; `client_ca_file` turns on mutual TLS (clients must present a cert)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Per-server and per-key limits; 0 means unlimited."""

    max_sessions: int = 1000
    max_sessions_per_key: int = 100
    turns_per_minute_per_key: int = 120
    session_idle_s: float = 300.0  # a session with no request for this long ends
    session_max_s: float = 3600.0  # a session ends after this long, whatever it does
    end_notice_s: float = 60.0  # how long before either end a notice is sent


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus metrics over HTTP at `/metrics` (see tth_server.metrics); port 0 serves none."""

    port: int = 0  # 9464 is the usual choice; with several workers, worker i uses port + i
    host: str = "127.0.0.1"  # 0.0.0.0 to let a scraper on another host in


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where session state lives between streams: this process (memory) or Redis, shared by replicas."""

    kind: str = "memory"  # memory | redis
    url: str = "redis://127.0.0.1:6379/0"  # a URL with a password belongs in TTH_STORE__URL, not YAML
    ttl_s: float = 900.0  # a stored session nobody saves for this long is dropped (its replica died)
    timeout_s: float = 2.0  # longest wait for one store operation
    key_prefix: str = "tth:session:"


STORE_KINDS = ("memory", "redis")


@dataclass(frozen=True, slots=True)
class ComponentConfig:
    adapter: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    profile: str
    config_dir: Path
    server: ServerSettings
    session: SessionSettings
    render: RenderDefaults
    segmenter: SegmenterSettings
    log: LogSettings
    components: Mapping[str, ComponentConfig]
    personas_file: Path
    router: RouterSettings = RouterSettings()
    auth: AuthSettings = AuthSettings()
    tls: TLSSettings = TLSSettings()
    limits: LimitSettings = LimitSettings()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()
    api_keys: tuple[str, ...] = ()  # from TTH_API_KEYS only, never from YAML


T = TypeVar("T")


def _section(cls: type[T], data: Any, where: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]} is not a setting; allowed: {sorted(known)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name != "adapter" else ""
        kind = type(default)
        try:
            values[name] = kind(value) if kind in (int, float, str) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{name} must be a {kind.__name__}, got {value!r}") from None
    return cls(**values)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith("TTH_") or "__" not in name:
            continue
        path = [p.lower() for p in name[4:].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw else raw
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


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping")
    return data


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
    data = _read_yaml(config_dir / "base.yaml")
    _refuse_secrets(data, "base.yaml")
    profile = profile or env.get("TTH_PROFILE") or str(data.pop("profile", "local"))
    data.pop("profile", None)
    profile_path = config_dir / "profiles" / f"{profile}.yaml"
    if not profile_path.exists():
        raise ConfigError(f"profile {profile!r} does not exist; allowed: {list_profiles(config_dir)}")
    profile_data = _read_yaml(profile_path)
    _refuse_secrets(profile_data, f"profiles/{profile}.yaml")
    data = _merge(data, profile_data)
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    config = _build(profile, config_dir, data)
    keys = tuple(k.strip() for k in env.get("TTH_API_KEYS", "").split(",") if k.strip())
    return replace(config, api_keys=keys)


def _build(profile: str, config_dir: Path, data: dict[str, Any]) -> Config:
    allowed = {"server", "session", "render", "segmenter", "log", "components", "personas_file", "router"}
    allowed |= {"auth", "tls", "limits", "store"}
    allowed |= {"metrics"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]} is not a setting; allowed: {sorted(allowed)}")
    render = _section(RenderDefaults, data.get("render"), "render")
    if render.latency_mode not in LATENCY_MODES:
        raise ConfigError(f"render.latency_mode must be one of {list(LATENCY_MODES)}, got {render.latency_mode!r}")
    log = _section(LogSettings, data.get("log"), "log")
    if log.format not in ("auto", "json", "console"):
        raise ConfigError(f"log.format must be one of ['auto', 'console', 'json'], got {log.format!r}")
    components = {}
    for stage, spec in (data.get("components") or {}).items():
        if stage not in STAGES:
            raise ConfigError(f"components.{stage} is not a stage; allowed: {list(STAGES)}")
        if spec is None:
            continue
        if not isinstance(spec, Mapping) or not spec.get("adapter"):
            raise ConfigError(f"components.{stage}.adapter is required (an adapter name)")
        extra = set(spec) - {"adapter", "options", "fallback"}
        if extra:
            raise ConfigError(
                f"components.{stage}.{sorted(extra)[0]} is not a setting; allowed: adapter, options, fallback"
            )
        fallback = tuple(f if isinstance(f, Mapping) else {"adapter": f} for f in spec.get("fallback") or ())
        components[stage] = ComponentConfig(str(spec["adapter"]), dict(spec.get("options") or {}), fallback)
    cascade = {"llm", "tts"} <= set(components) or "realtime" in components
    if not cascade or "avatar" not in components:
        raise ConfigError("components must name llm and tts (or realtime), and avatar")
    return Config(
        profile=profile,
        config_dir=config_dir,
        server=_server(_section(ServerSettings, data.get("server"), "server")),
        render=render,
        segmenter=_section(SegmenterSettings, data.get("segmenter"), "segmenter"),
        log=log,
        components=components,
        personas_file=config_dir / str(data.get("personas_file", "personas.yaml")),
        router=_router(data.get("router")),
        auth=_section(AuthSettings, data.get("auth"), "auth"),
        tls=_tls(_section(TLSSettings, data.get("tls"), "tls")),
        limits=_limits(_section(LimitSettings, data.get("limits"), "limits")),
        session=_session(_section(SessionSettings, data.get("session"), "session")),
        store=_store(_section(StoreSettings, data.get("store"), "store")),
        metrics=_section(MetricsSettings, data.get("metrics"), "metrics"),
    )


def _router(data: Any) -> RouterSettings:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("router must be a mapping")
    flat = {k: v for k, v in data.items() if k not in ("breaker", "budgets")}
    settings = _section(RouterSettings, flat, "router")
    breaker = _section(BreakerSettings, data.get("breaker"), "router.breaker")
    budgets = dict(_BUDGETS)
    raw = data.get("budgets") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("router.budgets must be a mapping of stage to {first_byte_ms, total_ms}")
    for stage, spec in raw.items():
        if stage not in STAGES:
            raise ConfigError(f"router.budgets.{stage} is not a stage; allowed: {list(STAGES)}")
        if not isinstance(spec, Mapping | None):
            raise ConfigError(f"router.budgets.{stage} must be a mapping with first_byte_ms and total_ms")
        budgets[stage] = _section(StageBudget, {**asdict(budgets[stage]), **(spec or {})}, f"router.budgets.{stage}")
        if budgets[stage].first_byte_ms < 0 or budgets[stage].total_ms < 0:
            raise ConfigError(f"router.budgets.{stage}: budgets must be >= 0 ms (0 means no limit)")
    if settings.retries < 0 or settings.retry_backoff_ms < 0 or settings.max_retry_after_ms < 0:
        raise ConfigError("router.retries, router.retry_backoff_ms and router.max_retry_after_ms must be >= 0")
    if breaker.failure_threshold < 1 or breaker.cooldown_s <= 0:
        raise ConfigError("router.breaker.failure_threshold must be >= 1 and router.breaker.cooldown_s > 0")
    return replace(settings, breaker=breaker, budgets=budgets)


def _tls(tls: TLSSettings) -> TLSSettings:
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("tls.cert_file and tls.key_file must be set together")
    if tls.client_ca_file and not tls.cert_file:
        raise ConfigError("tls.client_ca_file (mutual TLS) needs tls.cert_file and tls.key_file")
    for name in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"tls.{name}: {path} is not a readable file")
    return tls


def _server(server: ServerSettings) -> ServerSettings:
    if server.workers < 1:
        raise ConfigError(f"server.workers must be >= 1 (1: serve in this process), got {server.workers}")
    return server


def _limits(limits: LimitSettings) -> LimitSettings:
    for f in fields(LimitSettings):
        if getattr(limits, f.name) < 0:
            raise ConfigError(f"limits.{f.name} must be >= 0 (0 means unlimited), got {getattr(limits, f.name)}")
    return limits


def _session(session: SessionSettings) -> SessionSettings:
    if session.resume_window_s < 0:
        raise ConfigError(
            f"session.resume_window_s must be >= 0 (0: a dropped stream ends its session), got "
            f"{session.resume_window_s}"
        )
    if session.replay_events < 1 or session.replay_bytes < 1:
        raise ConfigError("session.replay_events and session.replay_bytes must be >= 1")
    if session.max_unread_events < 1:
        raise ConfigError(f"session.max_unread_events must be >= 1, got {session.max_unread_events}")
    return session


def _store(store: StoreSettings) -> StoreSettings:
    if store.kind not in STORE_KINDS:
        raise ConfigError(f"store.kind must be one of {list(STORE_KINDS)}, got {store.kind!r}")
    if store.kind == "redis" and not store.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"store.url must be a redis://, rediss:// or unix:// URL, got {store.url!r}")
    if store.ttl_s <= 0 or store.timeout_s <= 0:
        raise ConfigError("store.ttl_s and store.timeout_s must be > 0")
    return store
