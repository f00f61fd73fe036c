"""Decoded-frame cache: every RGB frame of a dataset decoded once into one uint8 array file per video, read back
memory-mapped (``fpar data cache ROOT``, then ``data.frame_cache=DIR`` when training).

Decoding JPEG/PNG files (or seeking in MP4 clips) is most of the cost of the RGB pipeline. The cache holds the frames
exactly as the readers decode them (no resizing: the crop box is drawn on the decoded frame, so any resizing here
would change the clips), as ``<key>.npy`` (N, H, W, 3) uint8 files that ``np.load(mmap_mode="r")`` maps without
reading, so a clip's T frames cost T page-cache reads. Clips made from the cache equal the decoded clips exactly
(tests/test_frame_cache.py).

Each video's entry records where its frames came from (the decoders' versions, and the path, size and modification
time of its first and last frame files, or of its video / tar file) and its frame count; a video whose sources
changed since is read the normal way (and counted, so ``fpar data cache`` can be run again). A folder in which only
middle frames were replaced is not noticed: build the cache again after editing frames. Entries are written to a
temporary name and renamed, so an interrupted build leaves whole entries only; building again skips the entries
that are current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FparError
from ..utils import sweep_stale_temporaries
from .frames import split_ref
from .manifest import Manifest, VideoRecord

__all__ = ["FrameCache", "build_frame_cache"]

log = logging.getLogger(__name__)

VERSION = 2
MAX_OPEN = 16  # memory maps kept open per process
INDEX_EVERY = 50  # entries written between index rewrites (and at the end)


def _source_file(ref: str) -> str:
    """The file a frame ref lives in: the path itself, or the tar / video of ``CONTAINER::MEMBER``."""
    parts = split_ref(ref)
    return parts[0] if parts is not None else ref


def fingerprint(v: VideoRecord) -> list[Any]:
    """What a video's cached frames depend on: the decoders' versions (OpenCV, PyAV), the frame count and the
    (path, size, mtime_ns) of the files of its first and last frames (for an MP4 clip or a tar, that one file
    holds every frame; a folder whose middle frames alone were replaced goes unnoticed: build the cache again)."""
    import av
    import cv2

    files = sorted({_source_file(v.rgb[0]), _source_file(v.rgb[-1])})
    out: list[Any] = [cv2.__version__, av.__version__, len(v.rgb)]
    for f in files:
        try:
            st = os.stat(f)
            out.append([f, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([f, None, None])
    return out


def video_key(v: VideoRecord) -> str:
    """The cache file name of a video: its key made safe for a file name, and a hash of its frame refs."""
    digest = hashlib.sha1("\n".join([v.rgb[0], v.rgb[-1], str(len(v.rgb))]).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in v.key)[:80]
    return f"{safe}-{digest}"


class FrameCache:
    """Read side: ``frames(v, indices)`` gives the cached frames of a video, or None when it is not (or no longer)
    cached. Safe to pickle into DataLoader workers (open maps are per process)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        index = self.dir / "index.json"
        if not index.is_file():
            raise FparError(
                f"data.frame_cache={self.dir}: no frame cache there (no index.json); build it with "
                f"`fpar data cache ROOT --out {self.dir}` or remove the key"
            )
        try:
            meta = json.loads(index.read_text())
        except (OSError, ValueError) as e:
            raise FparError(f"{index} cannot be read ({e}); build the cache again with `fpar data cache`") from None
        if meta.get("version") != VERSION:
            raise FparError(f"{index} is version {meta.get('version')}, this fpar reads {VERSION}; build it again")
        self.entries: dict[str, dict] = meta.get("videos", {})
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()  # the last MAX_OPEN maps (each holds a file)
        self._checked: dict[str, bool] = {}
        self.misses = 0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"], state["_checked"] = {}, {}
        return state

    def _map(self, v: VideoRecord) -> np.ndarray | None:
        key = video_key(v)
        if key in self._maps:
            self._maps.move_to_end(key)
            return self._maps[key]
        ok = self._checked.get(key)
        if ok is None:
            entry = self.entries.get(key)
            ok = entry is not None and entry.get("fingerprint") == json.loads(json.dumps(fingerprint(v)))
            self._checked[key] = ok
        if not ok:
            return None
        try:
            arr = np.load(self.dir / f"{key}.npy", mmap_mode="r")  # (N, H, W, 3) uint8, not read yet
        except (OSError, ValueError, EOFError):
            self._checked[key] = False
            return None
        self._maps[key] = arr
        if len(self._maps) > MAX_OPEN:  # a map keeps its file open: bound them (ulimit -n, vm.max_map_count)
            self._maps.popitem(last=False)
        return arr

    def frames(self, v: VideoRecord, indices: list[int]) -> list[np.ndarray] | None:
        """The frames ``indices`` of ``v`` as (H, W, 3) uint8 arrays (views of the map), or None (decode them)."""
        arr = self._map(v)
        if arr is None:
            self.misses += 1
            return None
        # views: a view keeps its map (and file) alive until the clip is cropped, so the LRU bounds the open files
        return [arr[k] for k in indices]

    def __contains__(self, v: VideoRecord) -> bool:
        return self._map(v) is not None


