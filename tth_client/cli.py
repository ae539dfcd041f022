"""`tth`: talk to a TTH server from a terminal, through the SDK.

    tth say "Hello there" -o hello.mp4 --emotion happy --intensity 0.8
    tth chat -o replies/
    tth models
    tth health

Every failure is one line on stderr that says what to do about it; the exit
status is 2 for a usage or invalid-value error, 1 for any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast

from google.protobuf import json_format

from tth_client._channel import DEFAULT_TARGET, Connection
from tth_client._client import Client
from tth_client._controls import Controls, render_options, turn_control
from tth_client._events import AudioEvent, ErrorEvent, TextDeltaEvent, VideoEvent
from tth_client._exceptions import (
    AuthenticationError,
    ConnectError,
    InvalidArgumentError,
    TimeoutError,
    TTHError,
    TurnFailedError,
    start_server,
)
from tth_client._limits import range_text
from tth_client._media import SUFFIXES, save
from tth_client._session import Session
from tth_client._turn import Turn, TurnResult
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb

# The ranges in the help come from the table the server checks (`_limits.CONTROL_RANGES`).
_CONTROL_FLAGS: dict[str, tuple[str, type]] = {
    "emotion": (
        "emotion label: " + ", ".join(n.removeprefix("EMOTION_LABEL_").lower() for n in cpb.EmotionLabel.keys()[1:]),
        str,
    ),
    "intensity": (f"emotion intensity in {range_text('intensity')}", float),
    "valence": (f"valence in {range_text('valence')}, negative to positive", float),
    "arousal": (f"arousal in {range_text('arousal')}, calm to excited", float),
    "persona": ("persona id (see `tth models`)", str),
    "speech_rate": (f"speaking rate multiplier in {range_text('speech_rate')}", float),
    "pitch_shift": (f"pitch shift in {range_text('pitch_shift')}", float),
    "expressivity": (f"expressivity in {range_text('expressivity')}", float),
    "motion_gain": (f"head motion gain in {range_text('motion_gain')}", float),
}


# ---- output -------------------------------------------------------------------------------------------------------


class _Status:
    """One progress line on stderr, rewritten in place on a terminal and silent elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._last = 0.0
        self._shown = False

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._live and (force or now - self._last > 0.1):
            self._stream.write(f"\r\x1b[2K{text}")
            self._stream.flush()
            self._last, self._shown = now, True

    def done(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._shown = False


def _stage(stage: int) -> str:
    return pb.Stage.Name(stage).removeprefix("STAGE_").lower()  # type: ignore[arg-type]


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def format_metrics(result: TurnResult) -> str:
    """The turn's metrics and control report as a few aligned lines."""
    m = result.metrics
    stages = ", ".join(
        f"{_stage(s.stage)}={s.adapter}{' (fallback)' if s.fallback_used else ''} {_ms(s.first_byte_ms)}"
        for s in m.stages
    )
    lines = [
        f"outcome              {result.outcome.value}",
        f"time to first text   {_ms(m.time_to_first_text_ms)}",
        f"time to first audio  {_ms(m.time_to_first_audio_ms)}",
        f"time to first video  {_ms(m.time_to_first_video_ms)}",
        f"audio                {_ms(m.audio_ms)} at {result.sample_rate_hz} Hz",
        f"frames               {m.frames} ({m.frames_dropped} dropped)",
        f"drift                mean {_ms(m.drift_mean_ms)}, max {_ms(m.drift_max_ms)}",
        f"total                {_ms(m.total_ms)}",
        f"stages               {stages or '-'}",
    ]
    chosen = {
        a.field: f"{a.field}={a.value} ({a.source})" for a in result.control_report.applied if a.source != "default"
    }
    if chosen:
        lines.append(f"controls             {', '.join(chosen[k] for k in sorted(chosen))}")
    downgraded: dict[tuple[str, str], list[str]] = {}
    for d in result.control_report.downgraded:
        downgraded.setdefault((_stage(d.stage), d.reason), []).append(d.field)
    for (stage, reason), names in downgraded.items():
        lines.append(f"downgraded           {stage}: {', '.join(names)}: {reason}")
    return "\n".join(lines)


# How to set each control inside `tth chat`, for the fix of a refused value.
_CHAT_COMMANDS = {
    "emotion": "/emotion LABEL",
    "intensity": "/emotion LABEL X",
    "persona": "/persona ID",
    "speech_rate": "/rate X",
}


def _invalid(error: InvalidArgumentError, chat: bool) -> str:
    """The one line for a refused value, with the fix spelled as a flag, or as a chat command inside `tth chat`."""
    field, hint = error.field, error.hint or "change it"
    if field == "text":
        return f"invalid text: {error.message}. Fix: {hint}"
    if chat and field in _CHAT_COMMANDS:
        fix = f"type {_CHAT_COMMANDS[field]} again; {hint}"
    elif field == "persona":
        fix = "pass --persona with one of the known ids (see `tth models`)"
    elif field in _CONTROL_FLAGS:
        fix = f"pass --{field.replace('_', '-')} again; {hint}"
    else:
        fix = hint
    return f"invalid control value: {error.message}. Fix: {fix}"


def explain(error: TTHError, target: str, *, chat: bool = False) -> str:
    """One line a person can act on; `chat` spells fixes as chat commands where there is one."""
    if isinstance(error, ConnectError):
        return (
            f"cannot reach the TTH server at {target} ({error.details}). Fix: start one with {start_server(target)}, "
            "or pass --target HOST:PORT"
        )
    if isinstance(error, AuthenticationError):
        return f"{target} refused the credentials ({error.details}). Fix: pass --api-key KEY or set TTH_API_KEY"
    if isinstance(error, TimeoutError):
        return f"{error.message}. Fix: raise --timeout, or check that the server is not overloaded"
    if isinstance(error, InvalidArgumentError):
        return _invalid(error, chat)
    return str(error)


# ---- commands -----------------------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    def pem(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    connection = Connection(
        args.target or "",
        api_key=args.api_key,
        tls=args.tls or None,
        root_certificates=pem(args.ca_cert),
        certificate_chain=pem(args.client_cert),
        private_key=pem(args.client_key),
    )
    return Client(connection, timeout_s=args.timeout)


