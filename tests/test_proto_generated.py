"""The checked-in generated code is exactly what proto/ generates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_proto_sources(tmp_path: Path) -> None:
    generator = _load_generator()
    written = generator.generate(tmp_path)
    assert written, "no proto files generated"
    checked_in = ROOT / "tailrunner" / "proto"
    fresh = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(checked_in)
        for p in checked_in.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh == committed, "generated files differ from the checked-in set"
    stale = [
        str(rel)
        for rel in sorted(fresh)
        if (tmp_path / rel).read_bytes() != (checked_in / rel).read_bytes()
    ]
    assert not stale, f"run `python tools/gen_proto.py`: these differ from proto/: {stale}"
