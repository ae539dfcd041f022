"""Generate the Python code for the TTH protos, or check that it is fresh.

One command makes every generated file from `protos/`:

    python scripts/gen_protos.py            # write tth_client/v1/
    python scripts/gen_protos.py --check    # exit 1 when tth_client/v1/ is stale

protoc names Python modules after the proto package (`tth.v1`); the generated
modules live in the SDK as `tth_client.v1`, so imports are rewritten to match.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("tth") / "v1"
OUT_DIR = ROOT / "tth_client" / "v1"
HEADER = '"""Generated from protos/tth/v1 by scripts/gen_protos.py. Do not edit."""\n'
_IMPORT = re.compile(r"^from tth\.v1 import ", re.MULTILINE)
_GRPC_VERSION_CHECK = re.compile(r"\nGRPC_GENERATED_VERSION = .*?\n\n\n", re.DOTALL)


def _protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def generate(out_dir: Path) -> None:
    """Run protoc for every .proto file and write the rewritten modules to out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    # The mypy plugins are console scripts installed beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{_protoc_include()}",
            f"--python_out={raw}",
            f"--grpc_python_out={raw}",
            f"--mypy_out={raw}",
            f"--mypy_grpc_out={raw}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted((Path(raw) / PACKAGE_DIR).iterdir()):
            text = _IMPORT.sub("from tth_client.v1 import ", src.read_text())
            # The grpc plugin pins the grpcio version it was run with; the package's
            # own dependency bound does that job, so generated code stays portable.
            text = _GRPC_VERSION_CHECK.sub("\n\n", text)
            text = re.sub(r"\nif _version_not_supported:.*?\n\n\n", "\n\n", text, flags=re.DOTALL)
            (out_dir / src.name).write_text(HEADER + text if src.suffix == ".py" else text)
        (out_dir / "__init__.py").write_text(HEADER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    args = parser.parse_args()
    if not args.check:
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        generate(OUT_DIR)
        print(f"generated {OUT_DIR.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want = sorted(p.name for p in fresh.iterdir())
        have = sorted(p.name for p in OUT_DIR.iterdir() if p.is_file()) if OUT_DIR.exists() else []
        stale = [n for n in want if n not in have or not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False)]
        extra = [n for n in have if n not in want]
    if stale or extra:
        print(f"generated code is stale: {', '.join(stale + extra)}; run `make proto`", file=sys.stderr)
        return 1
    print("generated code is fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
