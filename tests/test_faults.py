"""Fault injection: a real tiny training SIGKILLed at named points (FPAR_FAULT), then resumed, ends bit-identical to
an uninterrupted run, with no temporary or lock file left. `scripts/fault_matrix.py` runs 20 points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]
CI_POINTS = ["batch:3", "eval:2", "tmp_written:5", "metrics_appended:2"]


def fpar(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FPAR_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("FPAR_FAULT", None)
    if fault:
        env["FPAR_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "fpar", *args], capture_output=True, text=True, env=env, timeout=300)


def train_args(root: Path, out: Path) -> list[str]:
    return ["train", *tiny_args(root), "train.epochs=3", "train.max_batches=2", f"out={out}", "--quiet"]


def outcome(run: Path) -> tuple[dict, list[dict]]:
    weights = torch.load(run / "last.pt", weights_only=True)["model"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time_s")
    return weights, rows


def kill_and_resume(root: Path, out: Path, point: str) -> subprocess.CompletedProcess:
    """Train until the fault kills the process, then continue the way a user would: --resume when last.pt exists,
    else the same train command again. Returns the finishing command's result."""
    killed = fpar(train_args(root, out), fault=point)
    assert killed.returncode == -9, f"{point}: the fault did not fire ({killed.returncode}): {killed.stderr[-500:]}"
    if (out / "last.pt").exists():
        return fpar(["train", "--resume", str(out), "--quiet"])
    return fpar(train_args(root, out))


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    r = fpar(train_args(tiny_root, out))
    assert r.returncode == 0, r.stderr
    return outcome(out)


@pytest.mark.parametrize("point", CI_POINTS)
def test_killed_training_resumes_bit_identical(point, tiny_root, tmp_path, reference):
    out = tmp_path / "run"
    done = kill_and_resume(tiny_root, out, point)
    assert done.returncode == 0, done.stderr[-2000:]
    weights, rows = outcome(out)
    ref_w, ref_rows = reference
    assert all(torch.equal(weights[k], ref_w[k]) for k in ref_w)
    assert rows == ref_rows  # every epoch once, the same numbers
    assert not list(out.glob(".*.tmp")) and not (out / ".fpar.lock").exists()
