"""The training log: one JSON object per line in OUTPUT_DIR/train_log.jsonl, mirrored to TensorBoard.

Step lines carry loss, accuracy, lr, grad_norm and pairs_per_s; evaluation lines carry dev_loss and
dev_accuracy. The evaluation report (training/report.py) draws its training curves from this file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LOG_FILE = "train_log.jsonl"


class TrainLog:
    def __init__(self, output_dir: Path, tensorboard: bool = True, resumed: bool = False):
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / LOG_FILE
        # A resumed run continues its log; a new run in the same directory starts a new one.
        self._file = open(self.path, "a" if resumed else "w", encoding="utf-8")
        self._writer = None
        if tensorboard:
            try:  # optional: torch's writer needs the tensorboard package
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                self._writer = None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every record of a training log; an unreadable line is skipped (a run killed mid-write)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
