"""Which generated Python code should the SDK ride on? protobuf (upb) + mypy-protobuf, or betterproto2.

Measures, for the same protos/tth/v1:

- import time of the generated messages, in fresh interpreters (median of N);
- per-event decode cost of a `ConverseResponse` carrying a 40 ms audio chunk
  (24 kHz PCM16) and one carrying a 256x256 JPEG frame: parse alone, then parse
  plus reaching the oneof arm and its bytes (what every consumer does), and for
  protobuf the SDK's own event wrapper on top;
- encode cost of a `ConverseRequest` with text and controls;
- with --live, that betterproto2 messages ride on a grpc.aio channel with their
  own serializers: one Generate turn against an in-process mock server.

betterproto 1.x is not measured: it cannot generate client-streaming calls, and
`Converse` is bidirectional. betterproto2 is optional here:

    pip install 'betterproto2==0.10.*' 'betterproto2_compiler==0.10.*'   # or --target DIR, then:
    python bench/bench_sdk_codegen.py [--betterproto2-path DIR] [--live]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


# ---- sample messages ----------------------------------------------------------------------------------------------


def _jpeg(size: int = 256) -> bytes:
    """A 256x256 JPEG with a face-like ellipse and some texture (about the size real frames have)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(7)
    base = rng.integers(40, 60, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    draw.ellipse((48, 24, 208, 232), fill=(224, 188, 160))
    draw.rectangle((96, 160, 160, 184), fill=(90, 20, 30))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def samples() -> dict[str, bytes]:
    """Serialized responses and a request, made with the protobuf classes (the wire format is the same for both)."""
    from tth_client.v1 import controls_pb2 as cpb
    from tth_client.v1 import conversation_pb2 as pb
    from tth_client.v1 import media_pb2 as mpb

    audio = pb.ConverseResponse(
        session_id="s-0123456789abcdef",
        turn_id="t-0123456789ab",
        seq=42,
        audio=mpb.AudioChunk(data=bytes(1920), sample_rate_hz=24_000, timestamp_ms=1240.0, duration_ms=40.0),
    )
    video = pb.ConverseResponse(
        session_id="s-0123456789abcdef",
        turn_id="t-0123456789ab",
        seq=43,
        video=mpb.VideoFrame(
            data=_jpeg(), encoding=mpb.VIDEO_ENCODING_JPEG, width=256, height=256, frame_index=31, timestamp_ms=1240.0
        ),
    )
    control = cpb.TurnControl(
        emotion=cpb.EmotionControl(label=cpb.EMOTION_LABEL_HAPPY, intensity=0.7),
        character=cpb.CharacterControl(speech_rate=1.1),
    )
    request = pb.ConverseRequest(text=pb.UserText(text="Hello there, how are you today?", control=control))
    return {
        "audio": audio.SerializeToString(),
        "video": video.SerializeToString(),
        "request": request.SerializeToString(),
    }


# ---- betterproto2 code --------------------------------------------------------------------------------------------


def generate_betterproto2(out: Path, extra_path: str | None) -> bool:
    """Generate betterproto2 code for protos/tth/v1 into out/bp2gen (a package); False when the compiler is missing."""
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    probe = subprocess.run([sys.executable, "-c", "import betterproto2_compiler"], env=env, capture_output=True)
    if probe.returncode != 0:
        return False
    plugin = out / "protoc-gen-python_betterproto2"
    plugin.write_text(f"#!{sys.executable}\nfrom betterproto2_compiler.plugin import main\nmain()\n")
    plugin.chmod(0o755)
    package = out / "bp2gen"
    package.mkdir()
    # The compiler formats its output with ruff, which lives beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    protos = [str(p.relative_to(PROTOS)) for p in sorted((PROTOS / "tth" / "v1").glob("*.proto"))]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--plugin=protoc-gen-python_betterproto2={plugin}",
            f"--python_betterproto2_out={package}",
            "--python_betterproto2_opt=client_generation=none",
            *protos,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"betterproto2 generation failed:\n{done.stderr}")
    return True


def generate_protobuf(out: Path) -> None:
    """Plain protoc output for protos/tth/v1 (package `tth.v1`), to time its import without the SDK around it."""
    from grpc_tools import protoc

    protos = [str(p.relative_to(PROTOS)) for p in sorted((PROTOS / "tth" / "v1").glob("*.proto"))]
    if protoc.main(["protoc", f"-I{PROTOS}", f"--python_out={out}", *protos]) != 0:
        raise SystemExit("protoc failed")


# ---- measurements -------------------------------------------------------------------------------------------------


def import_ms(statement: str, path: list[str], runs: int) -> float:
    """Median milliseconds to run `statement` (an import) in a fresh interpreter."""
    code = f"import time\nt = time.perf_counter()\n{statement}\nprint((time.perf_counter() - t) * 1000)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]))
    times = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{statement!r} failed:\n{done.stderr}")
        times.append(float(done.stdout))
    return statistics.median(times)


