#!/usr/bin/env python3
"""A protoc plugin that writes what `scripts/gen_protos.py` writes, so `buf generate` (buf.gen.yaml) can make it.

buf compiles the protos and hands them over as descriptors; this plugin runs the
grpcio-tools protoc (a Python module, not a binary) on those descriptors with the
same four generators as gen_protos.py (python, grpc_python, mypy, mypy_grpc), then
applies gen_protos.py's own rewrites. Output paths are relative to the `out` folder
of buf.gen.yaml (`tth_client`), so the files land in tth_client/v1/.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_protos  # the patterns are gen_protos.py's own, not copies


def _without_implied_json_names(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    # buf (like protoc) fills json_name in plugin requests; protoc parsing the .proto does not
    # record it, and the generated _pb2.py embeds the descriptor, so drop it to match byte for byte.
    def clear(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            clear(nested)

    for file in files:
        for message in file.message_type:
            clear(message)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    files = list(request.proto_file)
    _without_implied_json_names(files)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as raw:
        descriptors = Path(raw) / "descriptors.binpb"
        descriptors.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
        out = Path(raw) / "out"
        out.mkdir()
        args = [
            "protoc",
            f"--descriptor_set_in={descriptors}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *request.file_to_generate,
        ]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed on the descriptors buf sent"
            return response
        for src in sorted((out / gen_protos.PACKAGE_DIR).iterdir()):
            response.file.add(name=f"v1/{src.name}", content=_rewrite(src))
        response.file.add(name="v1/__init__.py", content=gen_protos.HEADER)
    return response


def _rewrite(src: Path) -> str:
    """gen_protos.py's rewrites, with its own patterns (tests/test_node_client.py checks the output is identical)."""
    text = gen_protos._IMPORT.sub("from tth_client.v1 import ", src.read_text())
    text = gen_protos._GRPC_VERSION_CHECK.sub("\n\n", text)
    text = re.sub(r"\nif _version_not_supported:.*?\n\n\n", "\n\n", text, flags=re.DOTALL)
    return gen_protos.HEADER + text if src.suffix == ".py" else text


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
