"""A turn's face: frames drawn from the turn's audio as it comes in, placed on its clock, handed to the outlet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from adapters.base import AvatarAdapter, AvatarInput, Stage
from tth_server.drift import DriftController
from tth_server.events import StageTiming
from tth_server.pipeline.outlet import Outlet
from tth_server.pipeline.turn import TurnRun


async def animate(
    run: TurnRun, avatar: AvatarAdapter, outlet: Outlet, audio: asyncio.Queue[AvatarInput | None]
) -> None:
    """Draw the face as its audio comes in; the outlet sends each frame when it is due."""
    drift = run.drift = DriftController(run.request.render)
    first_audio_at: list[float] = []
    first_frame = True

    async def inputs() -> AsyncIterator[AvatarInput]:
        while (item := await audio.get()) is not None:
            if not first_audio_at:
                first_audio_at.append(time.monotonic())
            yield item

    async for raw in avatar.render(inputs(), run.request.render):
        frame = drift.place(raw)
        if frame is None:
            continue
        if first_frame:
            first_frame = False
            run.metrics.avatar_first_frame_ms = (time.monotonic() - first_audio_at[0]) * 1000
            run.metrics.stages.append(StageTiming(Stage.AVATAR, run.metrics.avatar_first_frame_ms, avatar.name))
        await outlet.video(frame)
    outlet.done()
