"""Regenerate the Python code for every .proto under protos/dualflow/.

Run `python protos/generate.py` after editing a .proto; the generated modules
are committed, and tests/unit/test_generated_code.py fails when they are stale.
`generate(out_dir)` writes elsewhere so that test can compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("dualflow/**/*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # a dev dependency, imported late on purpose

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(PROTO_ROOT)
    print(f"generated {len(proto_files())} proto file(s) under {PROTO_ROOT}", file=sys.stderr)
