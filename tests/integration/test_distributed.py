"""Data-parallel training: 2 processes under torchrun (gloo, CPU) end where 1 process does."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from tests.integration.server import ROOT  # noqa: E402
from tests.unit.test_train_loop import max_diff, mixed_rows, weights, write_rows  # noqa: E402
from tests.unit.test_train_smoke import tiny_base  # noqa: E402,F401 - fixture


def cli_args(base, data, out):
    return ["train", "--output-dir", str(out), "--base-model", str(base), "--train-data", str(data),
            "--dev-data", str(data), "--max-length", "32", "--batch-size", "4", "--max-steps", "5",
            "--learning-rate", "1e-2", "--warmup-ratio", "0.25", "--center-rewards", "0.1", "--threads", "1",
            "--no-progress", "--no-tensorboard", "--device", "cpu"]


def test_two_gloo_processes_match_one_process(tiny_base, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows(18))  # 18 rows, 5 steps: one step has 2 rows, one per rank
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "rmserve.cli", *cli_args(tiny_base, data, tmp_path / "one")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "rmserve.cli", *cli_args(tiny_base, data, tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "on 2 × cpu" in ddp.stdout and ddp.stdout.count("checkpoint written") == 1  # only rank 0 writes
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5
