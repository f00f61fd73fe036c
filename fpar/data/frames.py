"""Frame references: a frame in a plain image file, inside a tar, or inside a video file.

A manifest lists each segment's frames as strings. Most datasets ship one image per frame, so a frame is a path.
Two native formats do not:

* EPIC-KITCHENS ships frames as one uncompressed tar per video (``P01/rgb_frames/P01_01.tar``). Extracting 20 M
  JPEGs is slow and fills small-file quotas, so fpar reads the members in place: ``TAR::MEMBER``
  (``.../P01_01.tar::frame_0000000001.jpg``). The byte offset of every member comes from an index built once per tar
  (one pass over its headers) and cached outside the dataset folder (`cache_dir`), never inside it: dataset folders
  are often read-only and shared.
* EGTEA Gaze+ ships trimmed clips as MP4 (``cropped_clips/<session>/<clip>.mp4``): ``VIDEO::K`` is decoded frame K
  (0-based, in decoding order) of the clip. `read_video_frames` decodes the frames of one clip in one pass.

Segments of long videos hold thousands of frames; `FrameSeq` lists them lazily (a pattern and a number range) so an
EPIC-KITCHENS-100 manifest of 67 k segments stays small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import FparError

logger = logging.getLogger(__name__)

SEP = "::"  # container::member; "::" does not occur in the paths of any dataset fpar reads
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def cache_dir() -> Path:
    """Where fpar keeps what it derives from datasets (tar member indices, clip probes): ``$FPAR_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/fpar``, else ``~/.cache/fpar``."""
    env = os.environ.get("FPAR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fpar"


def _cache_file(kind: str, path: str, what: str) -> Path:
    """Where the derived facts of the file ``path`` are kept: ``cache_dir()/<kind>/<hash>.json``, the hash of its
    absolute path, size and modification time (a changed file is looked at again)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise FparError(f"{what} {path} cannot be read ({e.strerror})") from None
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / kind / f"{key}.json"


def _read_cached(cached: Path):
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        return None


def _write_cached(cached: Path, data) -> None:
    try:
        from ..utils import atomic_write_text

        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, json.dumps(data))
    except OSError as e:  # a read-only home: worked out again next time
        logger.debug("%s not cached (%s)", cached, e)


def split_ref(ref: str) -> tuple[str, str] | None:
    """(container, member) of a reference inside a tar or a video; None for a plain file."""
    i = ref.rfind(SEP)
    if i < 0:
        return None
    return ref[:i], ref[i + len(SEP) :]


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


# --------------------------------------------------------------------------------------------------------------
# Lazy frame lists


class FrameSeq(Sequence):
    """The frames ``first, first + step, ..., last`` of ``pattern`` (a ``str.format`` pattern with one field, the
    file number): ``FrameSeq("/d/frame_{:010d}.jpg", 1, 3)`` is the three paths ``/d/frame_0000000001.jpg`` ... .
    Behaves as a read-only list of strings (indexing, slicing, ``len``, iteration); slices are plain lists."""

    __slots__ = ("pattern", "first", "count")

    def __init__(self, pattern: str, first: int, last: int):
        self.pattern = pattern
        self.first = int(first)
        self.count = max(int(last) - int(first) + 1, 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.pattern.format(self.first + i) for i in range(*k.indices(self.count))]
        if k < 0:
            k += self.count
        if not 0 <= k < self.count:
            raise IndexError(f"frame {k} of {self.count}")
        return self.pattern.format(self.first + k)

    def __iter__(self) -> Iterator[str]:
        return (self.pattern.format(self.first + i) for i in range(self.count))

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return f"FrameSeq({self.pattern!r}, {self.first}, {self.first + self.count - 1})"


# --------------------------------------------------------------------------------------------------------------
# Tars


def _normalise_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


_TAR_INDEX: dict[str, dict[str, tuple[int, int]]] = {}  # per process: path -> {member: (offset, size)}
_FDS: dict[str, int] = {}  # open tars (read with os.pread: no shared file offset between DataLoader workers)


