"""Building a stage's adapter: its primary and fallbacks through the registry, behind the router."""

from __future__ import annotations

from collections.abc import Callable

from adapters import registry
from adapters.base import Adapter, Mode, Stage
from tth_server.config import ComponentConfig, RouterSettings
from tth_server.router.avatar import RoutedAvatar
from tth_server.router.chain import Chain
from tth_server.router.routed import RoutedLLM, RoutedRealtime, RoutedTTS

_ROUTED: dict[Stage, Callable[[Chain], Adapter]] = {
    Stage.LLM: RoutedLLM,
    Stage.TTS: RoutedTTS,
    Stage.AVATAR: RoutedAvatar,
    Stage.REALTIME: RoutedRealtime,
}


def route(stage: str, component: ComponentConfig, settings: RouterSettings) -> Adapter:
    """The stage's adapter: primary and fallbacks built through the registry, behind the router.

    An in-process adapter (mode local) with no fallback is returned as it is, unless
    `router.route_local` is set: there is no provider to time out or trip a breaker
    on, and its fault knobs then behave exactly as configured.
    """
    where = f"components.{stage}"
    adapters = [registry.create(stage, component.adapter, component.options, where)]
    for i, entry in enumerate(component.fallback):
        adapters.append(registry.create(stage, entry.adapter, entry.options, f"{where}.fallback[{i}]"))
    if len(adapters) == 1 and adapters[0].mode is Mode.LOCAL and not settings.route_local:
        return adapters[0]
    return _ROUTED[Stage(stage)](Chain(Stage(stage), adapters, settings))