def _controls(args: argparse.Namespace) -> Controls:
    chosen = {name: getattr(args, name) for name in _CONTROL_FLAGS if getattr(args, name) is not None}
    return cast(Controls, chosen)


async def _receive(turn: Turn, status: _Status, on_text: Callable[[str], None] | None = None) -> TurnResult:
    """The turn's result; progress on `status`, unless its text is streamed to `on_text` instead.

    A streamed reply is its own progress, and both share the terminal's line: the
    progress line's erase would wipe the reply as it is written.
    """
    audio_ms, frames = 0.0, 0
    async for event in turn:
        if isinstance(event, AudioEvent):
            audio_ms = event.audio.timestamp_ms + event.audio.duration_ms
        elif isinstance(event, VideoEvent):
            frames += 1
        elif isinstance(event, TextDeltaEvent) and on_text is not None:
            on_text(event.text_delta.text)
        if on_text is None:
            status.update(f"receiving: {audio_ms / 1000:.1f} s of speech, {frames} frames")
    status.done()
    return (await turn).raise_for_outcome()


def _write(result: TurnResult, path: Path, fps: int | None, status: _Status) -> float:
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        status.update(f"rendering {path.name}: {done}/{total} frames", force=done == total)

    save(result, path, fps=fps, progress=progress)
    status.done()
    return time.perf_counter() - started


async def cmd_say(args: argparse.Namespace) -> int:
    out = Path(args.output)
    status = _Status(sys.stderr)
    render = render_options(fps=args.fps, width=args.width, height=args.height)
    portrait = await asyncio.to_thread(Path.read_bytes, Path(args.portrait)) if args.portrait else None
    async with _client(args) as client:
        turn = client.generate(args.text, render=render, portrait=portrait, **_controls(args))
        result = await _receive(turn, status)
    seconds = _write(result, out, args.fps, status)
    print(f"wrote {out} ({result.audio_ms / 1000:.2f} s, {len(result.frames)} frames) in {seconds:.2f} s")
    print(f"reply: {result.text}")
    if args.json:
        print(json.dumps(json_format.MessageToDict(result.metrics), indent=2))
    else:
        print(format_metrics(result))
    return 0


