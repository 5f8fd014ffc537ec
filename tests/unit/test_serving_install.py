"""service/ must work on a serving install: it never imports torch or transformers."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import service

ROOT = Path(__file__).resolve().parents[2]


def test_service_modules_import_neither_torch_nor_transformers():
    modules = [f"service.{m.name}" for m in pkgutil.iter_modules(service.__path__)]
    assert "service.http_app" in modules and "service.cli" in modules
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from service.cli import build_parser\n"
        "build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_source_file_in_service_mentions_a_torch_import():
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path
        assert "import transformers" not in text and "from transformers" not in text, path
