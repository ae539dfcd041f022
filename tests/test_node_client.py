"""Other languages and tools from the same contract: a Node.js client built from the .proto files completes a
Converse turn, and `buf generate` (buf.gen.yaml, local plugins only) makes the SDK's generated code exactly."""

from __future__ import annotations

import asyncio
import filecmp
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "clients" / "node"
BUF = ROOT / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def node_client() -> Path:
    """The client folder with its dependencies installed from the npm registry (`npm ci`) when missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the Node.js client test needs Node 18 or later on PATH")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not; run `npm ci` in clients/node")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"npm ci failed in clients/node:\n{done.stderr}"
    return NODE_CLIENT


async def test_a_node_client_built_from_the_protos_completes_a_converse_turn(
    node_client: Path, start_server: ServerFactory
) -> None:
    server = await start_server(session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000})
    process = await asyncio.create_subprocess_exec(
        "node",
        str(node_client / "converse.js"),
        f"127.0.0.1:{server.port}",
        "Hello from Node",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()

    summary = json.loads(out)
    events = summary["events"]
    assert events["started"] == 1 and events["turn_complete"] == 1
    assert events["media"] > 0 and "audio" not in events and "video" not in events  # it asks for batches
    assert summary["audio_ms"] > 0 and summary["outcome"] == "completed" and summary["text"]
    assert summary["metrics"]["frames"] == summary["frames"]


def test_buf_generate_with_local_plugins_makes_the_same_code_as_gen_protos(tmp_path: Path) -> None:
    if not BUF.exists() or shutil.which("node") is None:
        pytest.fail(f"buf from npm is needed at {BUF}, with node on PATH: `make test` installs it (npm install)")
    done = subprocess.run([str(BUF), "generate", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stderr, done.stderr

    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)
    gen_protos.generate(tmp_path / "gen_protos")

    made, canonical = tmp_path / "tth_client" / "v1", tmp_path / "gen_protos"
    names = sorted(p.name for p in canonical.iterdir())
    assert sorted(p.name for p in made.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(made, canonical, names, shallow=False)
    assert mismatch == [] and errors == []
