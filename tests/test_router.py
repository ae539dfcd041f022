"""The provider router: breaker, budgets, retries only before output, the fallback chain, what turns report."""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from adapters.base import AvatarAdapter, AvatarInput, LLMAdapter, LLMRequest, Stage
from adapters.controls import Controls
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.local.stub_avatar import StubAvatar
from adapters.local.tone_tts import ToneTTS
from adapters.media import AudioChunk, RenderSettings, VideoFrame
from adapters.options import GivenOptions
from adapters.resample import Resampler
from tth_server.config import BreakerSettings, ComponentConfig, RouterSettings, StageBudget
from tth_server.events import StageTiming
from tth_server.router import (
    Breaker,
    BreakerState,
    Chain,
    RoutedAvatar,
    RoutedLLM,
    RoutedTTS,
    TurnRoutes,
    budgeted,
    route,
)

REQUEST = LLMRequest("s", "hi")


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, with nothing ready, moves its clock on by the timeout it was given instead of waiting it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(None if timeout is None else 0)
        if not ready and timeout:
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer whenever nothing is ready.

    Sleeps, timeouts and budgets keep their order and their lengths on `loop.time()`,
    but take no real time, so a busy machine cannot stretch them.
    """

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def on_virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test to its end on a `VirtualTimeLoop`."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run


def now() -> float:
    return asyncio.get_running_loop().time()


def state(breaker: Breaker) -> BreakerState:
    return breaker.state


def settings(first_byte_ms: float = 300, total_ms: float = 0, **kw: Any) -> RouterSettings:
    budget = StageBudget(first_byte_ms, total_ms)
    base: dict[str, Any] = {
        "retries": 1,
        "retry_backoff_ms": 10,
        "max_retry_after_ms": 300,
        "breaker": BreakerSettings(3, 30.0),
    }
    base.update(kw)
    return RouterSettings(**base, budgets={s.value: budget for s in Stage})


@dataclass
class Step:
    """One call's behaviour: fail with `fail` after `after` words, or hang before the first."""

    fail: ErrorCategory | None = None
    after: int = 0
    retry_after: float | None = None
    hang: bool = False


@dataclass
class PlanLLM(LLMAdapter):
    """A fake LLM with knobs: each call follows the next Step of its plan, then behaves."""

    label: str = "plan"
    plan: list[Step] = field(default_factory=list)
    words: tuple[str, ...] = ("one ", "two ", "three")
    calls: int = 0

    def __post_init__(self) -> None:
        LLMAdapter.__init__(self, self.label, {})

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        self.calls += 1
        step = self.plan.pop(0) if self.plan else Step()
        if step.hang:
            await asyncio.Event().wait()
        for i, word in enumerate(self.words):
            if step.fail is not None and i == step.after:
                raise ProviderError(step.fail, "planned", provider=self.name, retry_after_s=step.retry_after)
            yield word


async def text(llm: LLMAdapter) -> str:
    return "".join([piece async for piece in llm.stream(REQUEST)])


def routed(*llms: PlanLLM, **kw: Any) -> RoutedLLM:
    return RoutedLLM(Chain(Stage.LLM, list(llms), settings(**kw)))


# ---- the breaker -----------------------------------------------------------------------------------------------


