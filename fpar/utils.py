"""Small helpers shared by every layer: atomic writes, seeding, hashing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over ``path``
    (rename is atomic on POSIX); an interrupted write leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; a shared run folder needs the umask's mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault("tmp_written")
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename:  # name the file the user would look for
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return path


_FAULT_HITS: dict[str, int] = {}


def fault(point: str) -> None:
    """Fault injection for tests: with ``FPAR_FAULT=POINT:N`` the process SIGKILLs itself the N-th time it passes
    ``POINT`` (``batch``: after an optimiser step; ``eval``: during evaluation; ``tmp_written``: an atomic write's
    temporary file is complete but not renamed; ``metrics_appended``: an epoch's row is in metrics.jsonl but its
    checkpoint is not written; ``ledger_created``: a sweep ledger's schema is made but not linked into place).
    A no-op without the variable."""
    spec = os.environ.get("FPAR_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _FAULT_HITS[point] = _FAULT_HITS.get(point, 0) + 1
    if _FAULT_HITS[point] == int(n or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once (at import, before any thread)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def remove_leftover_temps(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files of interrupted atomic writes (``.NAME.XXXX.tmp``) in ``folder``; call it only as
    the folder's one writer (e.g. holding its run lock). Returns the names removed."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes` (a crash mid-save never corrupts a checkpoint)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed % 2**63)  # any non-negative seed is accepted: reduced into torch's range


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host is running (zombies count as dead); used by lock and ledger files."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # Linux: a killed process whose parent has not reaped it yet is a zombie, i.e. dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_stale_temporaries(directory: str | os.PathLike, pattern: str, older_than_s: float = 3600.0) -> int:
    """Delete the temporary files ``pattern`` under ``directory`` that are older than ``older_than_s``: what a
    killed writer left (a write takes well under a second, and another run's files in progress are younger, so runs
    sharing the folder keep theirs). Returns how many were deleted."""
    import time

    now = time.time()
    n = 0
    for tmp in Path(directory).glob(pattern):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                n += 1
        except OSError:
            pass  # gone already, or not ours to delete
    return n
