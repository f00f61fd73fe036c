"""Small helpers shared by every layer: atomic writes, seeding, hashing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def refuse_existing(path: str | os.PathLike, option: str, hint: str = "") -> Path:
    """``path`` as a Path, or a one-line error when something is there already: fpar writes no file over one that
    exists (the guarantee "nothing already written is lost"), and a folder is not a file. ``option`` names the
    argument that gave the path (``--out``), ``hint`` (optional) says where that path came from."""
    from .errors import FparError

    p = Path(path)
    if p.is_dir():
        raise FparError(f"{option} {p} is a folder; give a file name")
    if p.exists() or p.is_symlink():
        raise FparError(f"{p} exists{hint}; nothing was written: give another {option} or delete it")
    return p


def refuse_file(path: str | os.PathLike, option: str, what: str) -> Path:
    """``path`` as a Path, or a one-line error when it is a file where a folder goes (for ``what``, given by
    ``option``): the folder-side twin of `refuse_existing`."""
    from .errors import FparError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FparError(f"{option} {p} is a file; give a folder for {what}")
    return p


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object (mapping) in ``path``; None when the file is missing, unreadable, not JSON (a write cut
    short) or holds something else than a mapping. For fpar's own files, which the caller can do without."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return obj if isinstance(obj, dict) else None


def read_utf8(path: str | os.PathLike, hint: str = "save it as UTF-8") -> str:
    """The text of ``path`` (UTF-8, a leading BOM dropped), or a one-line error naming the first byte that is not
    UTF-8 and ``hint`` (what to do). For CSVs: ``csv.reader(io.StringIO(text, newline=""))``."""
    from .errors import FparError

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FparError(f"{path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r}); {hint}") from None


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


_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed blocks of up to 256 MB for reuse (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).

    Eager PyTorch on the CPU allocates and frees image- and activation-sized tensors at every step; by default
    glibc serves each with a fresh mmap and returns it on free, so every step pays page faults (system time) to get
    zeroed pages again. Keeping the blocks makes tvl1-torch 20-30% faster (benchmarks/bench_flow.py) and cut a demo
    stage-1 run's system time from 8.3 s to 3.3 s. The process keeps up to that much more memory mapped. Once per
    process; a no-op where the C library is not glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
        libc.mallopt(m_mmap_threshold, 256 * 2**20)
        libc.mallopt(m_trim_threshold, 256 * 2**20)
    except (OSError, AttributeError):
        pass


def denormals_flushed_now() -> bool:
    """Whether this thread's CPU arithmetic reads and writes denormal float32 values (below 1.18e-38) as zero."""
    import torch

    tiny = torch.tensor([1e-39], dtype=torch.float64).float()  # a denormal float32, or 0 when flushed already
    return bool((tiny * 1.0).item() == 0.0)


def _openmp_runtime():
    """The OpenMP runtime torch's CPU kernels run on (libgomp, or a runtime with its GOMP_ entry points), as a
    ctypes library, or None where none is loaded or the platform has no /proc/self/maps."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if any(n in line for n in ("libgomp", "libiomp", "libomp"))}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "torch" not in p):  # torch's own copy first
        try:
            lib = ctypes.CDLL(path)
            lib.GOMP_parallel  # noqa: B018 - present in libgomp and in the runtimes that mimic it
            return lib
        except (OSError, AttributeError):
            continue
    return None


def set_denormal_mode(flush: bool) -> bool:
    """Flush denormals (or stop) on this thread and on every thread of torch's OpenMP pool. The mode is a per-thread
    CPU flag (MXCSR on x86) that a new thread inherits from its creator, so threads that already exist (a pool that
    an earlier torch call started) are reached by one parallel region whose every thread sets it. Returns whether
    the CPU has the mode."""
    import ctypes

    import torch

    if not torch.set_flush_denormal(flush):
        return False
    lib = _openmp_runtime()
    if lib is not None:
        callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(flush))
        lib.GOMP_parallel.argtypes = [type(callback), ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
        lib.GOMP_parallel(callback, None, max(torch.get_num_threads(), 1), 0)
    return True


@contextmanager
def flush_denormal(enabled: bool) -> Iterator[None]:
    """Denormal floats flushed to zero on the CPU inside the block (x86 FTZ/DAZ, ARM FZ), as GPU kernels mostly do,
    on this thread and torch's OpenMP threads (`set_denormal_mode`); the mode before is restored after it.

    Why: gradients that shrink through many recurrent steps (a ConvLSTM's backward over T frames) reach denormal
    magnitudes, and x86 CPUs compute on denormals through a slow path: a demo stage-1 epoch took 23 s with them and
    15 s without (2 cores, AVX-512), its backward 4.4x faster. Values above 1.18e-38 are computed exactly as
    before; only numbers smaller than that become 0.
    """
    before = denormals_flushed_now()
    changed = enabled != before and set_denormal_mode(enabled)
    try:
        yield
    finally:
        if changed:
            set_denormal_mode(before)


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