def test_the_breaker_opens_after_the_threshold_and_lets_one_trial_through_after_cooldown() -> None:
    now = [0.0]
    breaker = Breaker(3, 10.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.settle(False)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.settle(False)
    assert state(breaker) is BreakerState.OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one trial at a time
    breaker.settle(False)
    assert state(breaker) is BreakerState.OPEN and not breaker.allow()  # the trial failed: open again
    now[0] = 20.0
    assert breaker.allow()
    breaker.settle(None)  # the trial was cancelled: no verdict, another may try
    assert breaker.allow()
    breaker.settle(True)
    assert state(breaker) is BreakerState.CLOSED and breaker.failures == 0


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = Breaker(2, 1.0)
    for ok in (False, True, False, True, False):
        assert breaker.allow()
        breaker.settle(ok)
    assert state(breaker) is BreakerState.CLOSED


# ---- budgets ---------------------------------------------------------------------------------------------------


async def slow_items(first_s: float, gap_s: float, n: int) -> AsyncIterator[int]:
    await asyncio.sleep(first_s)
    for i in range(n):
        if i:
            await asyncio.sleep(gap_s)
        yield i


@on_virtual_time
async def test_a_provider_silent_past_its_first_byte_budget_times_out_on_time() -> None:
    started = now()
    with pytest.raises(ProviderError) as err:
        _ = [i async for i in budgeted(slow_items(5, 0, 1), StageBudget(100, 0), "p")]
    assert err.value.category is ErrorCategory.TIMEOUT and "100 ms" in str(err.value)
    assert now() - started < 0.5


@on_virtual_time
async def test_the_total_budget_counts_provider_time_not_the_consumers() -> None:
    got = []
    async for i in budgeted(slow_items(0, 0.01, 5), StageBudget(100, 200), "p"):
        got.append(i)
        await asyncio.sleep(0.1)  # the pipeline pacing output: 500 ms in all, not charged
    assert got == [0, 1, 2, 3, 4]
    with pytest.raises(ProviderError) as err:
        _ = [i async for i in budgeted(slow_items(0, 0.08, 10), StageBudget(100, 200), "p")]
    assert err.value.category is ErrorCategory.TIMEOUT and "200 ms" in str(err.value)


# ---- retries and the fallback chain -----------------------------------------------------------------------------


async def test_a_retryable_failure_before_output_is_retried_on_the_same_provider() -> None:
    primary = PlanLLM("primary", [Step(ErrorCategory.SERVER)])
    fallback = PlanLLM("fallback")
    assert await text(routed(primary, fallback)) == "one two three"
    assert (primary.calls, fallback.calls) == (2, 0)


@pytest.mark.parametrize("category", [ErrorCategory.AUTH, ErrorCategory.INVALID_REQUEST, ErrorCategory.TIMEOUT])
async def test_what_retrying_cannot_fix_goes_straight_to_the_fallback(category: ErrorCategory) -> None:
    primary = PlanLLM("primary", [Step(category)] * 3)
    fallback = PlanLLM("fallback", words=("from ", "fallback"))
    assert await text(routed(primary, fallback)) == "from fallback"
    assert (primary.calls, fallback.calls) == (1, 1)


@on_virtual_time
async def test_retry_after_is_honoured_when_short_and_skipped_to_the_fallback_when_long() -> None:
    primary = PlanLLM("primary", [Step(ErrorCategory.RATE_LIMIT, retry_after=0.15)])
    started = now()
    assert await text(routed(primary, PlanLLM("fallback"))) == "one two three"
    assert primary.calls == 2 and now() - started >= 0.15
    primary = PlanLLM("primary", [Step(ErrorCategory.RATE_LIMIT, retry_after=30)])
    fallback = PlanLLM("fallback", words=("spare",))
    started = now()
    assert await text(routed(primary, fallback)) == "spare"
    assert primary.calls == 1 and now() - started < 0.1


async def test_a_failure_after_output_is_final_and_nothing_is_sent_twice() -> None:
    primary = PlanLLM("primary", [Step(ErrorCategory.SERVER, after=2)])
    fallback = PlanLLM("fallback")
    got: list[str] = []
    with pytest.raises(ProviderError) as err:
        async for piece in routed(primary, fallback).stream(REQUEST):
            got.append(piece)
    assert got == ["one ", "two "] and err.value.category is ErrorCategory.SERVER
    assert (primary.calls, fallback.calls) == (1, 0)


@on_virtual_time
async def test_a_hung_primary_falls_back_within_the_first_byte_budget() -> None:
    primary = PlanLLM("primary", [Step(hang=True)])
    started = now()
    assert await text(routed(primary, PlanLLM("fallback"), first_byte_ms=150)) == "one two three"
    assert 0.15 <= now() - started < 0.4
    assert primary.calls == 1  # a timeout is not retried: waiting again only spends the budget twice


async def test_when_every_provider_fails_the_error_names_them_all_and_keeps_the_last_category() -> None:
    primary = PlanLLM("primary", [Step(ErrorCategory.AUTH)])
    fallback = PlanLLM("fallback", [Step(ErrorCategory.RATE_LIMIT, retry_after=60)])
    with pytest.raises(ProviderError) as err:
        await text(routed(primary, fallback))
    assert err.value.category is ErrorCategory.RATE_LIMIT and err.value.retry_after_s == 60
    assert "primary" in str(err.value) and "fallback" in str(err.value)


async def test_an_open_circuit_skips_its_provider_until_a_trial_succeeds() -> None:
    primary = PlanLLM("primary", [Step(ErrorCategory.AUTH)] * 3)
    fallback = PlanLLM("fallback", words=("spare",))
    llm = routed(primary, fallback)
    for _ in range(3):
        assert await text(llm) == "spare"
    assert state(llm.chain.providers[0].breaker) is BreakerState.OPEN
    assert await text(llm) == "spare" and primary.calls == 3  # skipped without a call
    health = await llm.health()
    assert health.healthy and "circuit open" in health.detail and "serving from fallback" in health.detail
    assert llm.map_controls(Controls()).controls == Controls()
    llm.chain.providers[0].breaker._opened_at -= 60  # the cooldown has passed
    assert await text(llm) == "one two three" and primary.calls == 4
    assert state(llm.chain.providers[0].breaker) is BreakerState.CLOSED


async def test_with_every_circuit_open_the_turn_fails_fast_with_a_retry_hint() -> None:
    llm = routed(PlanLLM("only", [Step(ErrorCategory.AUTH)] * 3))
    for _ in range(3):
        with pytest.raises(ProviderError):
            await text(llm)
    with pytest.raises(ProviderError) as err:
        await text(llm)
    assert err.value.category is ErrorCategory.CONNECTIVITY and "circuit is open" in str(err.value)
    assert err.value.retry_after_s and err.value.retry_after_s > 20


async def test_invalid_requests_do_not_trip_the_breaker() -> None:
    primary = PlanLLM("primary", [Step(ErrorCategory.INVALID_REQUEST)] * 5)
    llm = routed(primary, PlanLLM("fallback"))
    for _ in range(5):
        await text(llm)
    assert state(llm.chain.providers[0].breaker) is BreakerState.CLOSED


async def test_the_turn_record_says_who_served_first_and_that_a_fallback_fired() -> None:
    async def turn() -> list[StageTiming]:
        routes = TurnRoutes()
        llm = routed(PlanLLM("primary", [Step(ErrorCategory.AUTH)]), PlanLLM("fallback")).for_turn(routes)
        await text(llm)
        timings = [StageTiming(Stage.LLM, 1.0, "primary")]
        routes.apply(timings)
        return timings

    (timing,) = await asyncio.create_task(turn())
    assert (timing.adapter, timing.fallback_used) == ("fallback", True)


# ---- TTS: per sentence, one voice per turn, the announced rate ---------------------------------------------------


class PlanTTS(ToneTTS):
    def __init__(self, name: str, options: GivenOptions, fail_calls: set[int]) -> None:
        super().__init__(name, options)
        self.fail_calls, self.calls = fail_calls, 0

    async def synthesize(self, text: str, mapping: Any) -> AsyncIterator[AudioChunk]:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise ProviderError(ErrorCategory.AUTH, "planned", provider=self.name)
        async for chunk in super().synthesize(text, mapping):
            yield chunk


async def test_a_failed_sentence_falls_back_and_the_rest_of_the_turn_keeps_that_voice_at_the_primary_rate() -> None:
    primary = PlanTTS("primary", {"sample_rate_hz": 24000}, fail_calls={2})
    fallback = PlanTTS("fallback", {"sample_rate_hz": 16000}, fail_calls=set())
    tts = RoutedTTS(Chain(Stage.TTS, [primary, fallback], settings()))

    async def turn() -> list[list[AudioChunk]]:
        turn_tts = tts.for_turn(TurnRoutes())
        out = []
        for sentence in ("First one.", "Second one.", "Third one."):
            mapping = turn_tts.map_controls(Controls())
            out.append([c async for c in turn_tts.synthesize(sentence, mapping)])
        return out

    first, second, third = await asyncio.create_task(turn())
    assert (primary.calls, fallback.calls) == (2, 2)  # sentence 3 stays with the fallback
    for chunks in (first, second, third):
        assert {c.sample_rate_hz for c in chunks} == {24000}
    expected_ms = sum(
        c.duration_ms
        for c in [
            c
            async for c in ToneTTS("t", {"sample_rate_hz": 16000}).synthesize(
                "Second one.", ToneTTS("t", {}).map_controls(Controls())
            )
        ]
    )
    assert sum(c.duration_ms for c in second) == pytest.approx(expected_ms, abs=1.0)
    assert tts.sample_rate_hz == 24000


def test_resampling_keeps_duration_and_pitch_across_chunk_edges() -> None:
    rate, out_rate = 22050, 24000
    t = np.arange(rate) / rate
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    resampler = Resampler(rate, out_rate)
    pieces = [resampler.feed(AudioChunk(tone[i : i + 882], rate)) for i in range(0, len(tone), 882)]
    pieces.append(resampler.flush())
    y = np.frombuffer(b"".join(p.pcm for p in pieces), dtype="<i2").astype(np.float64)
    assert abs(len(y) - out_rate) <= 2
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * out_rate / len(y) - 440) < 2
    assert np.max(np.abs(np.diff(y))) < 8000 * 2 * np.pi * 440 / out_rate * 1.1  # no steps at the edges
    assert pieces[1].timestamp_ms == pytest.approx(pieces[0].duration_ms)
    assert pieces[0].samples > 0.9 * 441 * out_rate / rate  # 441 samples in: not held back


