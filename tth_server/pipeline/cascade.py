"""The cascade: LLM stream -> segmenter -> TTS stream -> avatar, the three stages running at once.

The LLM task sends text deltas as tokens arrive and cuts the text into segments;
the speech task synthesizes each segment as soon as it is cut and puts the audio
on the turn's clock; the face task renders frames from that audio. They hand work
on through small bounded queues; the outlet sends the media as the pacer lets it go.
"""

from __future__ import annotations

import asyncio
import time

from adapters.base import AvatarAdapter, AvatarInput, ControlMapping, LLMAdapter, LLMRequest, Stage, TTSAdapter
from adapters.controls import ControlPatch, Controls
from tth_server import metrics
from tth_server.events import StageTiming
from tth_server.pipeline.face import animate
from tth_server.pipeline.outlet import Outlet
from tth_server.pipeline.report import ReportBuilder
from tth_server.pipeline.speech import Speech
from tth_server.pipeline.turn import SpokenSegment, TurnRun, TurnSink
from tth_server.prompt import system_prompt
from tth_server.segmenter import Hint, HintParser, Segment, Segmenter


async def run_cascade(
    run: TurnRun,
    sink: TurnSink,
    report: ReportBuilder,
    llm: LLMAdapter,
    tts: TTSAdapter,
    avatar: AvatarAdapter,
) -> None:
    """Run the turn through the LLM, the TTS and the avatar. Raises what a stage raised; cancel to interrupt."""
    request = run.request
    controls = request.controls()
    prompt, prompt_applied = system_prompt(request.persona, controls)
    report.add(Stage.LLM, ControlMapping(controls, applied=prompt_applied))
    segments: asyncio.Queue[Segment | None] = asyncio.Queue(maxsize=4)
    audio: asyncio.Queue[AvatarInput | None] = asyncio.Queue(maxsize=8)
    llm_request = LLMRequest(prompt, request.user_text, request.history, controls)
    outlet = Outlet(run, sink)
    speech = Speech(run, outlet, audio)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(metrics.stage("llm", _write(run, llm, llm_request, sink, segments)))
        tasks.create_task(metrics.stage("tts", _speak(run, tts, avatar, report, speech, segments, controls)))
        tasks.create_task(metrics.stage("avatar", animate(run, avatar, outlet, audio)))
        tasks.create_task(outlet.run())


async def _write(
    run: TurnRun,
    llm: LLMAdapter,
    llm_request: LLMRequest,
    sink: TurnSink,
    out: asyncio.Queue[Segment | None],
) -> None:
    policy = run.request.segments
    parser = HintParser()
    segmenter = Segmenter(policy.first_clause_min_chars, policy.max_chars, policy.sentences_only)
    first = True
    async for piece in llm.stream(llm_request):
        if first:
            first = False
            run.metrics.llm_first_token_ms = run.since_start_ms()
            run.metrics.stages.append(StageTiming(Stage.LLM, run.metrics.llm_first_token_ms, llm.name))
        for item in parser.feed(piece):
            await _text(run, sink, segmenter, item, out)
    for item in parser.flush():
        await _text(run, sink, segmenter, item, out)
    for segment in segmenter.flush():
        await out.put(segment)
    await out.put(None)


async def _text(
    run: TurnRun, sink: TurnSink, segmenter: Segmenter, item: str | Hint, out: asyncio.Queue[Segment | None]
) -> None:
    if isinstance(item, Hint):
        segmenter.hint(item.patch)
        return
    if not item:
        return
    if not run.text_parts:
        run.metrics.time_to_first_text_ms = run.since_start_ms()
    run.text_parts.append(item)
    await sink.text(item)
    for segment in segmenter.feed(item):
        await out.put(segment)
        # Let the speech task start on it now, even when the LLM has more text ready.
        await asyncio.sleep(0)


async def _speak(
    run: TurnRun,
    tts: TTSAdapter,
    avatar: AvatarAdapter,
    report: ReportBuilder,
    speech: Speech,
    segments: asyncio.Queue[Segment | None],
    controls: Controls,
) -> None:
    """Speak each segment with `controls` (the turn's), or with its hint's on top when it has one."""
    first_chunk = True
    mapped: tuple[ControlPatch | None, ControlMapping, ControlMapping] | None = None  # for the last hint
    while (segment := await segments.get()) is not None:
        if mapped is None or segment.hint is not mapped[0]:  # segments share a hint until the LLM sends another
            hinted = controls if segment.hint is None else run.request.controls(segment.hint)
            mapped = segment.hint, tts.map_controls(hinted), avatar.map_controls(hinted)
            report.add(Stage.TTS, mapped[1])
            report.add(Stage.AVATAR, mapped[2])
        _, tts_mapping, face_mapping = mapped
        spoken = SpokenSegment(segment.text, speech.made_ms, speech.made_ms)
        run.spoken.append(spoken)
        asked = time.monotonic()
        async for piece in tts.synthesize(segment.text, tts_mapping):
            if first_chunk:
                first_chunk = False
                run.metrics.tts_first_byte_ms = (time.monotonic() - asked) * 1000
                run.metrics.stages.append(StageTiming(Stage.TTS, run.metrics.tts_first_byte_ms, tts.name))
            await speech.add(piece, spoken, face_mapping)
    await speech.done()