def build_frame_cache(
    manifest: Manifest, out: str | os.PathLike, *, progress=None, videos: list[int] | None = None
) -> dict[str, Any]:
    """Decode the RGB frames of the manifest's usable videos into ``out`` (see the module docstring).

    Args:
        manifest: a dataset read by `fpar.data.readers.read_dataset`.
        out: the cache folder (created).
        progress: a tqdm-like callable wrapping an iterable (or None).
        videos: manifest indices to cache (default: every usable video with frames).

    Returns:
        ``{"dir", "videos", "written", "current", "frames", "bytes"}``: videos considered, entries written by this
        call, entries already current, frames and bytes of the whole cache.

    Raises:
        FparError: ``out`` cannot be written, or a video's frames differ in size (the message names the video).
    """
    from .dataset import _read_all
    from .imageio import read_rgb_many

    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FparError(
            f"cannot create the frame cache folder {root} ({e.strerror}); give a writable one with --out DIR"
        ) from None
    sweep_stale_temporaries(root, ".*.npy")  # what a killed build left (entries are renamed into place whole)
    index_path = root / "index.json"
    entries: dict[str, dict] = {}
    if index_path.is_file():
        try:
            old = json.loads(index_path.read_text())
            if old.get("version") == VERSION:
                entries = old.get("videos", {})
        except (OSError, ValueError, EOFError):
            entries = {}
    chosen = videos if videos is not None else [i for i, v in enumerate(manifest.videos) if v.usable and v.rgb]
    it = progress(chosen, desc="frame cache", unit="video") if progress is not None else chosen
    written = current = 0
    last_index = time.monotonic()
    for i in it:
        v = manifest.videos[i]
        key = video_key(v)
        fp = json.loads(json.dumps(fingerprint(v)))
        if entries.get(key, {}).get("fingerprint") == fp and (root / f"{key}.npy").is_file():
            current += 1
            continue
        first = _read_all(read_rgb_many, v.rgb[:1], batch=True)[0]
        h, w = first.shape[:2]
        tmp = root / f".{key}.{os.getpid()}.npy"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(v.rgb), h, w, 3))
        try:  # reserve the blocks now: a full disk is then ENOSPC here, not SIGBUS while the frames are written
            with open(tmp, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, os.path.getsize(tmp))
        except OSError as e:
            del arr
            tmp.unlink(missing_ok=True)
            need = len(v.rgb) * h * w * 3 / 2**30
            raise FparError(
                f"cannot write the frame cache in {root} ({e.strerror}): {v.key} needs {need:.2f} GiB; free space "
                "or give another --out"
            ) from None
        step = 64  # frames decoded per read (one pass per video file for MP4 clips)
        for s in range(0, len(v.rgb), step):
            chunk = _read_all(read_rgb_many, v.rgb[s : s + step], batch=True)
            for k, img in enumerate(chunk):
                if img.shape[:2] != (h, w):
                    del arr
                    tmp.unlink(missing_ok=True)
                    raise FparError(
                        f"{v.rgb[s + k]} is {img.shape[1]}x{img.shape[0]} but {v.rgb[0]} is {w}x{h}: the frames of "
                        f"{v.key} must share one size"
                    )
                arr[s + k] = img
        arr.flush()
        del arr
        os.replace(tmp, root / f"{key}.npy")
        entries[key] = {"video": v.key, "frames": len(v.rgb), "shape": [h, w, 3], "fingerprint": fp}
        written += 1
        if written % INDEX_EVERY == 0 or time.monotonic() - last_index > 30:  # an interruption loses a few entries
            _write_index(index_path, entries, manifest.root)
            last_index = time.monotonic()
    _write_index(index_path, entries, manifest.root)
    frames = sum(e["frames"] for e in entries.values())
    nbytes = sum(e["frames"] * int(np.prod(e["shape"])) for e in entries.values())
    return {"dir": str(root), "videos": len(chosen), "written": written, "current": current, "frames": frames,
            "bytes": nbytes}  # fmt: skip


def _write_index(path: Path, entries: dict[str, dict], dataset_root: str) -> None:
    from ..utils import atomic_write_text

    # compact: the index of EPIC-KITCHENS' 67k segments is rewritten every INDEX_EVERY entries
    atomic_write_text(path, json.dumps({"version": VERSION, "dataset": str(dataset_root), "videos": entries}))
