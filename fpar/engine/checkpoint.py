"""Checkpoints: atomic writes, ``weights_only`` loads, self-contained contents.

A checkpoint is a plain dict that can be used alone (`fpar eval`, `fpar predict`, `fpar export`)::

    {"format": 1, "model": state_dict, "config": resolved config dict, "classes": [...],
     "input_size": 224, "normalisation": {...}, "epoch": 12 (1-based, completed), "metrics": {...},
     "optimizer": ..., "rng": {"torch": ByteTensor, "cuda": [...]}, "history": {...}, "provenance": {...}}
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import FparError
from ..utils import torch_save_atomic

FORMAT = 1


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A run folder gives its ``best.pt`` (or ``last.pt``); a file is taken as is."""
    p = Path(path)
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


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    torch_save_atomic({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    f = resolve_checkpoint(path, which)
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles before refusing them: our line says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, arbitrary pickle
        raise FparError(
            f"cannot load checkpoint {f} ({type(e).__name__}); it is corrupt or not an fpar checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise FparError(f"{f} is not an fpar checkpoint (no model/config); weights-only files go to model.pretrained")
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
        torch.cuda.set_rng_state_all(state["cuda"])
