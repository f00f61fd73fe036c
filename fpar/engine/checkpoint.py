"""Checkpoints: atomic writes, ``weights_only`` loads, self-contained contents.

A checkpoint is a plain dict that can be used alone (`fpar eval`, `fpar predict`, `fpar export`)::

    {"format": 1, "model": state_dict, "config": resolved config dict, "classes": [...],
     "input_size": 224, "normalisation": {...}, "epoch": 12 (1-based, completed), "metrics": {...},
     "optimizer": ..., "rng": {"torch": ByteTensor, "cuda": [...]}, "history": {...}, "provenance": {...}}
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import FparError
from ..utils import atomic_write_bytes

FORMAT = 1
logger = logging.getLogger(__name__)


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A run folder gives its ``best.pt`` (or ``last.pt``); a file is taken as is."""
    p = Path(path)
    if which not in ("best", "last"):
        raise FparError(f"--which {which}: choose best (the selected epoch) or last")
    if p.is_dir():
        f = p / f"{which}.pt"
        if not f.is_file() and which == "last" and (p / "config.yaml").is_file() and not (p / "best.pt").is_file():
            raise FparError(
                f"{p} has no last.pt: its run stopped before the first epoch ended, so there is nothing to resume; "
                "rerun the train command (it starts the run again in the same folder)"
            )
        if not f.is_file():
            other = p / ("last.pt" if which == "best" else "best.pt")
            hint = f" ({other.name} exists: pass it explicitly)" if other.is_file() else ""
            raise FparError(f"{f} not found: {p} is not a finished fpar run folder{hint}")
        return f
    if not p.is_file():
        raise FparError(f"checkpoint or run folder {p} not found; give a run folder (runs/NAME) or a .pt file")
    return p


class BackgroundWriter:
    """Writes checkpoints to disk on worker threads while training goes on, one after the other, in order.

    ``save`` serialises the state at once (the bytes are a copy, so the next optimiser step may change the tensors
    right after it returns) and hands them to a thread that writes them with `fpar.utils.atomic_write_bytes`
    (temporary file, fsync, rename) once the writes saved before it are done. Training thus waits for the
    serialisation (a memory copy) but not for the disk: at the ``full`` preset's size a ``last.pt`` is 314 MB and a
    ``best.pt`` 162 MB, and each fsync took 0.3-2 s on this project's machine.

    ``wait`` blocks until every pending write is on disk and raises the first error, if one had one (a full disk says
    so at the next epoch, naming the file). The trainer waits before it writes anything else of the next epoch, so
    an epoch's best.pt and last.pt are on disk, in that order, before the next epoch's files. Used as a context
    manager it waits on leaving the block too, so a run stopped by an error still leaves its last checkpoint
    complete (that error goes on; a write error met then is logged)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None  # the last write; each write joins the one before it
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any], path: str | os.PathLike) -> None:
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **state}, buf)
        self._thread = threading.Thread(
            target=self._write, args=(Path(path), buf, self._thread), name="fpar-checkpoint-writer", daemon=False
        )
        self._thread.start()

    def _write(self, path: Path, buf: io.BytesIO, before: threading.Thread | None) -> None:
        if before is not None:
            before.join()  # in the order of the saves
        try:
            atomic_write_bytes(path, buf.getbuffer())
        except BaseException as e:  # handed to the training thread by wait()
            if self._error is None:
                self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.wait()
        except BaseException as e:
            if exc_type is None:
                raise
            # another error is on its way up; this one would be lost without a word
            logger.warning("the last checkpoint write also failed: %s", e)


def load_checkpoint(path: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    f = resolve_checkpoint(path, which)
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles before refusing them: our line says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except PermissionError:
        raise FparError(f"cannot read checkpoint {f} (permission denied); give this user read access to it") from None
    except Exception as e:  # truncated file, not a torch file, arbitrary pickle
        raise FparError(
            f"cannot load checkpoint {f} ({type(e).__name__}); it is corrupt or not an fpar checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise FparError(f"{f} is not an fpar checkpoint (no model/config); weights-only files go to model.pretrained")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["config"], dict):
        raise FparError(f"{f} is not an fpar checkpoint (its model or config is not a mapping); it is damaged")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise FparError(f"{f} is not an fpar checkpoint (its model holds entries that are not named tensors)")
    ckpt["path"] = str(f)
    return ckpt


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU the saving process saw: a resume that sees fewer (another CUDA_VISIBLE_DEVICES, a
        # smaller machine) restores those it has; the saved list holds the training GPU's first
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
