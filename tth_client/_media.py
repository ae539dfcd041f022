"""Files people can watch: a turn as `.mp4` (H.264 + AAC), `.wav` (speech only) or `.png` (a contact sheet).

The MP4 is aligned by timestamps, not by counting: each video frame is placed
at its own `timestamp_ms` on the turn's media clock and the audio starts at 0,
exactly as a player of the live stream would show them. PyAV (FFmpeg) and
Pillow are imported only when a file is written, so `import tth_client` stays light.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable, Sequence
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tth_client._turn import TurnResult
from tth_client.v1 import media_pb2 as mpb

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SUFFIXES", "frame_rate", "save", "write_contact_sheet", "write_mp4", "write_wav"]

SUFFIXES = (".mp4", ".wav", ".png")
"""The file kinds `save()` writes, chosen by suffix."""

Progress = Callable[[int, int], None]
"""Called as `progress(done, total)` while a file is written."""


def frame_rate(frames: Sequence[mpb.VideoFrame], default: int = 25) -> int:
    """The frame rate the frames were made at, from their timestamps (median spacing); `default` when unknown."""
    gaps = sorted(gap for a, b in pairwise(frames) if (gap := b.timestamp_ms - a.timestamp_ms) > 0)
    return max(1, round(1000 / gaps[len(gaps) // 2])) if gaps else default


def save(result: TurnResult, path: str | Path, *, fps: int | None = None, progress: Progress | None = None) -> Path:
    """Write `result` to `path`; the suffix picks the kind (.mp4, .wav or .png). Returns the path.

    `fps` is the session's frame rate (`started.video.fps`); None infers it from the frames' timestamps.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        write_mp4(path, result, fps=fps or frame_rate(result.frames), progress=progress)
    elif suffix == ".wav":
        write_wav(path, result.pcm, result.sample_rate_hz)
    elif suffix == ".png":
        write_contact_sheet(path, result.frames)
    else:
        raise ValueError(f"cannot write {path.name!r}: the file name must end in one of {', '.join(SUFFIXES)}")
    return path


def write_wav(path: str | Path, pcm: bytes, sample_rate_hz: int) -> None:
    """A 16-bit mono WAV file of `pcm`."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz or 24_000)
        out.writeframes(pcm)


def _image(frame: mpb.VideoFrame) -> Image.Image:
    from PIL import Image

    if frame.encoding == mpb.VIDEO_ENCODING_RAW_RGB:
        return Image.frombytes("RGB", (frame.width, frame.height), frame.data)
    return Image.open(io.BytesIO(frame.data)).convert("RGB")


def write_contact_sheet(
    path: str | Path, frames: Sequence[mpb.VideoFrame], *, count: int = 16, columns: int = 4, thumb_px: int = 256
) -> None:
    """A PNG grid of up to `count` frames spread evenly over the turn, each at most `thumb_px` wide and
    labelled with its time on the media clock."""
    from PIL import Image, ImageDraw

    if not frames:
        raise ValueError("the turn has no video frames to put on a contact sheet")
    step = max(1, len(frames) / count)
    picked = [frames[int(i * step)] for i in range(min(count, len(frames)))]
    first = _image(picked[0])
    scale = min(1.0, thumb_px / max(first.size))
    width, height = round(first.width * scale), round(first.height * scale)
    rows = (len(picked) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height), "black")
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(picked):
        x, y = (i % columns) * width, (i // columns) * height
        sheet.paste((first if i == 0 else _image(frame)).resize((width, height)), (x, y))
        draw.text((x + 4, y + 4), f"{frame.timestamp_ms / 1000:.2f} s", fill="white")
    sheet.save(str(path), format="PNG")


def write_mp4(
    path: str | Path, result: TurnResult, *, fps: int = 25, crf: int = 23, progress: Progress | None = None
) -> None:
    """An MP4 of the turn: H.264 (yuv420p) video at each frame's timestamp, AAC audio from 0.

    Frames are placed on a 1/fps grid by their `timestamp_ms` (a dropped frame leaves
    the previous one on screen); `fps` should be the session's (`started.video.fps`).
    `progress(done, total)` is called as frames are encoded.
    """
    import av
    import numpy as np

    frames = result.frames
    rate = result.sample_rate_hz
    samples = np.frombuffer(result.pcm, dtype="<i2").reshape(1, -1)
    with av.open(str(path), mode="w", format="mp4") as container:
        video: Any = None
        if frames:
            video = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": str(crf)})
            video.width, video.height = frames[0].width, frames[0].height
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = Fraction(1, fps)
        audio: Any = None
        if samples.size:
            audio = container.add_stream("aac", rate=rate)
            audio.layout = "mono"
        written = 0  # audio samples encoded so far

        def audio_until(seconds: float) -> None:
            # Audio is encoded in one-second slices alongside the video, so the file is interleaved.
            nonlocal written
            while audio is not None and written < samples.shape[1] and written < seconds * rate:
                piece = samples[:, written : written + rate]
                sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="s16", layout="mono")
                sound.sample_rate, sound.pts, sound.time_base = rate, written, Fraction(1, rate)
                container.mux(audio.encode(sound))
                written += piece.shape[1]

        last_pts = -1
        for done, frame in enumerate(frames, 1):
            pts = round(frame.timestamp_ms * fps / 1000)
            if pts > last_pts:  # two frames on one grid slot: keep the first
                audio_until(pts / fps + 1)
                picture = av.VideoFrame.from_ndarray(np.asarray(_image(frame)), format="rgb24")
                picture.pts, last_pts = pts, pts
                container.mux(video.encode(picture))
            if progress is not None:
                progress(done, len(frames))
        audio_until(float("inf"))
        for stream in (video, audio):
            if stream is not None:
                container.mux(stream.encode(None))
