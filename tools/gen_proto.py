"""Generate tailrunner/proto/ from proto/ (protobuf, gRPC and mypy stubs).

Run ``python tools/gen_proto.py`` after changing a ``.proto`` file; the test
``tests/test_proto_generated.py`` runs the same generation into a temporary
directory and fails when the checked-in code differs.

protoc names Python modules after the proto path (``tailrunner/v1/…`` gives
``tailrunner.v1``); the generated code lives under ``tailrunner.proto``, so
the imports are rewritten to ``tailrunner.proto.v1``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = ROOT / "tailrunner" / "proto"

_IMPORT = re.compile(r"\bfrom tailrunner\.v1 import\b")
_IMPORT_STUB = re.compile(r"\bimport tailrunner\.v1\.")
_QUALIFIED = re.compile(r"\btailrunner\.v1\.(\w+_pb2)\b")


def generate(out_dir: Path) -> list[Path]:
    """Generate the Python modules for every proto file into ``out_dir``.

    :returns: the files written, relative to ``out_dir``.
    """
    import grpc_tools  # a dev dependency, imported only here
    from grpc_tools import protoc

    # The well-known types (google/protobuf/timestamp.proto …) ship with grpc_tools;
    # google/rpc/status.proto ships with googleapis-common-protos, beside its
    # generated module (a dependency of grpcio-status).
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    from google.rpc import status_pb2

    googleapis = Path(status_pb2.__file__).resolve().parent.parent.parent
    if not (googleapis / "google" / "rpc" / "status.proto").is_file():
        raise SystemExit(f"google/rpc/status.proto is not in {googleapis}")

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as extra:
        # googleapis-common-protos ships google.longrunning's source as
        # operations_proto.proto, but its modules register it (and so its
        # importers must name it) as google/longrunning/operations.proto.
        longrunning = Path(extra) / "google" / "longrunning"
        longrunning.mkdir(parents=True)
        shutil.copyfile(
            googleapis / "google" / "longrunning" / "operations_proto.proto",
            longrunning / "operations.proto",
        )
        # The mypy-protobuf plugins sit beside this interpreter, which need
        # not be on PATH (a venv used without activating it).
        bindir = Path(sys.executable).parent
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"-I{extra}",
            f"-I{googleapis}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")
        written: list[Path] = []
        generated_root = Path(tmp) / "tailrunner"
        for src in sorted(generated_root.rglob("*")):
            if not src.is_file():
                continue
            rel = src.relative_to(generated_root)
            text = src.read_text()
            text = _IMPORT.sub("from tailrunner.proto.v1 import", text)
            text = _IMPORT_STUB.sub("import tailrunner.proto.v1.", text)
            text = _QUALIFIED.sub(r"tailrunner.proto.v1.\1", text)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            written.append(rel)
    for pkg in {out_dir / rel.parent for rel in written} | {out_dir}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by tools/gen_proto.py; do not edit."""\n')
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="output directory")
    args = parser.parse_args()
    out: Path = args.out
    # Generated aside first: a failure (grpc_tools missing, a bad .proto)
    # must leave the package's generated code as it was.
    with tempfile.TemporaryDirectory() as staged:
        written = generate(Path(staged))
        if out == PACKAGE_DIR and out.exists():
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
        shutil.copytree(staged, out, dirs_exist_ok=True)
    for rel in written:
        print(out / rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
