"""Several processes (DistributedDataParallel on gloo, CPU): the same run as one process, rank 0 alone writes, and a
2-process run killed mid-epoch resumes bit-identically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from fpar.engine.distributed import GlobalBatchSampler, ShardSampler, epoch_order

STAGE1 = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage1.yaml"
RUN_FILES = {"best.pt", "config.yaml", "confusion.csv", "last.pt", "metrics.jsonl", "provenance.json", "summary.json"}


def test_global_batches_are_the_one_process_batches_cut_in_shards():
    """World 1 gives exactly a shuffling DataLoader's batches (same generator); world N cuts each of them into N
    shards that partition it, and a rank left out of a short last batch gets a sample that counts 0 times."""
    n, b = 23, 4
    g = torch.Generator()
    g.manual_seed(1234)
    one = [x.tolist() for x in DataLoader(list(range(n)), batch_size=b, shuffle=True, generator=g)]
    g.manual_seed(1234)
    order = epoch_order(n, g)
    assert GlobalBatchSampler(order, b, 0, 1).batches == one
    for world in (2, 3, 5):
        shards = [GlobalBatchSampler(order, b, r, world) for r in range(world)]
        for k, batch in enumerate(one):
            own = [s.batches[k][: s.plan[k][0]] for s in shards]
            assert sorted(x for o in own for x in o) == sorted(batch)
            assert all(s.plan[k][1] == len(batch) for s in shards)
        last = [s.plan[-1][0] for s in shards]  # the last batch has 3 samples
        if world == 5:
            assert last == [1, 1, 1, 0, 0] and shards[4].batches[-1] == one[-1][:1]
    evals = [ShardSampler(10, r, 3).indices for r in range(3)]
    assert sorted(i for e in evals for i in e) == list(range(10))  # nothing padded, nothing twice


def _train(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fpar", "train", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "FPAR_THREADS": "1", **(env or {})},
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=False)["model"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_as_one_and_resume_exactly(tiny_root, tmp_path):
    """2 gloo processes with the global batch of one: epoch losses and final weights equal the 1-process run within
    1e-5 (dropout 0, BN frozen); only rank 0 wrote; killed mid-epoch, the 2-process run resumes bit-identically."""
    from tests.conftest import tiny_args

    ov = [str(STAGE1), *tiny_args(tiny_root), "model.dropout=0", "train.epochs=2", "--quiet"]
    one, two, cut = tmp_path / "one", tmp_path / "two", tmp_path / "cut"
    r1 = _train([*ov, f"out={one}"])
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = _train([*ov, f"out={two}", "--nproc", "2"])
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "x 2 processes (gloo)" in r2.stdout and r2.stdout.count("best top-1") == 1
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-5
    for x, y in zip(_rows(one), _rows(two), strict=True):
        for k in ("train_loss", "train_top1", "val_loss", "val_top1"):
            assert x[k] == pytest.approx(y[k], abs=1e-5), k
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s1["videos"] == s2["videos"] and s1["best_top1"] == pytest.approx(s2["best_top1"], abs=1e-9)
    # rank 0 alone wrote: the run folder's files, one TensorBoard file, one rng state per rank in last.pt
    assert {p.name for p in two.iterdir() if p.is_file()} == RUN_FILES
    assert len(list((two / "tb").iterdir())) == 1
    assert len(torch.load(two / "last.pt", weights_only=False)["rng_ranks"]) == 2
    # killed (both processes, SIGKILL) at the 3rd step of epoch 2 (5 batches an epoch), then resumed on 2 processes
    r3 = _train([*ov, f"out={cut}", "--nproc", "2"], env={"FPAR_FAULT": "batch:8"})
    assert r3.returncode != 0 and not (cut / "summary.json").exists()
    assert torch.load(cut / "last.pt", weights_only=False)["epoch"] == 1
    r4 = _train(["--resume", str(cut), "--nproc", "2", "--quiet"])
    assert r4.returncode == 0, r4.stderr[-2000:]
    c = _weights(cut)
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in _rows(cut)] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in _rows(two)
    ]


def test_a_process_without_a_gpu_of_its_own_is_a_one_line_error(monkeypatch):
    """NCCL wants one GPU per process: a second process on a one-GPU machine is told what to start instead of
    failing inside CUDA ("invalid device ordinal")."""
    from fpar.engine import distributed
    from fpar.errors import FparError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device must not be reached"))
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(FparError, match=r"process 1 of this machine has no GPU of its own \(1 visible\).*--nproc 1"):
        distributed.setup("auto")
