"""Shared fixtures: tiny synthetic datasets written once per session, the real GTEA61 clip."""

from __future__ import annotations

import os
from pathlib import Path

# The suite's recorded numbers (the demo's metrics, bit-exact resumes) are the CPU's, and its runs use
# train.device=auto: on a machine with a GPU they would train there. So the tests see no GPU (set before CUDA starts;
# subprocesses inherit it) unless CUDA_VISIBLE_DEVICES is set already.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: tiny tensors run faster, and the 2-core machine stays usable while the suite runs.
torch.set_num_threads(1)

DATA = Path(__file__).resolve().parent / "data"  # shipped with the suite (tests/data/README.md)
REAL_CLIP = Path(os.environ.get("FPAR_REAL_CLIP", DATA / "gtea61-real-clip"))
REAL_VIDEO = Path(os.environ.get("FPAR_REAL_VIDEO", DATA / "videos" / "ucf101-eyemakeup.avi"))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Tar indices and clip probes go to a folder of this session, not to the user's ~/.cache/fpar."""
    if "FPAR_CACHE_DIR" not in os.environ:
        os.environ["FPAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("fpar-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The `tiny` synthetic preset (6 classes x 4 subjects, 114x64). Treat as read-only."""
    from fpar.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(root, preset="tiny", seed=0)
    return root


def tiny_args(root) -> list[str]:
    """Overrides that make any recipe run in seconds on the tiny data at ``root``."""
    return [
        f"data.root={root}",
        "data.input_size=64",
        "data.scale_size=64",
        "data.frames=3",
        "model.backbone=resnet18",
        "model.pretrained=none",
        "model.mem_size=16",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        "train.progress=false",
    ]


@pytest.fixture
def tiny_overrides(tiny_root) -> list[str]:
    return tiny_args(tiny_root)


class Forked:
    """``fpar ARGS`` in a forked copy of this process: a process of its own (a SIGKILL kills only it, a lock is held
    by another pid) without the seconds an interpreter takes to start and import torch. ``env`` is set in the child
    only; ``target``, a function returning the exit code, runs instead of the CLI (``args`` then only name it in a
    timeout). `wait` gives (exit code, or -signal when it was killed; its stderr); then ``rusage`` is the child's own
    resource usage (``ru_maxrss``: its peak resident memory, KiB)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, *, target=None):
        import tempfile

        self.args = args
        self.err = tempfile.TemporaryFile(mode="w+")
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.environ.pop("FPAR_FAULT", None)
                os.environ.update(env or {})
                import sys

                from fpar import utils
                from fpar.cli import main

                utils._FAULT_HITS.clear()
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
                sys.stderr = self.err
                code = target() if target is not None else main(args)
            finally:
                self.err.flush()
                os._exit(code)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        import signal
        import time

        deadline = time.time() + timeout
        while True:
            done, status, self.rusage = os.wait4(self.pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"fpar {' '.join(self.args[:2])} did not finish in {timeout} s")
            time.sleep(0.02)
        self.err.seek(0)
        text = self.err.read()
        self.err.close()
        return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), text


def run_forked(args: list[str], env: dict[str, str] | None = None, *, timeout: float = 300) -> tuple[int, str]:
    """`Forked` run to its end."""
    return Forked(args, env).wait(timeout)
