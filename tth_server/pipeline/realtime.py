"""The realtime path: one combined provider (LLM and TTS in one) speaks the reply, and the avatar draws its face.

The provider's stream of transcript and audio replaces the LLM, segmenter and TTS
of the cascade. The conversation lives as long as the session (`ConversationSlot`);
an interrupted reply is truncated at the audio the user heard.
"""

from __future__ import annotations

import asyncio
import time

from adapters.base import (
    AvatarAdapter,
    AvatarInput,
    ControlMapping,
    LLMRequest,
    RealtimeAdapter,
    RealtimeConversation,
    Stage,
)
from adapters.errors import ProviderError
from adapters.logs import log
from tth_server import metrics
from tth_server.events import StageTiming
from tth_server.pipeline.face import animate
from tth_server.pipeline.outlet import Outlet
from tth_server.pipeline.report import ReportBuilder
from tth_server.pipeline.speech import Speech
from tth_server.pipeline.turn import ConversationSlot, SpokenSegment, TurnRun, TurnSink
from tth_server.prompt import system_prompt
from tth_server.router import TurnRoutes, for_turn


async def run_realtime(
    run: TurnRun,
    sink: TurnSink,
    report: ReportBuilder,
    realtime: RealtimeAdapter,
    avatar: AvatarAdapter,
    routes: TurnRoutes,
) -> None:
    """Run the turn through the session's conversation (bound to the turn's `routes`) and the avatar."""
    request = run.request
    controls = request.controls()
    # The provider speaks every word it writes, so inline emotion tags must not be asked for.
    prompt, prompt_applied = system_prompt(request.persona, controls, hints=False)
    mapping = realtime.map_controls(controls)
    report.add(Stage.REALTIME, ControlMapping(controls, applied=prompt_applied))
    report.add(Stage.REALTIME, mapping)
    face = avatar.map_controls(controls)
    report.add(Stage.AVATAR, face)
    owned = request.conversation is None  # Generate: a conversation for this one turn
    slot = request.conversation or ConversationSlot()
    audio: asyncio.Queue[AvatarInput | None] = asyncio.Queue(maxsize=8)
    llm_request = LLMRequest(prompt, request.user_text, request.history, controls)
    try:
        if slot.conversation is None:
            slot.conversation = await realtime.open(prompt, mapping)
        conversation = for_turn(slot.conversation, routes)
        try:
            async with asyncio.TaskGroup() as tasks:
                outlet = Outlet(run, sink)
                speech = Speech(run, outlet, audio)
                talk = _converse(run, realtime.name, conversation, llm_request, mapping, face, sink, speech)
                tasks.create_task(metrics.stage("realtime", talk))
                tasks.create_task(metrics.stage("avatar", animate(run, avatar, outlet, audio)))
                tasks.create_task(outlet.run())
        except asyncio.CancelledError:
            await _truncate(conversation, run)
            raise
    finally:
        if owned:
            await slot.aclose()


async def _converse(
    run: TurnRun,
    name: str,
    conversation: RealtimeConversation,
    llm_request: LLMRequest,
    mapping: ControlMapping,
    face: ControlMapping,
    sink: TurnSink,
    speech: Speech,
) -> None:
    spoken = SpokenSegment("", 0.0, 0.0)
    run.spoken.append(spoken)
    asked = time.monotonic()
    first = True
    async for item in conversation.respond(llm_request, mapping):
        if first:
            first = False
            run.metrics.stages.append(StageTiming(Stage.REALTIME, (time.monotonic() - asked) * 1000, name))
        if isinstance(item, str):
            if not run.text_parts:
                run.metrics.time_to_first_text_ms = run.metrics.llm_first_token_ms = run.since_start_ms()
            run.text_parts.append(item)
            spoken.text += item
            await sink.text(item)
            continue
        if not speech.made_ms:
            run.metrics.tts_first_byte_ms = (time.monotonic() - asked) * 1000
        await speech.add(item, spoken, face)
    spoken.text = spoken.text.strip()
    await speech.done()


async def _truncate(conversation: RealtimeConversation, run: TurnRun) -> None:
    """Tell the provider how much of the interrupted reply was heard; never holds the interrupt up for long."""
    heard = run.heard_ms(run.played_ms)
    try:
        await asyncio.wait_for(conversation.truncate(heard), 1.0)
    except (ProviderError, TimeoutError) as exc:
        log.warning("realtime truncate failed", error=str(exc), heard_ms=round(heard, 1))