def test_going_down_in_rate_filters_out_what_lies_above_the_new_nyquist() -> None:
    # A sweep from 8.5 to 11.5 kHz at 24 kHz, resampled to 16 kHz (Nyquist 8 kHz): none of it can be
    # represented, so what comes out must be nearly silent. Linear interpolation folds it back into
    # 4.5-7.5 kHz at 73 % of the input's level.
    rate, out_rate = 24000, 16000
    t = np.arange(rate) / rate
    x = 8000 * np.sin(2 * np.pi * (8500 * t + 1500 * t**2))
    sweep = x.astype("<i2").tobytes()
    resampler = Resampler(rate, out_rate)
    pieces = [resampler.feed(AudioChunk(sweep[i : i + 1920], rate)) for i in range(0, len(sweep), 1920)]
    y = np.frombuffer(b"".join(p.pcm for p in [*pieces, resampler.flush()]), dtype="<i2").astype(np.float64)
    level = np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2))
    assert level < 0.01, f"aliases at {level:.1%} of the input's level"
    assert abs(len(y) - out_rate) <= 2


# ---- the avatar: a fallback starts from the first audio -----------------------------------------------------------


class FailingAvatar(AvatarAdapter):
    def __init__(self, name: str, after_frames: int, hang: bool = False) -> None:
        super().__init__(name, {})
        self.after_frames, self.hang, self.inputs_read = after_frames, hang, 0

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        last: AvatarInput | None = None
        async for item in audio:
            last = item
            self.inputs_read += 1
            if self.hang:
                await asyncio.Event().wait()
            if self.inputs_read > 3:
                break
        inner = StubAvatar("stub", {})

        async def again() -> AsyncIterator[AvatarInput]:
            assert last is not None
            yield last

        n = 0
        async for frame in inner.render(again(), settings):
            if n == self.after_frames:
                raise ProviderError(ErrorCategory.SERVER, "planned", provider=self.name)
            n += 1
            yield frame


