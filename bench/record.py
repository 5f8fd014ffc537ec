"""How a benchmark run is kept: one dated section appended to docs/benchmarks.md, naming the machine and the
exact command, so that every figure there can be reproduced. Every script in bench/ records through here."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine_name(device: str = "cpu") -> str:
    name = f"{platform.machine()}, {os.cpu_count()} cores"
    if device == "cuda":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            name += f", {gpu}"
        except (OSError, subprocess.SubprocessError):
            name += ", GPU unknown"
    return name


def record_run(title: str, details: str, body: str, device: str = "cpu") -> None:
    """Append `### {title} — {date}, {machine}, {device}`, the command line with `details` after it, and `body`."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    with open(BENCHMARKS, "a") as f:
        f.write(f"\n### {title} — {stamp}, {machine_name(device)}, {device.upper()}\n\n"
                f"Command: `{command}`{'; ' + details if details else ''}.\n\n{body}\n")