_CHAT_HELP = "commands: /emotion LABEL [INTENSITY], /persona ID, /rate X, /quit"


async def _chat_command(session: Session, line: str) -> bool:
    """Handle a /command; False means quit. The change is confirmed only once the SDK has checked it."""
    name, *rest = line[1:].split() or [""]
    if name in ("quit", "exit", "q"):
        return False
    controls: dict[str, Any] = {}
    if name == "emotion" and rest:
        controls["emotion"] = rest[0]
        if len(rest) > 1:
            controls["intensity"] = rest[1]
    elif name == "persona" and rest:
        controls["persona"] = rest[0]
    elif name == "rate" and rest:
        controls["speech_rate"] = rest[0]
    else:
        print(_CHAT_HELP)
        return True
    try:
        await session.update_controls(**controls)  # a number typed as text is the SDK's to refuse, with its range
    except InvalidArgumentError as exc:
        print(f"tth: {explain(exc, session.target, chat=True)}", file=sys.stderr)
        return True
    print(f"(from the next reply on: {', '.join(f'{k}={v}' for k, v in controls.items())})")
    return True


async def _report_session_errors(session: Session) -> None:
    async for event in session:
        if isinstance(event, ErrorEvent) and not event.turn_id:
            print(f"tth: the server refused that: {event.error.message}", file=sys.stderr)


async def cmd_chat(args: argparse.Namespace) -> int:
    out_dir = Path(args.output) if args.output else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    status = _Status(sys.stderr)
    turn_control(**_controls(args))  # a bad flag stops here, before connecting, rather than at the first reply
    async with _client(args) as client, client.session(persona=args.persona) as session:
        video = session.started.video
        print(f"connected to {client.target}: session {session.session_id}, persona {session.started.persona_name}")
        print(f"type a message and press enter; {_CHAT_HELP}")
        errors = asyncio.get_running_loop().create_task(_report_session_errors(session))
        count = 0
        while True:
            try:
                line = (await asyncio.to_thread(input, "you> ")).strip()
            except EOFError:
                break
            if not line:
                continue
            if line.startswith("/"):
                if not await _chat_command(session, line):
                    break
                continue
            print("tth> ", end="", flush=True)
            try:
                result = await _receive(
                    session.say(line, **_controls(args)), status, lambda t: print(t, end="", flush=True)
                )
            except (TurnFailedError, InvalidArgumentError) as exc:
                print(f"\ntth: {explain(exc, client.target, chat=True)}", file=sys.stderr)
                continue
            print()
            count += 1
            line_end = f"ttfa {_ms(result.metrics.time_to_first_audio_ms)}, {result.audio_ms / 1000:.1f} s"
            if out_dir is not None and args.format != "none":
                path = out_dir / f"turn-{count:03d}.{args.format}"
                _write(result, path, video.fps or None, status)
                line_end += f", saved {path}"
            print(f"({line_end})")
        await session.close()
        errors.cancel()
    return 0