async def audio_items(n: int = 12) -> list[AvatarInput]:
    tts = ToneTTS("tone", {"chunk_ms": 40})
    mapping = tts.map_controls(Controls())
    chunks = [c async for c in tts.synthesize("Hello there, how are you today my friend?", mapping)]
    face = StubAvatar("stub", {}).map_controls(Controls())
    return [AvatarInput(c, face) for c in chunks[:n]]


async def paced(items: list[AvatarInput], gap_s: float = 0.005) -> AsyncIterator[AvatarInput]:
    for item in items:
        await asyncio.sleep(gap_s)
        yield item


@on_virtual_time
@pytest.mark.parametrize("hang", [False, True])
async def test_an_avatar_that_fails_before_its_first_frame_is_replaced_from_the_first_audio(hang: bool) -> None:
    items = await audio_items()
    render = RenderSettings(25, 64, 64)
    expected = [f async for f in StubAvatar("stub", {}).render(paced(items, 0), render)]
    avatar = RoutedAvatar(
        Chain(
            Stage.AVATAR, [FailingAvatar("remote", 0, hang), StubAvatar("stub_avatar", {})], settings(first_byte_ms=150)
        )
    )

    async def turn() -> tuple[list[VideoFrame], list[StageTiming]]:
        routes = TurnRoutes()
        frames = [f async for f in avatar.for_turn(routes).render(paced(items), render)]
        timings = [StageTiming(Stage.AVATAR, 1.0, "remote")]
        routes.apply(timings)
        return frames, timings

    frames, timings = await asyncio.create_task(turn())
    assert frames == expected  # every frame from 0, none twice, drawn from all the audio
    assert (timings[0].adapter, timings[0].fallback_used) == ("stub_avatar", True)


