"""Fault injection: a real tiny training SIGKILLed at named points (FPAR_FAULT), then resumed, ends bit-identical to
an uninterrupted run, with no temporary or lock file left. `scripts/fault_matrix.py` runs 20 points, evaluation
included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_forked, tiny_args

ROOT = Path(__file__).resolve().parents[1]
CI_POINTS = ["batch:3", "tmp_written:5", "metrics_appended:2"]  # eval:N and 16 more: scripts/fault_matrix.py


def finish(args: list[str]) -> tuple[int, str]:
    """Run the finishing command in this process (the kill needs a process of its own; the resume does not)."""
    import contextlib
    import io

    from fpar.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()


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


def kill_and_resume(root: Path, out: Path, point: str, *, in_process: bool = True) -> tuple[int, str]:
    """Train until the fault kills the process, then continue the way a user would: --resume when last.pt exists,
    else the same train command again. Returns the finishing command's exit code and stderr."""
    code, err = run_forked(train_args(root, out), {"FPAR_FAULT": point, "FPAR_THREADS": "1"})
    assert code == -9, f"{point}: the fault did not fire ({code}): {err[-500:]}"
    args = ["train", "--resume", str(out), "--quiet"] if (out / "last.pt").exists() else train_args(root, out)
    if in_process:
        return finish(args)
    r = fpar(args)
    return r.returncode, r.stderr


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    rc, err = finish(train_args(tiny_root, out))
    assert rc == 0, err
    return outcome(out)


@pytest.mark.parametrize("point", CI_POINTS)
def test_killed_training_resumes_bit_identical(point, tiny_root, tmp_path, reference):
    out = tmp_path / "run"
    rc, err = kill_and_resume(tiny_root, out, point)
    assert rc == 0, err[-2000:]
    weights, rows = outcome(out)
    ref_w, ref_rows = reference
    assert all(torch.equal(weights[k], ref_w[k]) for k in ref_w)
    assert rows == ref_rows  # every epoch once, the same numbers
    assert not list(out.glob(".*.tmp")) and not (out / ".fpar.lock").exists()
