"""The turn pipeline: LLM stream -> segmenter -> TTS stream -> avatar, all at once.

Three stage tasks run concurrently for a turn (`cascade`); with a combined
realtime provider its stream of transcript and audio replaces the LLM, segmenter
and TTS (`realtime`). Either way the speech goes onto the turn's clock (`speech`),
the face is drawn from it (`face`), and the turn's `Outlet` (`outlet`) sends the
media on as its `Pacer` (`pacing`) lets it go, at most a bounded lead ahead of
real time (a `Generate` call runs unpaced). `TurnPipeline` (`stages`) chooses the
path and binds the routed adapters to the turn; `turn` holds the turn's data and
`report` builds its control report. Cancelling `TurnPipeline.run` cancels every
task at once.
"""

from tth_server.pipeline.outlet import Outlet
from tth_server.pipeline.pacing import Pacer
from tth_server.pipeline.stages import Stages, TurnPipeline
from tth_server.pipeline.turn import ConversationSlot, SegmentPolicy, SpokenSegment, TurnRequest, TurnRun, TurnSink

__all__ = [
    "ConversationSlot",
    "Outlet",
    "Pacer",
    "SegmentPolicy",
    "SpokenSegment",
    "Stages",
    "TurnPipeline",
    "TurnRequest",
    "TurnRun",
    "TurnSink",
]