@on_virtual_time
async def test_an_avatar_that_fails_after_frames_is_replaced_from_the_next_frame() -> None:
    items = await audio_items()
    render = RenderSettings(25, 64, 64)
    expected = [f async for f in StubAvatar("stub", {}).render(paced(items, 0), render)]
    avatar = RoutedAvatar(Chain(Stage.AVATAR, [FailingAvatar("remote", 2), StubAvatar("stub_avatar", {})], settings()))

    async def turn() -> tuple[list[VideoFrame], list[StageTiming]]:
        routes = TurnRoutes()
        frames = [f async for f in avatar.for_turn(routes).render(paced(items), render)]
        timings = [StageTiming(Stage.AVATAR, 1.0, "remote")]
        routes.apply(timings)
        return frames, timings

    frames, timings = await asyncio.create_task(turn())
    assert [f.frame_index for f in frames] == list(range(len(expected)))  # each slot once, none missing
    assert frames[2:] == expected[2:]  # the fallback's from the third frame on
    assert (timings[0].adapter, timings[0].fallback_used) == ("remote", True)


# ---- building ---------------------------------------------------------------------------------------------------


def test_fallbacks_are_built_through_the_registry_and_checked() -> None:
    spec = ComponentConfig("tone_tts", {}, ({"adapter": "tone_tts", "options": {"sample_rate_hz": 16000}},))
    tts = route("tts", spec, RouterSettings())
    assert isinstance(tts, RoutedTTS) and [a.name for a in tts.fallbacks] == ["tone_tts"]
    assert route("tts", ComponentConfig("tone_tts"), RouterSettings()).__class__ is ToneTTS  # local, alone: as is
    assert isinstance(route("tts", ComponentConfig("tone_tts"), RouterSettings(route_local=True)), RoutedTTS)
    with pytest.raises(ConfigError, match=r"components.tts.fallback\[0\].adapter: 'scripted' is a llm adapter"):
        route("tts", ComponentConfig("tone_tts", {}, ({"adapter": "scripted"},)), RouterSettings())
