"""A fake ElevenLabs API on 127.0.0.1, written from ElevenLabs' "Stream speech" reference.

`POST /v1/text-to-speech/{voice_id}/stream?output_format=pcm_24000` with the key
in `xi-api-key` and a JSON body `{text, model_id, voice_settings}` answers with
raw s16le mono PCM at the requested rate, chunked. It validates voice_settings
(stability, similarity_boost and style in [0, 1]; speed in [0.7, 1.2]) with a
422, and sends errors as `{"detail": {"status", "message"}}`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHTTPServer, FakeProvider, Faults, Request, Responder, hang_forever

KEY = "sk_test0123456789fakeelevenlabskey"
_STATUS = {401: "invalid_api_key", 429: "too_many_concurrent_requests", 500: "internal_error", 400: "invalid_request"}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"detail": {"status": _STATUS.get(status, "error"), "message": message}}


@dataclass
class FakeElevenLabs(FakeProvider):
    key: str = KEY
    split: int = 0
    piece: int = 3001  # odd: pieces split samples
    faults: Faults = field(default_factory=lambda: Faults(times=0))
    calls: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    server: FakeHTTPServer | None = None

    async def _handle(self, request: Request, r: Responder) -> None:
        parts = request.path.strip("/").split("/")
        if request.method != "POST" or len(parts) != 4 or parts[:2] != ["v1", "text-to-speech"] or parts[3] != "stream":
            await r.json(404, {"detail": "Not Found"})
            return
        if request.headers.get("xi-api-key") != self.key:
            await r.json(401, _error(401, "Invalid API key"))
            return
        body = request.json()
        self.bodies.append(body)
        self.queries.append(request.query)
        self.paths.append(request.path)
        fmt = request.query.get("output_format", "mp3_44100_128")
        if not fmt.startswith("pcm_"):
            await r.json(400, _error(400, "this fake serves pcm output formats only"))
            return
        problems = _validate(body)
        if problems:
            await r.json(
                422,
                {"detail": [{"loc": ["body", *p.split(" ")[:1]], "msg": p, "type": "value_error"} for p in problems]},
            )
            return
        number, self.calls = self.calls, self.calls + 1
        faults = self.faults if self.faults.active(number) else Faults(times=0)
        if faults.hang:
            await hang_forever()
        if faults.status:
            headers = {"retry-after": faults.retry_after} if faults.retry_after else {}
            await r.json(faults.status, _error(faults.status, "injected failure"), headers)
            return
        rate = int(fmt.removeprefix("pcm_"))
        n = int(rate * len(body["text"]) * 0.02)
        pcm = b"".join(struct.pack("<h", int(6000 * math.sin(2 * math.pi * 180 * i / rate))) for i in range(n))
        await r.head(200, {"Content-Type": "audio/pcm"}, chunked=True)
        for i, start in enumerate(range(0, len(pcm), self.piece)):
            if faults.drop_after == i:
                r.drop()
                return
            await r.chunk(pcm[start : start + self.piece])
        await r.end()


def _validate(body: dict[str, Any]) -> list[str]:
    problems = []
    if not body.get("text"):
        problems.append("text is required")
    settings = body.get("voice_settings") or {}
    for name in ("stability", "similarity_boost", "style"):
        if name in settings and not 0.0 <= float(settings[name]) <= 1.0:
            problems.append(f"{name} must be in [0, 1]")
    if "speed" in settings and not 0.7 <= float(settings["speed"]) <= 1.2:
        problems.append("speed must be in [0.7, 1.2]")
    return problems
