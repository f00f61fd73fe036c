"""Turn raw videos (or frame folders) into the GTEA61 course layout that fpar trains on.

Output under ``out`` (N frames per video; 4-digit 1-based frame numbers, 5-digit 1-based flow numbers)::

    <frames_dir>/<subject>/<class>/<instance>/rgb/rgb0001.png ... rgbNNNN.png     RGB, shorter side = short_side
    <frames_dir>/<subject>/<class>/<instance>/mmaps/map0001.png ... mapNNNN.png   binary motion maps {0, 255}, mode L
    flow_x_processed/<subject>/<class>/<instance>/flow_x_00001.png ...            N-1 warp flows (x), 8-bit grey
    flow_y_processed/<subject>/<class>/<instance>/flow_y_00001.png ...            N-1 warp flows (y)

Flow k is the warp flow (camera motion removed, see :mod:`fpar.video.flow`) from frame k to frame k+1, encoded with
:func:`fpar.data.flowcodec.encode_flow`. Map k is the motion map of flow k; the last frame reuses map N-1.

Robustness:

* every video is written into ``out/.fpar-tmp/<id>/`` and renamed into place only when complete, so an interrupted
  run never leaves a partially written instance folder (the folders are replaced flows first, frames last);
* finished videos are recorded in ``out/.fpar-prepare.json`` (rewritten atomically after each one) with their source
  fingerprint and settings; a later call skips them when nothing changed and their files are all there;
* a failing video is logged and listed in the summary, the others go on;
* ``out/.fpar-prepare.lock`` stops two runs from writing into the same ``out`` at once.

Hidden paths (``.fpar-*``) are ignored by the dataset loader, so none of this bookkeeping shows up as data.
"""

from __future__ import annotations

import csv as _csv
import io
import logging
import multiprocessing as mp
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fpar.data.readers.gtea61 import GTEA61Config
from fpar.errors import FparError
from fpar.utils import atomic_write_json, pid_alive, read_utf8, refuse_file
from fpar.video.io import MAX_SHORT_SIDE, VIDEO_EXTENSIONS, iter_frame_folder, iter_video, list_frame_files

__all__ = ["prepare", "discover", "Job", "MANIFEST_NAME", "LOCK_NAME", "TMP_NAME", "MMAP_THRESH"]

log = logging.getLogger(__name__)

MANIFEST_NAME = ".fpar-prepare.json"
LOCK_NAME = ".fpar-prepare.lock"
TMP_NAME = ".fpar-tmp"
MANIFEST_VERSION = 1
FLOW_X_DIR, FLOW_Y_DIR = "flow_x_processed", "flow_y_processed"
MMAP_THRESH = 1.0  # px of warp-flow magnitude above which a pixel counts as moving (see flow.motion_map)


@dataclass(frozen=True)
class Job:
    """One input video (or frame folder) and where it goes: ``<subject>/<class>/<instance>``."""

    source: str  # absolute path of the video file or frame folder
    subject: str
    cls: str
    instance: str
    start: float | None = None  # seconds (videos only)
    end: float | None = None
    dest: str | None = None  # native layouts: the clip (EGTEA) or <participant>/<video> (EPIC) the outputs belong to

    @property
    def key(self) -> str:
        return self.dest or f"{self.subject}/{self.cls}/{self.instance}"

    @property
    def is_frames(self) -> bool:
        return Path(self.source).is_dir() or self.source.endswith(".tar")


# ----------------------------------------------------------------------------------------------- input discovery


def _check_name(value: str, what: str, where: str) -> str:
    value = str(value).strip()
    if not value or value in (".", "..") or "/" in value or "\\" in value or value.startswith(".") or "(" in value:
        raise FparError(
            f"{where}: invalid {what} name {value!r}; use a non-empty name without '/', '\\\\', '(' or a leading '.'"
        )
    return value


def _frame_source(folder: Path) -> Path:
    """A frame folder may hold its images directly or in an ``rgb/`` subfolder (an existing course layout)."""
    if not list_frame_files(folder) and (folder / "rgb").is_dir():
        return folder / "rgb"
    return folder


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _discover_folder(root: Path) -> list[Job]:
    jobs: list[Job] = []
    seen: dict[str, Path] = {}
    for subj in sorted(filter(_visible, root.iterdir())):
        if not subj.is_dir():
            log.warning("ignoring %s: expected VIDEOS/<subject>/<class>/<instance>.<ext>", subj)
            continue
        for cls in sorted(filter(_visible, subj.iterdir())):
            if not cls.is_dir():
                log.warning("ignoring %s: expected VIDEOS/<subject>/<class>/<instance>.<ext>", cls)
                continue
            for item in sorted(filter(_visible, cls.iterdir())):
                if item.is_dir():
                    source, instance = _frame_source(item), item.name
                elif item.suffix.lower() in VIDEO_EXTENSIONS:
                    source, instance = item, item.stem
                else:
                    log.debug("ignoring %s: not a video file (%s) or frame folder", item, " ".join(VIDEO_EXTENSIONS))
                    continue
                job = Job(
                    str(source.resolve()),
                    _check_name(subj.name, "subject", str(subj)),
                    _check_name(cls.name, "class", str(cls)),
                    _check_name(instance, "instance", str(item)),
                )
                if job.key in seen:
                    raise FparError(
                        f"{item} and {seen[job.key]} would both become instance {job.key}; rename one of them"
                    )
                seen[job.key] = item
                jobs.append(job)
    return jobs


