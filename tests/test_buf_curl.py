"""`buf curl` works against the server with no proto files: reflection, health, a Converse turn."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

BUF = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "buf"


async def _buf(*args: str, stdin: str | None = None) -> str:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make test` installs buf from npm (npm install)")
    proc = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_buf_curl_lists_services_checks_health_and_runs_a_turn(start_server: ServerFactory) -> None:
    assert shutil.which("node"), "buf from npm needs node"
    server = await start_server(session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000})
    url = f"http://127.0.0.1:{server.port}"
    methods = (await _buf("--list-methods", url)).split()
    assert "tth.v1.ConversationService/Converse" in methods and "grpc.health.v1.Health/Check" in methods
    for service in ("", "tth.v1.ConversationService", "tth.llm", "tth.tts", "tth.avatar"):
        health = json.loads(await _buf("-d", json.dumps({"service": service}), f"{url}/grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}, service
    out = await _buf(
        "-d",
        "@-",
        f"{url}/tth.v1.ConversationService/Converse",
        stdin='{"config": {"personaId": "casual"}}\n{"text": {"text": "Hello!"}}\n',
    )
    decoder, events, pos = json.JSONDecoder(), [], 0
    while pos < len(out.strip()):
        event, end = decoder.raw_decode(out, pos)
        events.append(event)
        pos = end + (len(out[end:]) - len(out[end:].lstrip()))
    arms = [next(k for k in e if k not in ("sessionId", "turnId", "seq")) for e in events]
    assert arms[0] == "started" and arms[-1] == "turnComplete"
    assert {"textDelta", "audio", "video"} <= set(arms)
