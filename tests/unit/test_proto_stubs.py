"""The committed gRPC stubs are exactly what `make proto` generates from proto/ (pinned grpcio-tools)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["proto_generate"] = module
    spec.loader.exec_module(module)
    for path in module.generate(tmp_path):
        committed = ROOT / "proto" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make proto`"


def test_every_proto_field_is_commented():
    lines = (ROOT / "proto" / "rmserve" / "v1" / "reward.proto").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "package", "option"))
        if is_field:
            above = lines[i - 1].strip()
            assert above.startswith("//"), f"reward.proto line {i + 1} has no comment: {stripped}"