def _parse_seconds(value: str | None, column: str, where: str) -> float | None:
    if value is None or not str(value).strip():
        return None
    try:
        x = float(value)
    except ValueError:
        raise FparError(
            f"{where}: {column}={value!r} is not a number of seconds; write e.g. 12.5 or leave it empty"
        ) from None
    if not np.isfinite(x) or x < 0:
        raise FparError(f"{where}: {column}={value!r} must be a finite number of seconds >= 0")
    return x


def _discover_csv(csv_path: Path, fallback_dir: Path | None) -> list[Job]:
    if not csv_path.is_file():
        raise FparError(f"CSV file not found: {csv_path}; give a CSV with header video,subject,class[,start,end]")
    base = csv_path.parent
    jobs: list[Job] = []
    counters: dict[tuple[str, str], int] = {}
    with io.StringIO(read_utf8(csv_path, "save the CSV as UTF-8"), newline="") as fh:
        reader = _csv.DictReader(fh)
        header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in ("video", "subject", "class") if c not in header]
        if missing:
            raise FparError(
                f"{csv_path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'no header'}); "
                "the first line must be video,subject,class[,start,end]"
            )
        reader.fieldnames = header
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            video = (row.get("video") or "").strip()
            if not video:
                raise FparError(f"{where}: empty `video` cell; give a video path (relative to the CSV's folder)")
            p = Path(video).expanduser()
            if not p.is_absolute():
                p = base / p
                if not p.exists() and fallback_dir is not None and (fallback_dir / video).exists():
                    p = fallback_dir / video
            subject = _check_name(row.get("subject") or "", "subject", where)
            cls = _check_name(row.get("class") or "", "class", where)
            start = _parse_seconds(row.get("start"), "start", where)
            end = _parse_seconds(row.get("end"), "end", where)
            if start is not None and end is not None and end <= start:
                raise FparError(f"{where}: end={end} is not after start={start}; give end > start (seconds)")
            n = counters[(subject, cls)] = counters.get((subject, cls), 0) + 1
            jobs.append(Job(str(p.resolve()), subject, cls, str(n), start, end))
    return jobs


def discover(videos: str | os.PathLike | None, *, csv: str | os.PathLike | None = None) -> list[Job]:
    """The jobs described by a ``VIDEOS/<subject>/<class>/<instance>[.<ext>]`` folder or a CSV.

    ``videos`` may itself be a ``.csv`` file. With ``csv`` given, relative video paths are resolved against the CSV's
    folder (then against ``videos`` when that is a folder and the file is not found next to the CSV). Instances of a
    CSV are numbered 1, 2, ... per (subject, class) in CSV order.
    """
    if csv is None and videos is not None and Path(videos).suffix.lower() == ".csv":
        videos, csv = None, videos
    if csv is not None:
        fallback = Path(videos) if videos is not None and Path(videos).is_dir() else None
        jobs = _discover_csv(Path(csv), fallback)
        if not jobs:
            raise FparError(f"{csv} lists no videos; add rows video,subject,class[,start,end] under the header")
        return jobs
    if videos is None:
        raise FparError("nothing to prepare; give a videos folder or a CSV")
    root = Path(videos)
    if root.is_file():
        raise FparError(
            f"{root} is a file; give a folder VIDEOS/<subject>/<class>/<instance>.<ext> or a CSV (video,subject,class)"
        )
    if not root.is_dir():
        raise FparError(f"videos folder not found: {root}; give VIDEOS/<subject>/<class>/<instance>.<ext> or a CSV")
    jobs = _discover_folder(root)
    if not jobs:
        raise FparError(
            f"no videos found in {root}; expected VIDEOS/<subject>/<class>/<instance>.<ext> (video files) or "
            "VIDEOS/<subject>/<class>/<instance>/ (frame folders)"
        )
    return jobs


# ----------------------------------------------------------------------------------------------- bookkeeping


def _fingerprint(job: Job) -> dict[str, Any]:
    """Cheap identity of the source: size and mtime (file) or count / total size / newest mtime (frame folder)."""
    p = Path(job.source)
    try:
        if p.is_dir():
            stats = [f.stat() for f in list_frame_files(p)]
            return {
                "files": len(stats),
                "size": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
            }
        st = p.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except (OSError, FparError):
        return {"missing": True}


def _count(folder: Path, prefix: str, suffix: str = ".png") -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.startswith(prefix) and e.name.endswith(suffix))
    except OSError:
        return -1