async def cmd_models(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        models = await client.list_models()
    if args.json:
        print(json.dumps(json_format.MessageToDict(models), indent=2))
        return 0
    print(f"profile {models.profile}; personas: {', '.join(models.persona_ids)}")
    rows = [("stage", "adapter", "mode", "health", "model", "fallbacks", "controls")]
    for s in models.stages:
        rows.append(
            (
                pb.Stage.Name(s.stage).removeprefix("STAGE_").lower(),
                s.adapter,
                pb.AdapterMode.Name(s.mode).removeprefix("ADAPTER_MODE_").lower(),
                pb.AdapterHealth.Name(s.health).removeprefix("ADAPTER_HEALTH_").lower()
                + (f" ({s.detail})" if s.detail else ""),
                s.model or "-",
                ", ".join(s.fallbacks) or "-",
                ", ".join(s.capabilities.controls) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


_HEALTH_SERVICES = ("", "tth.v1.ConversationService", "tth.llm", "tth.tts", "tth.avatar", "tth.realtime")


async def cmd_health(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        statuses = {name: await client.health(name) for name in _HEALTH_SERVICES}
    for name, status in statuses.items():
        if status != "SERVICE_UNKNOWN":
            print(f"{name or '(server)':30} {status}")
    return 0 if statuses[""] == "SERVING" else 1


# ---- arguments ----------------------------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--target", help=f"server HOST:PORT (default: TTH_TARGET or {DEFAULT_TARGET})")
    group.add_argument("--api-key", help="API key, sent as a bearer token (default: TTH_API_KEY)")
    group.add_argument("--tls", action="store_true", help="use TLS (implied by --ca-cert)")
    group.add_argument("--ca-cert", metavar="FILE", help="PEM root certificates to trust")
    group.add_argument("--client-cert", metavar="FILE", help="PEM client certificate chain, for mutual TLS")
    group.add_argument("--client-key", metavar="FILE", help="PEM private key of --client-cert")
    group.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds for unary calls (default 30)")
    return common


def _control_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("controls (absent: the persona's or the server's default)")
    for name, (help_text, kind) in _CONTROL_FLAGS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=help_text)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tth", description="Talk to a TTH server: text in, a talking face out.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn, controls = _connection_options(), _control_options()

    say = commands.add_parser("say", parents=[conn, controls], help="run one turn and write it to a file")
    say.add_argument("text", help="what to say to the character")
    say.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="output: .mp4, .wav or .png (a contact sheet)"
    )
    say.add_argument("--fps", type=int, help="video frames per second (default: the server's)")
    say.add_argument("--width", type=int, help="frame width in pixels")
    say.add_argument("--height", type=int, help="frame height in pixels")
    say.add_argument("--json", action="store_true", help="print the metrics as JSON")
    say.add_argument(
        "--portrait", metavar="FILE", help="a JPEG or PNG photo to be the face (a server with the photo avatar)"
    )
    say.set_defaults(run=cmd_say)

    chat = commands.add_parser("chat", parents=[conn, controls], help="talk interactively; each reply is saved")
    chat.add_argument("-o", "--output", metavar="DIR", help="folder for the replies (default: do not save)")
    chat.add_argument("--format", choices=["mp4", "wav", "png", "none"], default="mp4", help="file kind per reply")
    chat.set_defaults(run=cmd_chat)

    models = commands.add_parser("models", parents=[conn], help="list the adapters serving each stage")
    models.add_argument("--json", action="store_true", help="print the raw ListModels response as JSON")
    models.set_defaults(run=cmd_models)

    health = commands.add_parser("health", parents=[conn], help="check the server's and each stage's health")
    health.set_defaults(run=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "say" and Path(args.output).suffix.lower() not in SUFFIXES:
        parser.error(f"-o {args.output}: the file name must end in one of {', '.join(SUFFIXES)}")
    try:
        code: int = asyncio.run(args.run(args))
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe only here
    except TTHError as exc:
        target = args.target or Client().target
        print(f"tth: {explain(exc, target)}", file=sys.stderr)
        invalid = isinstance(exc, InvalidArgumentError) or (
            isinstance(exc, TurnFailedError) and exc.code == "INVALID_ARGUMENT"
        )
        return 2 if invalid else 1
    except BrokenPipeError:
        return _reader_went_away()
    except (OSError, ValueError) as exc:
        print(f"tth: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _reader_went_away() -> int:
    """Exit quietly, as `cat` or `grep` do, when whatever read our output (`| head -1`) stopped reading.

    Python ignores SIGPIPE, so the write fails instead of killing us; the output
    still buffered must not be flushed again at exit, or Python reports the broken
    pipe itself. 141 is what a shell reports for a command that SIGPIPE ended.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
