"""Training on several processes (``torchrun --nproc-per-node N -m fpar train ...`` or ``fpar train --nproc N``).

One run, N processes, DistributedDataParallel: NCCL on GPUs (one per process, ``cuda:LOCAL_RANK``), gloo on CPU.
What stays as in one process, and why:

* **The global batch sequence.** Every epoch is the permutation one process would draw (the same generator, seeded
  by seed and epoch) cut into the same batches of ``train.batch_size``; process ``r`` takes the samples ``r, r + N,
  ...`` of each batch. Every random draw of a sample is a function of (seed, epoch, video) already, so a sample is the
  same wherever it is loaded.
* **The gradient.** Each process scales its mean loss by ``n_r * N / n`` (``n_r`` of the batch's ``n`` samples are
  its own); DDP averages over processes, which gives the gradient of the mean over the whole batch, as one process
  computes it (up to float rounding). A process with no sample in a short last batch runs one with weight 0, so that
  every process takes part in every all-reduce.
* **Evaluation** is split (process ``r`` scores videos ``r, r + N, ...``) and gathered: no video is padded in or
  counted twice.
* **Writes.** Rank 0 alone writes the run folder (and holds its lock); every rank's RNG state is in ``last.pt``, so a
  resumed run is the run that was not stopped.

Not identical to one process: dropout masks (each process draws its own; set ``model.dropout=0`` to compare runs
exactly), and trainable BatchNorm, whose statistics are per process unless ``train.sync_bn=true`` (SyncBatchNorm,
GPU only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..errors import FparError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


_CURRENT = Dist()


def current() -> Dist:
    """The process group this process trains in (``world == 1`` outside torchrun)."""
    return _CURRENT


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets ``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup(device: str) -> Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``);
    a no-op in a single process. ``device`` is ``train.device``: NCCL when it is (or ``auto`` finds) CUDA."""
    global _CURRENT
    if not launched():
        _CURRENT = Dist()
        return _CURRENT
    if dist.is_initialized():
        return _CURRENT
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise FparError("WORLD_SIZE is set but RANK is not: start multi-process training with torchrun") from None
    cuda = torch.cuda.is_available() and not device.startswith("cpu")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        gpus = torch.cuda.device_count()
        if local >= gpus:  # NCCL runs one process per GPU; two ranks on one GPU hang or fail inside NCCL
            raise FparError(
                f"process {local} of this machine has no GPU of its own ({gpus} visible): start at most {gpus} "
                f"processes per machine (--nproc {gpus}, torchrun --nproc-per-node {gpus}), or train.device=cpu"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    _CURRENT = Dist(rank, world, local, backend)
    return _CURRENT


def teardown() -> None:
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Dist()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    d = current()
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if current().backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def wrap(module: nn.Module, device: torch.device, *, find_unused: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel (unchanged in one process). ``find_unused`` (``train.ddp_find_unused``)
    allows trainable parameters that a forward leaves unused, at the cost of a walk over the graph every step."""
    if not current().enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused)


# --------------------------------------------------------------------------------------------------------------
# Samplers


def epoch_order(n: int, generator: torch.Generator) -> list[int]:
    """The order a shuffling DataLoader with this generator visits ``n`` samples: it draws its workers' base seed
    from the generator first, then the permutation."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's part of every batch of the one-process batch sequence.

    ``plan`` gives, per batch, (samples of this rank that count, samples in the global batch): the loss scale. A rank
    whose part of a short last batch is empty gets that batch's first sample, which counts 0 times.
    """

    def __init__(self, order: list[int], batch_size: int, rank: int, world: int):
        self.batches: list[list[int]] = []
        self.plan: list[tuple[int, int]] = []
        for i in range(0, len(order), batch_size):
            b = order[i : i + batch_size]
            mine = b[rank::world]
            self.plan.append((len(mine), len(b)))
            self.batches.append(mine or b[:1])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ShardSampler(Sampler[int]):
    """Samples ``rank, rank + world, ...`` in order: evaluation split over the ranks, nothing padded."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------------------------------------------
# `fpar train --nproc N`: torchrun's job for one machine, without its tracebacks


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str], nproc: int) -> int:
    """Run ``python -m fpar ARGS`` as ``nproc`` processes of one group on this machine (the environment torchrun
    gives: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Rank 0's output is shown;
    another rank's errors are shown when it fails. When one process fails the others are stopped. Returns the exit
    code (the first failure's)."""
    import subprocess
    import sys
    import time

    if nproc < 1:
        raise FparError(f"--nproc {nproc}: give at least 1 process")
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        out = None if rank == 0 else subprocess.DEVNULL
        err = None if rank == 0 else subprocess.PIPE
        procs.append(subprocess.Popen([sys.executable, "-m", "fpar", *args], env=env, stdout=out, stderr=err))
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                code = failed[0].returncode
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    codes = [p.returncode for p in procs]
    if not code:
        code = next((c for c in codes if c), 0)
    if code and codes[0] in (0, None, -15):  # rank 0 did not say why: the failing rank does
        for rank, p in enumerate(procs[1:], 1):
            if p.returncode and p.stderr is not None:
                text = p.stderr.read().decode(errors="replace").strip()
                if text:
                    sys.stderr.write(f"rank {rank}: {text.splitlines()[-1]}\n")
                break
    return code if code > 0 else (1 if code else 0)