def per_call_us(function: Callable[[], Any], number: int = 20_000) -> float:
    """Best of 5 runs, in microseconds per call."""
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def measure_protobuf(data: dict[str, bytes]) -> dict[str, float]:
    from tth_client._events import event_from_response
    from tth_client.v1 import controls_pb2 as cpb
    from tth_client.v1 import conversation_pb2 as pb

    parse = pb.ConverseResponse.FromString

    def use(raw: bytes) -> bytes:
        message = parse(raw)
        arm = message.WhichOneof("event")
        payload: Any = getattr(message, arm or "audio")
        return bytes(payload.data)

    def wrap(raw: bytes) -> bytes:
        event: Any = event_from_response(parse(raw))
        return bytes(getattr(event, event.type).data)

    def encode() -> bytes:
        control = cpb.TurnControl(
            emotion=cpb.EmotionControl(label=cpb.EMOTION_LABEL_HAPPY, intensity=0.7),
            character=cpb.CharacterControl(speech_rate=1.1),
        )
        return pb.ConverseRequest(
            text=pb.UserText(text="Hello there, how are you today?", control=control)
        ).SerializeToString()

    return {
        "parse audio": per_call_us(lambda: parse(data["audio"])),
        "parse video": per_call_us(lambda: parse(data["video"])),
        "parse+use audio": per_call_us(lambda: use(data["audio"])),
        "parse+use video": per_call_us(lambda: use(data["video"])),
        "parse+SDK event audio": per_call_us(lambda: wrap(data["audio"])),
        "parse+SDK event video": per_call_us(lambda: wrap(data["video"])),
        "encode request": per_call_us(encode),
    }


def measure_betterproto2(data: dict[str, bytes]) -> dict[str, float]:
    import betterproto2
    import bp2gen.tth.v1 as bp  # type: ignore[import-not-found]

    parse = bp.ConverseResponse.parse

    def use(raw: bytes) -> bytes:
        message = parse(raw)
        _arm, payload = betterproto2.which_one_of(message, "event")
        return bytes(payload.data)

    def encode() -> bytes:
        control = bp.TurnControl(
            emotion=bp.EmotionControl(label=bp.EmotionLabel.HAPPY, intensity=0.7),
            character=bp.CharacterControl(speech_rate=1.1),
        )
        return bytes(bp.ConverseRequest(text=bp.UserText(text="Hello there, how are you today?", control=control)))

    assert bp.ConverseRequest.parse(data["request"]).text.control.character.speech_rate is not None
    return {
        "parse audio": per_call_us(lambda: parse(data["audio"]), 5_000),
        "parse video": per_call_us(lambda: parse(data["video"]), 5_000),
        "parse+use audio": per_call_us(lambda: use(data["audio"]), 5_000),
        "parse+use video": per_call_us(lambda: use(data["video"]), 5_000),
        "encode request": per_call_us(encode, 5_000),
    }


async def live_betterproto2_turn() -> tuple[int, dict[str, int]]:
    """One Generate turn against an in-process mock server, decoded by betterproto2 on a grpc.aio channel."""
    import betterproto2
    import bp2gen.tth.v1 as bp  # type: ignore[import-not-found]
    import grpc

    from tth_server.config import load_config
    from tth_server.server import serve

    server = await serve(load_config("mock", env={}, overrides={"log": {"level": "warning"}}), "127.0.0.1:0")
    kinds: dict[str, int] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            generate = channel.unary_stream(
                "/tth.v1.ConversationService/Generate",
                request_serializer=bytes,
                response_deserializer=bp.GenerateResponse.parse,
            )
            async for response in generate(bp.GenerateRequest(text="Hello from betterproto2")):
                arm, _ = betterproto2.which_one_of(response, "event")
                kinds[arm] = kinds.get(arm, 0) + 1
    finally:
        await server.stop(0)
    return sum(kinds.values()), kinds


# ---- report -------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betterproto2-path", help="a folder holding betterproto2 and its compiler (pip --target)")
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per import measurement")
    parser.add_argument("--live", action="store_true", help="also run one Generate turn decoded by betterproto2")
    args = parser.parse_args()

    data = samples()
    print(
        f"python {sys.version.split()[0]}; audio message {len(data['audio'])} B, video message {len(data['video'])} B"
    )
    with tempfile.TemporaryDirectory() as tmp:
        have_bp2 = generate_betterproto2(Path(tmp), args.betterproto2_path)
        (Path(tmp) / "pb").mkdir()
        generate_protobuf(Path(tmp) / "pb")
        path = [str(ROOT)]
        if have_bp2:
            path = [tmp, *([args.betterproto2_path] if args.betterproto2_path else []), *path]
            sys.path[:0] = path

        print("\nimport time, fresh interpreter, median ms")
        rows = [
            ("grpc (both ride on grpc.aio)", "import grpc", path),
            ("protobuf: tth.v1.conversation_pb2 (upb)", "import tth.v1.conversation_pb2", [f"{tmp}/pb"]),
            ("protobuf: the whole SDK (import tth_client)", "import tth_client", path),
        ]
        if have_bp2:
            rows.append(("betterproto2: bp2gen.tth.v1", "import bp2gen.tth.v1", path))
        for label, statement, where in rows:
            print(f"  {label:45} {import_ms(statement, where, args.runs):8.1f}")

        print("\nper call, best of 5, microseconds")
        pb_numbers = measure_protobuf(data)
        bp_numbers = measure_betterproto2(data) if have_bp2 else {}
        print(f"  {'':28} {'protobuf (upb)':>15} {'betterproto2':>13}")
        for name, value in pb_numbers.items():
            other = f"{bp_numbers[name]:13.2f}" if name in bp_numbers else f"{'-':>13}"
            print(f"  {name:28} {value:15.2f} {other}")
        if not have_bp2:
            print("\nbetterproto2 not measured: install betterproto2 and betterproto2_compiler (see the docstring)")
        elif args.live:
            count, kinds = asyncio.run(live_betterproto2_turn())
            print(f"\nlive: betterproto2 on grpc.aio decoded one Generate turn, {count} events: {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
