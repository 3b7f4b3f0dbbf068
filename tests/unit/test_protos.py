"""The committed generated gRPC code matches the .proto files (run `make protos` when this fails)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_generated_code_is_up_to_date(tmp_path):
    protos = sorted((REPO / "protos" / "montessori" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "protos"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "montessori" / "v1").glob("*.py*"))
    assert generated, "protoc produced nothing"
    for relative in generated:
        committed = REPO / relative
        assert committed.is_file(), f"{relative} is missing: run make protos"
        assert committed.read_text() == (tmp_path / relative).read_text(), f"{relative} is stale: run make protos"
    committed_files = sorted(p.relative_to(REPO) for p in (REPO / "montessori" / "v1").glob("*_pb2*.py*"))
    assert committed_files == generated


def test_field_docs_are_up_to_date(tmp_path):
    """montessori/v1/field_docs.py (the settings' help text) is what protos/field_docs.py makes of the comments."""
    out = tmp_path / "field_docs.py"
    subprocess.run([sys.executable, str(REPO / "protos" / "field_docs.py"), str(out)], check=True)
    committed = REPO / "montessori" / "v1" / "field_docs.py"
    assert committed.read_text() == out.read_text(), "montessori/v1/field_docs.py is stale: run make protos"


def test_settings_classes_are_up_to_date(tmp_path):
    """montessori/v1/settings.py (the settings dataclasses) is what protos/settings_classes.py makes of the protos."""
    out = tmp_path / "settings.py"
    subprocess.run([sys.executable, str(REPO / "protos" / "settings_classes.py"), str(out)], check=True)
    committed = REPO / "montessori" / "v1" / "settings.py"
    assert committed.read_text() == out.read_text(), "montessori/v1/settings.py is stale: run make protos"


def test_every_message_and_field_is_documented():
    for proto in (REPO / "protos" / "montessori" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            is_element = stripped.startswith(("message ", "service ", "enum ", "rpc ")) or (
                " = " in stripped
                and stripped.endswith(";")
                and not stripped.startswith(("syntax", "package", "option"))
            )
            if is_element:
                assert lines[number - 1].strip().startswith("//"), f"{proto.name}:{number + 1} undocumented: {stripped}"
