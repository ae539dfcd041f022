"""Convert a stream of PCM16 mono chunks to another sample rate, continuous across chunk edges.

A fallback TTS, a realtime provider or an avatar provider may work at a rate other
than the one a session announced; the router (and any adapter that must feed a
provider its own rate) passes the audio through a `Resampler` so the stream's
format never changes. It is libsoxr (python-soxr), band-limited: going down in
rate, what lies above the new Nyquist frequency is filtered out rather than folded
back into the audible band, as plain interpolation would.
"""

from __future__ import annotations

import numpy as np
import soxr

from adapters.media import AudioChunk, SpeechMark

# soxr's "LQ" recipe delays the stream by about a millisecond where "HQ" holds back
# about 33 ms (its longer filter), which the first audio of a turn would wait for.
# Its pass band is flat to about three quarters of the new Nyquist frequency (6 kHz
# at 16 kHz), enough for speech, and it rejects aliases as well as "HQ" does.
_QUALITY = "LQ"


class Resampler:
    """Streaming resampler for PCM16 mono: `feed` each chunk in order, `flush` once at the end."""

    def __init__(self, src_hz: int, dst_hz: int) -> None:
        self.src_hz, self.dst_hz = src_hz, dst_hz
        self._stream = soxr.ResampleStream(src_hz, dst_hz, 1, dtype="int16", quality=_QUALITY)
        self.out_samples = 0

    def feed(self, chunk: AudioChunk) -> AudioChunk:
        """The resampled audio this chunk completes, with its marks, placed after what came before."""
        return self._emit(np.frombuffer(chunk.pcm, dtype="<i2"), chunk.marks, last=False)

    def flush(self) -> AudioChunk:
        """The audio the filter still holds, once the stream has ended (may be empty)."""
        return self._emit(np.zeros(0, dtype="<i2"), (), last=True)

    def _emit(self, x: np.ndarray, marks: tuple[SpeechMark, ...], *, last: bool) -> AudioChunk:
        y = self._stream.resample_chunk(x, last=last)
        start_ms = self.out_samples * 1000 / self.dst_hz
        self.out_samples += len(y)
        return AudioChunk(y.astype("<i2", copy=False).tobytes(), self.dst_hz, start_ms, marks)