def tar_members(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{member name: (data offset, size)}`` of the regular files of an uncompressed tar (``./`` stripped).

    Built by one pass over the tar's headers (no member is extracted), then cached in ``cache_dir()/tar-index``
    keyed by the tar's absolute path, size and modification time, so a changed tar is indexed again.
    """
    path = os.path.abspath(os.fspath(path))
    hit = _TAR_INDEX.get(path)
    if hit is not None:
        return hit
    cached = _cache_file("tar-index", path, "tar")
    index = None
    try:
        index = {k: (int(o), int(s)) for k, (o, s) in (_read_cached(cached) or {}).items()} or None
    except (ValueError, TypeError, AttributeError):
        pass
    if index is None:
        index = {}
        try:
            with tarfile.open(path, "r:") as tf:  # "r:": uncompressed only; a compressed tar has no fixed offsets
                for m in tf:
                    if m.isfile():
                        index[_normalise_member(m.name)] = (m.offset_data, m.size)
                # tarfile stops quietly at a header cut short by the end of the file (a download truncated at a
                # member boundary): a complete tar ends with zero blocks where the next header would be.
                tf.fileobj.seek(tf.offset)
                if tf.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                    raise tarfile.ReadError(f"no end-of-archive marker after {len(index)} members: truncated")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise FparError(
                f"{path} is not a readable uncompressed tar ({e}); download it again (a truncated download is the "
                "usual cause) or extract it and point fpar at the folder"
            ) from None
        _write_cached(cached, index)
    _TAR_INDEX[path] = index
    return index


def read_tar_member(tar: str, member: str) -> bytes:
    """The bytes of one member of an uncompressed tar, read in place."""
    index = tar_members(tar)
    entry = index.get(_normalise_member(member))
    if entry is None:
        raise FparError(f"{tar} has no member {member} (a truncated download or extraction); download the tar again")
    offset, size = entry
    path = os.path.abspath(tar)
    fd = _FDS.get(path)
    if fd is None:
        fd = _FDS[path] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise FparError(f"{tar} ends inside member {member} (truncated); download the tar again")
    return data


def numbered(names: Iterable[str], prefix: str = "frame_") -> tuple[list[int], str]:
    """The sorted file numbers of the names ``<prefix><number>.<ext>`` among ``names`` (a name with a ``/`` is in a
    subfolder and does not count), and their extension (``.jpg`` when there is none)."""
    nums, ext = [], ".jpg"
    for name in names:
        if name.startswith(prefix) and "/" not in name:
            stem, dot, tail = name[len(prefix) :].partition(".")
            if stem.isdigit():
                nums.append(int(stem))
                ext = dot + tail
    return sorted(nums), ext


def folder_numbers(folder: str | os.PathLike, prefix: str = "frame_") -> tuple[list[int], str]:
    """`numbered` over the files of a folder; ([], ".jpg") when it cannot be listed."""
    try:
        return numbered(os.listdir(folder), prefix)
    except OSError:
        return [], ".jpg"


def tar_numbers(tar: str, folder: str = "", prefix: str = "frame_") -> tuple[list[int], str]:
    """`numbered` over the members ``[folder/]<prefix><number>.<ext>`` of a tar."""
    want = f"{folder}/" if folder else ""
    return numbered((m[len(want) :] for m in tar_members(tar) if m.startswith(want)), prefix)


def file_stride(names: Iterable[str]) -> int | None:
    """The step of a strided frame sequence, or None for a consecutive one (gaps included).

    The number of a name is the last run of digits of its stem (``rgb0007.png`` -> 7, ``frame_0000000013.jpg`` ->
    13). A folder is strided when at least 90% of the steps between consecutive numbers are one constant k > 1
    (EPIC-KITCHENS-style folders holding every k-th frame); isolated larger steps where frames are missing leave the
    common step at 1, which is not strided. Fewer than 3 numbered names: None.
    """
    import re
    from collections import Counter

    nums = []
    for name in names:
        m = re.search(r"(\d+)\D*$", Path(name).stem)
        if m:
            nums.append(int(m.group(1)))
    nums = sorted(set(nums))
    if len(nums) < 3:
        return None
    steps = Counter(b - a for a, b in zip(nums, nums[1:]))
    step, count = steps.most_common(1)[0]
    return step if step > 1 and count >= 0.9 * (len(nums) - 1) else None


# --------------------------------------------------------------------------------------------------------------
# Video clips


def probe_video(path: str | os.PathLike) -> tuple[int, float]:
    """(frames, fps) of a video file, from its container's metadata when it states a frame count, else by
    decoding it. Results are cached in ``cache_dir()/probe`` by path, size and modification time."""
    path = os.path.abspath(os.fspath(path))
    cached = _cache_file("probe", path, "video")
    try:
        d = _read_cached(cached)
        return int(d["frames"]), float(d["fps"])
    except (ValueError, KeyError, TypeError):
        pass
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise FparError(f"video {path} has no video stream; replace the file")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 0.0
            # Container frame counts are estimates for some files: count by demuxing packets (no decoding, fast).
            n = sum(1 for p in c.demux(s) if p.size)
    except FparError:
        raise
    except Exception as e:  # av raises its own error types for every kind of damage
        raise FparError(f"video {path} cannot be decoded ({type(e).__name__}: {e}); replace the file") from None
    _write_cached(cached, {"frames": n, "fps": fps})
    return n, fps


def rgb_converter(threads: int | None = None):
    """A function ``frame -> (H, W, 3) uint8 RGB`` for PyAV video frames, with a swscale context of its own: make
    one per opened video.

    Why not ``frame.to_ndarray(format="rgb24")``: PyAV keeps one reformatter per thread at module level, so a process
    forked after it was used (DataLoader workers, the test suite's forked `fpar` children) inherits a context whose
    slice threads did not survive the fork, and the child's first conversion that re-sets it up (another frame size)
    waits forever for them. A reformatter made here belongs to the process that decodes with it. ``threads``: swscale's
    slice threads (None: FFmpeg's choice; 1 where the caller is already one of many workers)."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    return lambda frame: reformatter.reformat(frame, format="rgb24", threads=threads).to_ndarray()


def read_video_frames(path: str, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Frames ``indices`` (0-based, decoding order) of one video as (H, W, 3) uint8 RGB, in one decoding pass that
    stops after the last one wanted. An index past the decoded end (a container that overstated its length) gets the
    last frame decoded."""
    import av

    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    want = set(wanted)
    last_frame = None
    to_rgb = rgb_converter(threads=1)  # DataLoader workers are the parallelism
    try:
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"  # DataLoader workers are the parallelism
            for k, frame in enumerate(c.decode(s)):
                last_frame = frame
                if k in want:
                    out[k] = to_rgb(frame)
                if k >= wanted[-1]:
                    break
            fill = None
            for i in wanted:
                if i not in out and last_frame is not None:
                    fill = to_rgb(last_frame) if fill is None else fill
                    out[i] = fill
    except Exception as e:
        raise FparError(f"video {path} cannot be decoded ({type(e).__name__}: {e}); replace the file") from None
    if last_frame is None:
        raise FparError(f"video {path} has no decodable frames; replace the file")
    return out