def _outputs_complete(root: Path, frames_dir: str, key: str, n: int) -> bool:
    inst = root / frames_dir / key
    return (
        _count(inst / "rgb", "rgb") == n
        and _count(inst / "mmaps", "map") == n
        and _count(root / FLOW_X_DIR / key, "flow_x_") == n - 1
        and _count(root / FLOW_Y_DIR / key, "flow_y_") == n - 1
    )


def _targets(layout: str, frames_dir: str, key: str) -> list[str]:
    """The folders (relative to ``out``) a video's preparation writes."""
    if layout == "gtea61":
        return [f"{frames_dir}/{key}", f"{FLOW_X_DIR}/{key}", f"{FLOW_Y_DIR}/{key}"]
    frames_rel, flow_rel = native_targets(layout, key)
    return [str(r) for r in (frames_rel, flow_rel) if r is not None]


def _holds(path: Path) -> bool:
    """Whether ``path`` is a file, or a folder with anything in it."""
    try:
        return path.is_file() or (path.is_dir() and any(path.iterdir()))
    except OSError:
        return True  # unreadable: not ours to replace


def _load_manifest(path: Path) -> dict[str, Any]:
    import json

    empty = {"version": MANIFEST_VERSION, "videos": {}}
    if not path.exists():
        return empty
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
            raise ValueError("unexpected structure")
        return data
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s (%s): every video will be prepared again", path, e)
        return empty


