"""The committed protobuf/gRPC modules are exactly what protos/generate.py makes from the .proto files.

A .proto edited without regenerating (or regenerated with another grpcio-tools)
fails here, naming the stale file and the command that fixes it.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dualflow_protos_generate", PROTOS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in sorted(root.glob("dualflow/**/*"))
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    generator = _load_generator()
    assert generator.proto_files(), "no .proto files found under protos/dualflow"
    generator.generate(tmp_path)

    fresh = _generated(tmp_path)
    committed = _generated(PROTOS)
    # Every .proto yields all three modules.
    assert len(fresh) == 3 * len(generator.proto_files()), sorted(fresh)
    fix = "run `python protos/generate.py` and commit the result"

    missing = sorted(set(fresh) - set(committed))
    assert not missing, f"generated file(s) not committed: {', '.join('protos/' + m for m in missing)}; {fix}"
    orphans = sorted(set(committed) - set(fresh))
    assert not orphans, f"committed generated file(s) with no .proto: {', '.join('protos/' + o for o in orphans)}"

    for name, path in fresh.items():
        new = path.read_text()
        old = committed[name].read_text()
        if new != old:
            diff = "".join(list(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"committed protos/{name}", tofile="regenerated",
            ))[:40])
            raise AssertionError(f"protos/{name} is stale: {fix}\n{diff}")
