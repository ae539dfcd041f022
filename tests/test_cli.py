"""The `tth` command against a real server: files people can watch, metrics, chat, and one-line errors."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from tests.certs import make_certs
from tth_client.cli import main
from tth_server.config import load_config
from tth_server.server import serve

UNPACED = {"session": {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}, "log": {"level": "warning"}}


class _LoopThread:
    """An event loop on a thread, so servers keep serving while the CLI runs its own `asyncio.run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[_LoopThread]:
    thread = _LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def target(loop_thread: _LoopThread) -> Iterator[str]:
    server = loop_thread.run(serve(load_config("mock", env={}, overrides=UNPACED), "127.0.0.1:0"))
    yield f"127.0.0.1:{server.port}"
    loop_thread.run(server.stop(0))


def _cli_lines(text: str) -> list[str]:
    """The CLI's own lines: the server runs in this process, and its JSON log lines are not the CLI's."""
    return [line for line in text.strip().splitlines() if not line.startswith('{"')]


def _one_line(text: str) -> str:
    lines = _cli_lines(text)
    assert len(lines) == 1, f"expected one line, got {lines}"
    return lines[0]


# ---- tth say ------------------------------------------------------------------------------------------------------


def test_say_writes_an_mp4_whose_audio_and_video_durations_agree_within_one_frame(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hello.mp4"
    assert main(["say", "Hello there, how are you today?", "-o", str(out), "--target", target]) == 0
    printed = capsys.readouterr().out

    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert audio.codec_context.name == "aac"
        fps = float(video.average_rate or 25)
        pictures = list(container.decode(video=0))
    with av.open(str(out)) as container:
        sounds = list(container.decode(audio=0))
    video_s = float(pictures[-1].time or 0) + 1 / fps
    audio_s = float(sounds[-1].time or 0) + sounds[-1].samples / sounds[-1].sample_rate

    assert f"{len(pictures)} frames" in printed  # every frame received was encoded and decodes
    assert video_s > 1
    assert abs(video_s - audio_s) <= 1 / fps, (video_s, audio_s)
    assert "time to first audio" in printed and "drift" in printed


def test_say_writes_a_wav_of_the_turn_speech(target: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    assert main(["say", "Hello", "-o", str(out), "--target", target, "--emotion", "sad"]) == 0
    with wave.open(str(out)) as sound:
        assert (sound.getnchannels(), sound.getsampwidth(), sound.getframerate()) == (1, 2, 24_000)
        assert sound.getnframes() > 24_000


def test_say_writes_a_png_contact_sheet_of_frames(target: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.png"
    assert main(["say", "Hello", "-o", str(out), "--target", target, "--width", "128", "--height", "128"]) == 0
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.size == (4 * 128, 4 * 128)


def test_say_prints_the_metrics_as_json_when_asked(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["say", "Hello", "-o", str(tmp_path / "a.wav"), "--target", target, "--json"]) == 0
    assert '"timeToFirstAudioMs"' in capsys.readouterr().out


def test_an_unknown_output_kind_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["say", "Hello", "-o", str(tmp_path / "a.gif")])
    assert exit_.value.code == 2 and ".mp4, .wav, .png" in capsys.readouterr().err


# ---- errors a person can act on -----------------------------------------------------------------------------------


def test_an_invalid_control_value_is_one_line_naming_the_flag(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["say", "Hi", "-o", str(tmp_path / "a.wav"), "--target", target, "--intensity", "3"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("tth: invalid control value:") and "[0.0, 1.0]" in line and "Fix: pass --intensity" in line


def test_an_unknown_persona_is_one_line_pointing_at_tth_models(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["say", "Hi", "-o", str(tmp_path / "a.wav"), "--target", target, "--persona", "nobody"]) == 2
    assert "`tth models`" in _one_line(capsys.readouterr().err)


def test_an_unreachable_server_is_one_line_with_the_command_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--target", "127.0.0.1:1"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "cannot reach the TTH server at 127.0.0.1:1" in line
    # Commands that work from a fresh checkout: the venv's scripts are not on PATH, and `make run` is the default.
    assert "`make run LISTEN=127.0.0.1:1`" in line and "`.venv/bin/tth-server --listen 127.0.0.1:1`" in line
    assert "--profile mock" not in line


@pytest.mark.parametrize(
    ("text", "wrong", "fix"),
    [
        ("   ", "text must not be empty", "Fix: send some text"),
        ("x" * 5000, "the limit is 4000", "Fix: send a shorter"),
    ],
)
def test_an_empty_or_over_long_text_is_one_line_saying_what_is_wrong_with_the_text(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, wrong: str, fix: str
) -> None:
    assert main(["say", text, "-o", str(tmp_path / "a.wav"), "--target", target]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("tth: invalid text:") and wrong in line and fix in line
    assert "control" not in line and "range" not in line


def test_unauthenticated_is_one_line_asking_for_an_api_key(
    loop_thread: _LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    server = loop_thread.run(serve(load_config("mock", env={"TTH_API_KEYS": "k"}, overrides=UNPACED), "127.0.0.1:0"))
    try:
        assert main(["models", "--target", f"127.0.0.1:{server.port}"]) == 1
        refused = _one_line(capsys.readouterr().err)
        assert main(["models", "--target", f"127.0.0.1:{server.port}", "--api-key", "k"]) == 0
    finally:
        loop_thread.run(server.stop(0))
    assert "refused the credentials (missing API key" in refused and "Fix: pass --api-key KEY" in refused


def test_mutual_tls_takes_the_client_certificate_from_the_command_line(
    loop_thread: _LoopThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = make_certs(tmp_path)
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key), "client_ca_file": str(certs.ca)}
    server = loop_thread.run(serve(load_config("mock", env={}, overrides={**UNPACED, "tls": tls}), "127.0.0.1:0"))
    base = ["models", "--target", f"127.0.0.1:{server.port}", "--ca-cert", str(certs.ca), "--timeout", "5"]
    try:
        assert main(base) == 1  # no client certificate: the handshake is refused
        capsys.readouterr()
        assert main([*base, "--client-cert", str(certs.client_cert), "--client-key", str(certs.client_key)]) == 0
    finally:
        loop_thread.run(server.stop(0))
    assert "mock" in capsys.readouterr().out


# ---- tth chat, models, health -------------------------------------------------------------------------------------


def test_chat_streams_each_reply_saves_it_and_takes_control_commands(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "Hello there\n/emotion sad 0.9\n/emotion elated\nHow are you?\n/quit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--target", target, "-o", str(tmp_path), "--format", "wav"]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turn-001.wav", "turn-002.wav"]
    assert out.count("tth> ") == 2 and "from the next reply on: emotion=sad, intensity=0.9" in out
    assert "emotion 'elated' is not known" in _one_line(err)  # and the chat went on


def test_an_out_of_range_rate_in_chat_is_one_line_with_the_fix_and_is_never_confirmed(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("/rate 9\n/rate fast\n/persona nobody\n/rate 2\n/quit\n"))
    assert main(["chat", "--target", target]) == 0
    out, err = capsys.readouterr()
    rate, word, persona = _cli_lines(err)
    assert rate == (
        "tth: invalid control value: speech_rate must be in [0.25, 4.0], got 9.0. Fix: type /rate X again; "
        "use a value in [0.25, 4]"
    )
    assert "must be a number in [0.25, 4], got 'fast'" in word
    assert "persona 'nobody' is not known" in persona and "use one of: casual, excited, neutral" in persona
    assert out.count("from the next reply on") == 1 and "speech_rate=2" in out  # only the value that was accepted


def test_models_lists_each_stage_with_its_adapter(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--target", target]) == 0
    out = capsys.readouterr().out
    assert "profile mock" in out
    for stage, adapter in (("llm", "scripted"), ("tts", "tone_tts"), ("avatar", "stub_avatar")):
        assert any(line.split()[:2] == [stage, adapter] for line in out.splitlines())


def test_health_reports_serving_and_exits_zero_through_the_module_entry_point(target: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tth_client.cli", "health", "--target", target], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "(server)" in done.stdout and "SERVING" in done.stdout and "tth.tts" in done.stdout


# ---- on a real terminal, and into a pipe that closes ----------------------------------------------------------------


def _screen(raw: str) -> list[str]:
    """What a terminal shows for `raw`: "\\r" goes back to the line's start, "ESC[2K" blanks the line, other
    escape sequences change nothing visible here."""
    lines: list[list[str]] = [[]]
    col, i = 0, 0
    while i < len(raw):
        if raw.startswith("\x1b[", i):
            end = next(j for j in range(i + 2, len(raw)) if "@" <= raw[j] <= "~")
            if raw[i + 2 : end + 1] == "2K":
                lines[-1] = [" "] * len(lines[-1])
            i = end + 1
            continue
        char = raw[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = char
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in lines]


def _read_until(fd: int, wanted: str, so_far: str, timeout_s: float = 60.0) -> str:
    """`so_far` and what the terminal shows next, until `wanted` is among it."""
    deadline = time.monotonic() + timeout_s
    while wanted not in so_far:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {wanted!r} on the terminal within {timeout_s} s; it shows {_screen(so_far)}")
        so_far += os.read(fd, 65536).decode(errors="replace")
    return so_far


def test_chat_on_a_terminal_shows_the_streamed_reply_and_the_timing_line(target: str) -> None:
    terminal, tty = pty.openpty()
    chat = subprocess.Popen(
        [sys.executable, "-m", "tth_client.cli", "chat", "--target", target], stdin=tty, stdout=tty, stderr=tty
    )
    os.close(tty)
    try:
        raw = _read_until(terminal, "you> ", "")
        os.write(terminal, b"Hello!\n")
        raw = _read_until(terminal, "(ttfa", raw)
        raw = _read_until(terminal, ")\r\n", raw)  # the whole timing line
        os.write(terminal, b"/quit\n")
        assert chat.wait(30) == 0
    finally:
        if chat.poll() is None:
            chat.kill()
        os.close(terminal)
    shown = _screen(raw)
    reply = next((line for line in shown if line.startswith("tth> ")), "")
    assert len(reply) > len("tth> ") + 10, shown  # the reply's text is still on the screen, not erased
    assert shown[shown.index(reply) + 1].startswith("(ttfa "), shown


@pytest.mark.parametrize("command", [["models"], ["health"], ["chat"], ["say", "Hello", "-o", "{tmp}/a.wav"]])
def test_every_command_ends_quietly_when_the_reader_of_its_output_has_gone(
    target: str, tmp_path: Path, command: list[str]
) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # as `tth models | head -1` once head has exited
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tth_client.cli", *(a.format(tmp=tmp_path) for a in command), "--target", target],
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(writer)
    assert done.stderr == ""
    assert done.returncode == 128 + signal.SIGPIPE  # what a shell shows for a command that a closed pipe ended