class _Lock:
    """An exclusive ``out/.fpar-prepare.lock`` (pid@host); a lock left by a dead process on this host is taken over."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    def __enter__(self) -> _Lock:
        me = f"{os.getpid()}@{socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.path.read_text(encoding="utf-8", errors="replace").strip() if self.path.exists() else ""
                pid, _, host = owner.partition("@")
                if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
                    log.warning("removing stale lock %s left by dead process %s", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise FparError(
                    f"another prepare ({owner or 'unknown process'}) is writing to {self.path.parent}; wait for it to "
                    f"finish, or delete {self.path} if it is no longer running"
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me + "\n")
            self.held = True
            return self
        raise FparError(f"could not take the lock {self.path}; delete it if no prepare is running")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# ----------------------------------------------------------------------------------------------- one video


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())


def _frames(job: Job, fps: float | None, short_side: int | None) -> Iterator[np.ndarray]:
    if job.is_frames:
        if job.start is not None or job.end is not None:
            raise FparError(f"{job.source} is a frame folder: start/end (seconds) only apply to video files")
        if fps is not None:
            log.info("%s is a frame folder: fps=%s ignored (frames are used as they are)", job.source, fps)
        if job.source.endswith(".tar"):
            return _iter_tar(job.source, short_side)
        return iter_frame_folder(job.source, short_side=short_side)
    return iter_video(job.source, fps=fps, short_side=short_side, start=job.start, end=job.end)


def _iter_tar(tar: str, short_side: int | None) -> Iterator[np.ndarray]:
    """The frames ``frame_<n>.jpg`` of an EPIC-style tar in number order, read in place (nothing is extracted)."""
    from fpar.data.frames import tar_numbers
    from fpar.data.imageio import read_rgb
    from fpar.video.io import resize_short_side

    for k in tar_numbers(tar)[0]:
        yield resize_short_side(read_rgb(f"{tar}::frame_{k:010d}.jpg"), short_side)


def _replace_dir(src: Path, dest: Path, trash: Path) -> None:
    """Move the finished ``src`` folder to ``dest``, moving an older ``dest`` out of the way first (same filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        os.replace(dest, trash)
    os.replace(src, dest)


_on_frame: Any = None  # called with 1 per frame written: the progress counter (a worker's shared Value or the bar)


def _frame_done() -> None:
    if _on_frame is not None:
        _on_frame(1)


def _frames_and_flows(
    job: Job, settings: dict[str, Any], stats: dict[str, float]
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(n, frame n (1-based, RGB), warp flow n-1 -> n (H, W, 2), or None for the first frame)`` of a job's video;
    fewer than 2 frames is an error (no flow can be made).

    Frames are decoded ``flow_batch`` at a time and their flows computed together (`fpar.video.flow.warp_flows`:
    one batch of tvl1-torch, pair by pair for the OpenCV methods); ``stats`` gets the seconds of the camera step
    (``camera_s``) and of the flow (``flow_s``) added."""
    from fpar.video.flow import configure_tvl1, to_grey, warp_flows

    batch = max(1, int(settings.get("flow_batch") or 1))
    configure_tvl1(device=settings.get("flow_device"), batch=batch)
    n = 0
    prev = None  # grey frame before the pending ones
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (n, rgb, grey) decoded, flow not yet computed

    def flush():
        nonlocal prev
        greys = ([prev] if prev is not None else []) + [g for _, _, g in pending]
        flows = warp_flows(list(zip(greys, greys[1:])), settings["flow_method"], timings=stats)
        if prev is None:
            flows = [None, *flows]  # frame 1 has no incoming flow
        for (k, rgb, _), flow in zip(pending, flows):
            yield k, rgb, flow
            _frame_done()
        prev = pending[-1][2]
        pending.clear()

    for rgb in _frames(job, settings["fps"], settings["short_side"]):
        n += 1
        pending.append((n, rgb, to_grey(rgb)))
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()
    if n < 2:
        span = "" if job.start is None and job.end is None else f" between start={job.start} and end={job.end} s"
        raise FparError(
            f"{job.source}: {n} frame(s) decoded{span}; optical flow needs at least 2, check the file / time range"
        )


def _process(job: Job, root: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Prepare one video; never raises (spawn workers must return picklable results). Returns a result record."""
    t0 = time.perf_counter()
    out = Path(root)
    tmp = out / TMP_NAME / uuid.uuid4().hex
    write = _write_gtea61 if settings.get("layout", "gtea61") == "gtea61" else _write_native
    stats: dict[str, float] = {"camera_s": 0.0, "flow_s": 0.0}
    try:
        n = write(job, out, tmp, settings, stats)
        return {"key": job.key, "ok": True, "frames": n, "seconds": time.perf_counter() - t0, **stats}
    except Exception as e:  # reported per video; the run goes on
        msg = str(e) if isinstance(e, FparError) else f"{type(e).__name__}: {e}"
        return {"key": job.key, "ok": False, "error": msg, "traceback": traceback.format_exc()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_gtea61(job: Job, out: Path, tmp: Path, settings: dict[str, Any], stats: dict[str, float]) -> int:
    """The course layout: PNG frames, flow_x/flow_y PNGs and motion maps; returns the frame count."""
    import cv2

    from fpar.data.flowcodec import encode_flow
    from fpar.video.flow import motion_map

    frames_tmp, fx_tmp, fy_tmp = tmp / "frames", tmp / "flow_x", tmp / "flow_y"
    rgb_dir, map_dir = frames_tmp / "rgb", frames_tmp / "mmaps"
    for d in (rgb_dir, map_dir, fx_tmp, fy_tmp):
        d.mkdir(parents=True)
    n = 0
    last_map = None
    for n, rgb, wf in _frames_and_flows(job, settings, stats):
        _write_png(rgb_dir / f"rgb{n:04d}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if wf is not None:
            _write_png(fx_tmp / f"flow_x_{n - 1:05d}.png", encode_flow(wf[..., 0]))
            _write_png(fy_tmp / f"flow_y_{n - 1:05d}.png", encode_flow(wf[..., 1]))
            last_map = motion_map(wf, settings["mmap_thresh"])
            _write_png(map_dir / f"map{n - 1:04d}.png", last_map)
    _write_png(map_dir / f"map{n:04d}.png", last_map)  # the last frame has no outgoing flow: reuse map n-1
    # Commit: flows first, frames last (the rgb folder is what makes an instance visible to the loader).
    _replace_dir(fx_tmp, out / FLOW_X_DIR / job.key, tmp / "old_flow_x")
    _replace_dir(fy_tmp, out / FLOW_Y_DIR / job.key, tmp / "old_flow_y")
    _replace_dir(frames_tmp, out / settings["frames_dir"] / job.key, tmp / "old_frames")
    return n


NATIVE_LAYOUTS = ("gtea61", "egtea", "epic100")


def native_targets(layout: str, key: str) -> tuple[str | None, str]:
    """Where `_write_native` puts a video's frames and flow, relative to ``out``: (frames folder or None, flow folder
    holding ``u/`` and ``v/``). EGTEA: ``frames/<clip>``, ``flow/<clip>``; EPIC: flow only,
    ``<participant>/flow_frames/<video>`` (the readers' prepared layouts)."""
    if layout == "egtea":
        return f"frames/{key}", f"flow/{key}"
    return None, f"{key.split('/')[0]}/flow_frames/{key.split('/')[-1]}"


def _write_native(job: Job, out: Path, tmp: Path, settings: dict[str, Any], stats: dict[str, float]) -> int:
    """One EGTEA clip or EPIC video: frames as ``frame_%010d.jpg`` (EGTEA only: EPIC has its frames) and warp flow
    ``flow/{u,v}/frame_%010d.png`` (fpar's encoding, flow k from frame k to k+1, PNG so nothing is lost)."""
    import cv2

    from fpar.data.flowcodec import encode_flow

    frames_rel, flow_rel = native_targets(settings["layout"], job.key)
    rgb_tmp, flow_tmp = tmp / "frames", tmp / "flow"
    for d in (rgb_tmp, flow_tmp / "u", flow_tmp / "v"):
        d.mkdir(parents=True)
    n = 0
    for n, rgb, wf in _frames_and_flows(job, settings, stats):
        if frames_rel is not None:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            (rgb_tmp / f"frame_{n:010d}.jpg").write_bytes(buf.tobytes())
        if wf is not None:
            _write_png(flow_tmp / "u" / f"frame_{n - 1:010d}.png", encode_flow(wf[..., 0]))
            _write_png(flow_tmp / "v" / f"frame_{n - 1:010d}.png", encode_flow(wf[..., 1]))
    _replace_dir(flow_tmp, out / flow_rel, tmp / "old_flow")  # flow first, frames last (they make it visible)
    if frames_rel is not None:
        _replace_dir(rgb_tmp, out / frames_rel, tmp / "old_frames")
    return n


def _native_complete(root: Path, layout: str, key: str, n: int) -> bool:
    frames_rel, flow_rel = native_targets(layout, key)
    if frames_rel is not None and _count(root / frames_rel, "frame_", ".jpg") != n:
        return False
    return all(_count(root / flow_rel / c, "frame_") == n - 1 for c in ("u", "v"))


def discover_native(layout: str, root: str | os.PathLike) -> tuple[list[Job], list[str]]:
    """The jobs of a dataset in its native format: every EGTEA clip of the three splits that exists, or every EPIC
    video that has RGB frames (folder or tar) and no flow. Returns (jobs, notes about what is skipped)."""
    from fpar.data.readers.egtea import EGTEAConfig, _session, read_index, read_split
    from fpar.data.readers.epic100 import COLUMNS, TEST_COLUMNS, Epic100Config, annotations_dir, read_rows

    root = Path(root)
    jobs: list[Job] = []
    notes: list[str] = []
    if layout == "egtea":
        block = EGTEAConfig()
        ann = root / block.annotations
        problems: list = []
        idx = tuple(read_index(ann / f"{w}_idx.txt", problems, root) for w in ("action", "verb", "noun"))
        clips: dict[str, None] = {}
        for k in (1, 2, 3):
            for role in ("train", "test"):
                p = ann / f"{role}_split{k}.txt"
                if p.is_file():
                    clips.update((sl.clip, None) for sl in read_split(p, role, idx, problems, root))
        for clip in clips:
            src = root / block.clips_dir / _session(clip) / f"{clip}.mp4"
            if src.is_file():
                jobs.append(Job(str(src), clip.split("-")[0], "", clip, dest=clip))
            else:
                notes.append(f"{os.path.relpath(src, root)} is missing (named by the split files): skipped")
        return jobs, notes
    block = Epic100Config()
    ann = annotations_dir(root, block)
    seen: dict[str, str] = {}
    for name, cols in (
        (block.train_csv, COLUMNS),
        (block.test_csv, COLUMNS),
        ("EPIC_100_test_timestamps.csv", TEST_COLUMNS),
    ):
        p = ann / name
        if p.is_file():
            for _, row in read_rows(p, cols, [], root):
                seen.setdefault(row["video_id"].strip(), row["participant_id"].strip())
    for video, part in seen.items():
        rgb = root / part / "rgb_frames"
        flow = root / part / "flow_frames"
        if (flow / video).is_dir() or (flow / f"{video}.tar").is_file():
            continue  # the dataset's own flow is used
        src = rgb / video if (rgb / video).is_dir() else rgb / f"{video}.tar"
        if not src.exists():
            notes.append(f"{part}/rgb_frames/{video} has no frames (folder or tar): skipped")
            continue
        jobs.append(Job(str(src), part, "", video, dest=f"{part}/{video}"))
    return jobs, notes


def _worker_init(counter=None, torch_threads: int | None = None) -> None:
    """A pool worker: one thread for OpenCV (one process per core: its own pool would oversubscribe the CPUs), as
    many for PyTorch as given (tvl1-torch on the CPU), and frames counted into the shared ``counter``."""
    global _on_frame
    import cv2

    cv2.setNumThreads(1)
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    if counter is not None:

        def add(k: int) -> None:
            with counter.get_lock():
                counter.value += k

        _on_frame = add


def _estimate_frames(job: Job, fps: float | None) -> int | None:
    """How many frames a job will give (for the progress bar's ETA), or None when that is not cheap to know."""
    try:
        if job.source.endswith(".tar"):
            from fpar.data.frames import tar_numbers

            return len(tar_numbers(job.source)[0])
        if Path(job.source).is_dir():
            return len(list_frame_files(job.source))
        from fpar.video.io import video_info

        info = video_info(job.source)  # the container's count: no decoding (an estimate for some files)
        frames, native = info["frames"], info["fps"]
        if not frames or not native:
            return None
        rate = fps or native
        if job.start is not None or job.end is not None:
            start = job.start or 0.0
            end = job.end if job.end is not None else frames / native
            return max(0, int(round((end - start) * rate)))
        return int(round(frames * rate / native)) if fps else frames
    except Exception:  # noqa: BLE001 - an estimate only: the bar goes without a total
        return None


def _stride_note(job: Job) -> str | None:
    """A warning for a frame folder (or tar) whose file numbers go up in a constant step > 1 (`file_stride`)."""
    from fpar.data.frames import file_stride, tar_members

    if not job.is_frames:
        return None
    try:
        names = list(tar_members(job.source)) if job.source.endswith(".tar") else os.listdir(job.source)
    except (OSError, FparError):
        return None
    step = file_stride(names)
    if step is None:
        return None
    return (
        f"{job.source} looks strided: the frame numbers go up in steps of {step} (every {step}th frame); the flow "
        f"between consecutive files spans {step} frames of motion, not one; prepare the full-rate frames or the video "
        f"if the models should see the flow of consecutive frames"
    )


# ----------------------------------------------------------------------------------------------- driver


def prepare(
    videos: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    fps: float | None = None,
    short_side: int | None = 256,
    flow_method: str = "tvl1",
    workers: int = 1,
    frames_dir: str = GTEA61Config.frames_dir,
    progress: bool = True,
    layout: str = "gtea61",
    flow_batch: int | None = None,
    flow_device: str | None = None,
    redo: bool = False,
) -> dict[str, Any]:
    """Decode videos, resize frames, compute warp flows and motion maps, and write the course layout under ``out``.

    Args:
        videos: ``VIDEOS/<subject>/<class>/<instance>.<ext>`` (video files) and/or
            ``VIDEOS/<subject>/<class>/<instance>/`` (frame folders), or a ``.csv`` file (see ``csv``).
        out: dataset root to write (created if needed).
        csv: CSV with header ``video,subject,class[,start,end]``; video paths absolute or relative to the CSV's folder,
            start/end in seconds; instances are numbered 1, 2, ... per subject/class in CSV order.
        fps: resample videos to this frame rate (None keeps the native rate).
        short_side: resize frames so the shorter side is this many pixels (None keeps the size).
        flow_method: ``"tvl1"`` (OpenCV's TV-L1: reference quality, slow), ``"tvl1-torch"`` (the same algorithm in
            PyTorch, batched, on CUDA when present: :mod:`fpar.video.tvl1`), ``"dis"`` (fast) or ``"farneback"``.
        workers: number of processes (spawn start method; a calling script needs the usual
            ``if __name__ == "__main__":`` guard); 1 runs in this process.
        frames_dir: name of the folder holding ``rgb/`` and ``mmaps/``.
        progress: show a tqdm progress bar (on stderr): frames, frames/s and the ETA over all workers.
        layout: ``gtea61`` (the course layout above, from videos in subject/class folders or a CSV), or a native
            dataset ``videos`` is the root of: ``egtea`` (frames and flow of every clip of the split files, under
            ``out/frames/<clip>/`` and ``out/flow/<clip>/{u,v}/``; the annotations are copied, so ``out`` is an EGTEA
            root) or ``epic100`` (flow for the videos that have RGB frames only, under
            ``out/<participant>/flow_frames/<video>/{u,v}/``: point ``data.epic100.flow_root`` at ``out``).
        flow_batch: frame pairs whose flows are computed together (tvl1-torch: one batch; default 8, or 32 on CUDA).
        flow_device: where tvl1-torch runs (``"cuda"``, ``"cpu"``; default CUDA when present).
        redo: prepare again the videos ``out`` holds from other settings (another flow method, size or frame rate),
            replacing them; without it such a call is refused (a slow TV-L1 preparation is not lost to a mistyped
            option). A video whose source changed is always prepared again, and one that fpar did not write (not in
            ``out/.fpar-prepare.json``) is never replaced: the call is refused.

    Returns:
        ``{"root", "videos", "processed": [keys], "skipped": [keys], "failed": [{"key", "source", "error"}],
        "frames", "seconds", "flow_method", "camera_s", "flow_s", "manifest", "notes"}``, where ``frames`` counts the
        frames written by this call and ``camera_s`` / ``flow_s`` are the seconds of the camera-motion step and of the
        flow itself, summed over videos (over workers).

    Raises:
        FparError: bad inputs (missing folder / CSV, bad CSV, bad names, unknown flow method), another prepare
        holding ``out``, ``out`` holding videos fpar did not write, or (without ``redo``) videos of other settings.
        A video that fails to decode or process is reported in ``failed`` instead.
    """
    from fpar.video.flow import FLOW_METHODS

    if flow_method not in FLOW_METHODS:
        raise FparError(f"unknown flow method {flow_method!r}; choose one of {', '.join(FLOW_METHODS)}")
    if short_side is not None and not 0 < int(short_side) <= MAX_SHORT_SIDE:
        raise FparError(
            f"short_side={short_side} must be a positive number of pixels, at most {MAX_SHORT_SIDE} (an 8K "
            "frame's), or None to keep the size"
        )
    if fps is not None and not fps > 0:
        raise FparError(f"fps={fps} must be positive (or None to keep the native frame rate)")
    if int(workers) < 1:
        raise FparError(f"workers={workers} must be >= 1")
    if flow_batch is not None and int(flow_batch) < 1:
        raise FparError(f"flow_batch={flow_batch} must be >= 1")
    if flow_method != "tvl1-torch" and (flow_batch is not None or flow_device is not None):
        raise FparError(f"--flow-batch and --flow-device apply to --flow tvl1-torch only, not --flow {flow_method}")
    if flow_method == "tvl1-torch":
        from fpar.video.tvl1 import flow_device as _device

        try:
            device = _device(flow_device)
            import torch

            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as e:
            raise FparError(f"--flow-device {flow_device}: {e}; use cpu, or cuda on a machine with a GPU") from e
        flow_batch = flow_batch or (32 if device.type == "cuda" else 8)
    frames_dir = _check_name(frames_dir, "frames_dir", "prepare()")
    if flow_method == "tvl1":
        from fpar.video.flow import _flow_object

        _flow_object("tvl1")  # fail fast (clear FparError) when OpenCV lacks the contrib modules

    if layout not in NATIVE_LAYOUTS:
        raise FparError(f"prepare --format {layout}: choose one of {', '.join(NATIVE_LAYOUTS)}")
    notes: list[str] = []
    if layout == "gtea61":
        jobs = discover(videos, csv=csv)
    else:
        if videos is None or not Path(videos).is_dir():
            raise FparError(f"prepare --format {layout}: {videos} is not a dataset folder")
        jobs, notes = discover_native(layout, videos)
        for note in notes:
            log.warning("prepare: %s", note)
    root = Path(out)
    refuse_file(root, "OUT", "the prepared dataset")
    if layout == "gtea61" and videos is not None and Path(videos).is_dir() and root.resolve() == Path(videos).resolve():
        raise FparError(f"OUT {out} is the VIDEOS folder itself; give another folder for the prepared dataset")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if layout == "egtea":  # out becomes an EGTEA root: its annotations beside the frames
        ann = Path(videos) / "action_annotation"
        if not (root / "action_annotation").exists():
            shutil.copytree(ann, root / ".fpar-tmp-annotations", dirs_exist_ok=True)
            os.replace(root / ".fpar-tmp-annotations", root / "action_annotation")
    settings = {
        "fps": fps,
        "short_side": None if short_side is None else int(short_side),
        "flow_method": flow_method,
        "mmap_thresh": MMAP_THRESH,
        "frames_dir": frames_dir,
        "flow_bound": 20.0,
    }
    if layout != "gtea61":
        settings["layout"] = layout
    for job in jobs:
        note = _stride_note(job)
        if note:
            log.warning("prepare: %s", note)
            notes.append(note)
    # How fast a video is prepared, not what is written: kept out of the manifest's record (settings), so changing
    # them prepares nothing again (tvl1-torch's flow does not depend on the batch; CPU and CUDA agree to rounding).
    runtime = {"flow_batch": flow_batch, "flow_device": flow_device}
    t_start = time.perf_counter()
    summary: dict[str, Any] = {
        "root": str(root),
        "videos": len(jobs),
        "processed": [],
        "skipped": [],
        "failed": [],
        "frames": 0,
        "seconds": 0.0,
        "flow_method": flow_method,
        "camera_s": 0.0,
        "flow_s": 0.0,
        "manifest": str(root / MANIFEST_NAME),
        "notes": notes,
    }
    if layout == "epic100":
        summary["next"] = f"train with data.epic100.flow_root={root} to use this flow (for videos without their own)"
    with _Lock(root / LOCK_NAME):
        shutil.rmtree(root / TMP_NAME, ignore_errors=True)  # leftovers of an interrupted run (we hold the lock)
        manifest_path = root / MANIFEST_NAME
        manifest = _load_manifest(manifest_path)
        manifest["version"] = MANIFEST_VERSION
        done: dict[str, Any] = manifest["videos"]

        todo: list[tuple[Job, dict[str, Any]]] = []
        foreign: list[str] = []  # outputs there that no prepare recorded
        changed: list[tuple[str, dict[str, Any]]] = []  # prepared with other settings
        for job in jobs:
            record = {
                "source": job.source,
                "start": job.start,
                "end": job.end,
                "fingerprint": _fingerprint(job),
                "settings": settings,
            }
            old = done.get(job.key)
            if (
                old is not None
                and all(old.get(k) == v for k, v in record.items())
                and (
                    _outputs_complete(root, frames_dir, job.key, int(old.get("frames", -1)))
                    if layout == "gtea61"
                    else _native_complete(root, layout, job.key, int(old.get("frames", -1)))
                )
            ):
                summary["skipped"].append(job.key)
            else:
                if old is None and any(_holds(root / rel) for rel in _targets(layout, frames_dir, job.key)):
                    foreign.append(job.key)
                elif old is not None and old.get("settings") != settings and not redo:
                    changed.append((job.key, old.get("settings") or {}))
                elif old is not None:
                    log.info("%s changed (source, range, settings or files): preparing it again", job.key)
                todo.append((job, record))
        if foreign:  # before anything is written
            raise FparError(
                f"{root} already holds {len(foreign)} video(s) that fpar prepare did not write there (e.g. "
                f"{foreign[0]}; it has no record of them in {MANIFEST_NAME}): preparing them would replace those "
                "files; give another OUT, or move them away"
            )
        if changed:
            key, was = changed[0]
            diff = ", ".join(f"{k} {was.get(k)} -> {v}" for k, v in settings.items() if was.get(k) != v)
            raise FparError(
                f"{root} holds {len(changed)} video(s) prepared with other settings (e.g. {key}: {diff}); nothing "
                "was changed: pass --redo to prepare them again (replacing them), or give another OUT"
            )
        # Claimed before they are written: a kill between a video's rename into place and its record leaves it
        # ours (incomplete, so prepared again next time), not a stranger's. A video that fails is unclaimed.
        claimed = {job.key for job, _ in todo if job.key not in done}
        for job, record in todo:
            if job.key in claimed:
                done[job.key] = {**record, "frames": -1}
        if claimed:
            atomic_write_json(manifest_path, manifest)
        log.info(
            "prepare: %d video(s), %d already done, %d to do -> %s", len(jobs), len(summary["skipped"]), len(todo), root
        )

        def finish(job: Job, record: dict[str, Any], result: dict[str, Any]) -> None:
            if result["ok"]:
                done[job.key] = {
                    **record,
                    "frames": result["frames"],
                    "seconds": round(result["seconds"], 3),
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                atomic_write_json(manifest_path, manifest)  # after every video: an interruption loses at most one
                summary["processed"].append(job.key)
                summary["frames"] += result["frames"]
                summary["camera_s"] += result.get("camera_s", 0.0)
                summary["flow_s"] += result.get("flow_s", 0.0)
            else:
                if job.key in claimed and not any(_holds(root / r) for r in _targets(layout, frames_dir, job.key)):
                    done.pop(job.key, None)  # nothing of it is in place: not ours to keep
                    atomic_write_json(manifest_path, manifest)
                log.error("failed to prepare %s (%s): %s", job.key, job.source, result["error"])
                if result.get("traceback"):
                    log.debug("%s", result["traceback"])
                summary["failed"].append({"key": job.key, "source": job.source, "error": result["error"]})

        from tqdm.auto import tqdm

        estimates = [_estimate_frames(job, fps) for job, _ in todo]
        total = sum(estimates) if all(e is not None for e in estimates) else None  # type: ignore[arg-type]
        bar = tqdm(total=total, unit="frame", disable=not progress, desc="prepare", dynamic_ncols=True)
        videos = {"done": len(summary["skipped"])}

        def video_done() -> None:
            videos["done"] += 1
            bar.set_postfix_str(f"videos {videos['done']}/{len(jobs)}", refresh=False)

        video_done()
        videos["done"] -= 1
        work = {**settings, **runtime}
        global _on_frame
        try:
            if workers == 1 or len(todo) <= 1:
                _on_frame = bar.update
                for job, record in todo:
                    finish(job, record, _process(job, str(root), work))
                    video_done()
            else:
                _run_pool(todo, root, work, int(workers), finish, bar, video_done)
        finally:
            _on_frame = None
            bar.close()
            shutil.rmtree(root / TMP_NAME, ignore_errors=True)
    order = {job.key: i for i, job in enumerate(jobs)}  # report in input order, not completion order
    summary["processed"].sort(key=order.__getitem__)
    summary["failed"].sort(key=lambda f: order[f["key"]])
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    if summary["failed"]:
        log.warning(
            "prepare: %d of %d video(s) failed; fix them and run again (finished ones are skipped)",
            len(summary["failed"]),
            len(jobs),
        )
    return summary


def _run_pool(todo, root: Path, settings, workers: int, finish, bar, video_done) -> None:
    """The jobs on a pool of spawned workers; the bar follows the frames the workers count into a shared Value."""
    ctx = mp.get_context("spawn")  # fork is unsafe with OpenCV / torch threads; spawn behaves the same everywhere
    counter = ctx.Value("q", 0)
    n = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // n) if settings["flow_method"] == "tvl1-torch" else None
    shown = 0

    def follow() -> None:
        nonlocal shown
        now = counter.value
        if now > shown:
            bar.update(now - shown)
            shown = now

    with ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_worker_init, initargs=(counter, threads)
    ) as pool:
        pending = {pool.submit(_process, job, str(root), settings): (job, record) for job, record in todo}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                follow()
                for fut in finished:
                    job, record = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        result = {
                            "key": job.key,
                            "ok": False,
                            "error": "a worker process died (out of memory?); run again with fewer workers",
                        }
                    except Exception as e:  # e.g. an unpicklable result: keep going
                        result = {"key": job.key, "ok": False, "error": f"{type(e).__name__}: {e}"}
                    finish(job, record, result)
                    video_done()
            follow()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
