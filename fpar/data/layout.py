"""Dataset layout discovery, cleaning and the manifest.

Two layouts are read (reference-spec §7.1):

* the course GTEA61 layout used by the report::

      ROOT/processed_frames2/S1/<class>/<inst>/rgb/rgb0001.png      (frames folder name configurable)
      ROOT/processed_frames2/S1/<class>/<inst>/mmaps/map0001.png
      ROOT/flow_x_processed/S1/<class>/<inst>/flow_x_00001.png
      ROOT/flow_y_processed/S1/<class>/<inst>/flow_y_00001.png

* the original Ego-RNN layout::

      ROOT/frames/S1/<class>/<inst>/image_00001.jpg
      ROOT/flow_x/S1/<class>/<inst>/flow_x_00001.jpg
      ROOT/flow_y/...

Everything downstream reads one :class:`Manifest`: a row per video with its subject, class, instance, the ordered
frame files of each modality and the problems found. Cleaning never touches the user's files: hidden files and
duplicates such as ``flow_x_00007(1).png`` are skipped, a missing motion map is replaced by the nearest existing one,
and each fix is recorded as a :class:`Problem`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import FparError
from .manifest import Manifest, Problem, VideoRecord, Vocabulary

__all__ = ["Manifest", "Problem", "VideoRecord", "Vocabulary", "discover", "detect_layout", "nearest_fill"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_NUM = re.compile(r"^(?P<prefix>[A-Za-z_]+?)(?P<num>\d+)\.(?P<ext>png|jpg|jpeg)$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------
# File listing with the cleaning rules


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_duplicate(name: str) -> bool:
    # copies made by file managers: "flow_x_00007(1).png", "rgb0003 (1).png", "map0004 copy.png"
    return "(" in name or " copy" in name


def _list_numbered(folder: Path, prefix: str, root: Path, problems: list[Problem]) -> dict[int, str]:
    """Map frame number -> path for files named ``<prefix><digits>.<image ext>`` in ``folder``."""
    out: dict[int, str] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    except NotADirectoryError:
        return out
    except PermissionError:
        problems.append(_unreadable(folder, root))
        return out
    for e in entries:
        rel = os.path.relpath(e.path, root)
        if _is_hidden(e.name):
            problems.append(Problem("hidden_file", rel, "hidden file ignored"))
            continue
        if _is_duplicate(e.name):
            problems.append(Problem("duplicate_file", rel, "duplicate copy ignored"))
            continue
        m = _NUM.match(e.name)
        if not m or not e.name.lower().endswith(IMAGE_EXTS) or m.group("prefix") != prefix:
            if e.is_file():
                problems.append(Problem("stray_file", rel, f"not a '{prefix}N' image; ignored"))
            continue
        n = int(m.group("num"))
        out[n] = e.path
    return out


def _subdirs(folder: Path, root: Path, problems: list[Problem]) -> list[Path]:
    out = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: _natural_key(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return out
    except PermissionError:
        problems.append(_unreadable(folder, root))
        return out
    for e in entries:
        if _is_hidden(e.name):
            problems.append(Problem("hidden_file", os.path.relpath(e.path, root), "hidden entry ignored"))
            continue
        if e.is_dir():
            out.append(Path(e.path))
        else:
            problems.append(Problem("stray_file", os.path.relpath(e.path, root), "unexpected file ignored"))
    return out


def _unreadable(folder: Path, root: Path) -> Problem:
    rel = os.path.relpath(folder, root)
    return Problem("unreadable_folder", rel, "cannot be read (permission denied): skipped; fix its permissions", True)


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def nearest_fill(wanted: list[int], available: dict[int, str]) -> tuple[list[str], list[int]]:
    """For each wanted frame number, the file of the nearest available number (ties go to the later frame,
    which reproduces the report's fix of copying the second map over a missing first one). Returns the files
    and the numbers that had to be filled."""
    if not available:
        return [], list(wanted)
    nums = sorted(available)
    files, filled = [], []
    for w in wanted:
        if w in available:
            files.append(available[w])
            continue
        best = min(nums, key=lambda n: (abs(n - w), -n))
        files.append(available[best])
        filled.append(w)
    return files, filled


# --------------------------------------------------------------------------------------------------------------
# Discovery


def detect_layout(root: Path, frames_dir: str = "processed_frames2") -> tuple[str, str]:
    """Return (layout, frames folder name)."""
    if not root.exists():
        raise FparError(
            f"dataset root {root} does not exist; create one with `fpar data synth {root}` or fix data.root"
        )
    if not root.is_dir():
        raise FparError(f"dataset root {root} is not a folder")
    if frames_dir not in ("processed_frames2", "processed_frames") and not (root / frames_dir).is_dir():
        raise FparError(  # named on purpose: falling back to the usual folder would read other frames silently
            f"data.gtea61.frames_dir={frames_dir}: {root / frames_dir} is not a folder; fix the key, or leave it "
            "unset for processed_frames2/ (or processed_frames/)"
        )
    for name in (frames_dir, "processed_frames2", "processed_frames"):
        if (root / name).is_dir():
            return "gtea61", name
    if (root / "frames").is_dir():
        return "egornn", "frames"
    found = ", ".join(sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:8]) or "nothing"
    raise FparError(
        f"{root} is not a GTEA61 dataset: expected a '{frames_dir}/' (course layout) or 'frames/' (Ego-RNN layout) "
        f"folder, found {found}; see README 'Data layout'"
    )


def discover(root: str | Path, *, layout: str = "auto", frames_dir: str = "processed_frames2") -> Manifest:
    """Scan a dataset and build its :class:`Manifest`. Raises :class:`FparError` when the root is unusable."""
    root = Path(root).resolve()
    found_layout, fdir = detect_layout(root, frames_dir)
    if layout != "auto" and layout != found_layout:
        raise FparError(f"{root} looks like the '{found_layout}' layout, but data.format is '{layout}'")
    problems: list[Problem] = []
    if found_layout == "gtea61":
        rgb_sub, rgb_prefix, map_sub = "rgb", "rgb", "mmaps"
        flow_dirs = ("flow_x_processed", "flow_y_processed")
    else:
        rgb_sub, rgb_prefix, map_sub = "", "image_", None
        flow_dirs = ("flow_x", "flow_y")
    for d in flow_dirs:
        if not (root / d).is_dir():
            problems.append(Problem("missing_modality", d, f"no {d}/ folder: flow models cannot train on this dataset"))

    frames_root = root / fdir
    videos: list[VideoRecord] = []
    for subj in _subdirs(frames_root, root, problems):
        for cdir in _subdirs(subj, root, problems):
            insts = _subdirs(cdir, root, problems)
            if not insts:
                problems.append(Problem("empty_class", os.path.relpath(cdir, root), "class folder with no videos"))
            for inst in insts:
                videos.append(
                    _read_video(root, subj.name, cdir.name, inst, rgb_sub, rgb_prefix, map_sub, flow_dirs, problems)
                )
    if not videos:
        raise FparError(f"no videos found under {frames_root}; expected <subject>/<class>/<instance>/ folders")

    classes = sorted({v.cls for v in videos})
    vocab = gtea_vocabulary(classes)
    index = {c: i for i, c in enumerate(classes)}
    for v in videos:
        v.label = index[v.cls]
        v.verb_label, v.noun_label = vocab.action_verb[v.label], vocab.action_noun[v.label]
        v.verb, v.noun = vocab.verbs[v.verb_label], vocab.nouns[v.noun_label]
    return Manifest(str(root), found_layout, classes, videos, problems, vocab)


def split_class_name(name: str) -> tuple[str, str]:
    """GTEA61 class folders are ``verb_noun`` (``take_cup``, ``pour_mustard,hotdog,bread``): split on the first ``_``;
    a name without one is its own verb and noun."""
    verb, _, noun = name.partition("_")
    return verb, noun or name


def motion_pairs(classes: list[str]) -> list[tuple[str, str]]:
    """Pairs of classes that differ only by the direction of motion (take/put, open/close)."""
    pairs = []
    for a, b in (("take", "put"), ("open", "close")):
        for c in classes:
            if c.startswith(a + "_"):
                other = b + c[len(a) :]
                if other in classes:
                    pairs.append((c, other))
    return pairs


def gtea_vocabulary(classes: list[str]) -> Vocabulary:
    """Verbs and nouns from the class names; the motion-only pairs as the ``pair`` subset."""
    pairs = [c for p in motion_pairs(classes) for c in p]
    return Vocabulary.from_pairs(classes, [split_class_name(c) for c in classes], pair=pairs)


def _read_video(root, subject, cls, inst, rgb_sub, rgb_prefix, map_sub, flow_dirs, problems) -> VideoRecord:
    vdir = inst / rgb_sub if rgb_sub else inst
    rel = os.path.relpath(inst, root)
    rgb = _list_numbered(vdir, rgb_prefix, root, problems)
    rec = VideoRecord(subject, cls, inst.name, [rgb[n] for n in sorted(rgb)])
    if not rgb:
        problems.append(Problem("empty_video", rel, "no RGB frames: video skipped", fatal=True))
        rec.usable = False
        return rec
    nums = sorted(rgb)
    if nums != list(range(nums[0], nums[0] + len(nums))):
        gaps = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))[:5]
        problems.append(
            Problem("missing_frames", rel, f"RGB frame numbers have gaps (e.g. {gaps}); frames used in order")
        )

    # flows: same relative folder under flow_x_processed/ and flow_y_processed/
    fx = _list_numbered(root / flow_dirs[0] / subject / cls / inst.name, "flow_x_", root, problems)
    fy = _list_numbered(root / flow_dirs[1] / subject / cls / inst.name, "flow_y_", root, problems)
    rec.flow_x = [fx[n] for n in sorted(fx)]
    rec.flow_y = [fy[n] for n in sorted(fy)]
    if (root / flow_dirs[0]).is_dir() and (not fx or not fy):
        problems.append(Problem("missing_modality", rel, "no flow_x or flow_y frames: flow models skip this video"))
    if fx and fy:
        n, mx, my = len(rgb), len(fx), len(fy)
        if mx != my:
            m = min(mx, my)
            problems.append(
                Problem("count_mismatch", rel, f"{mx} flow_x vs {my} flow_y frames; fpar uses the first {m} of each")
            )
            rec.flow_x, rec.flow_y = rec.flow_x[:m], rec.flow_y[:m]
        m = rec.num_flows
        if m not in (n, n - 1):
            # The two streams must describe the same frames: keep the range both modalities cover.
            keep_rgb, keep_flow = min(n, m + 1), min(m, n)
            problems.append(
                Problem(
                    "count_mismatch",
                    rel,
                    f"{n} RGB frames but {m} flows (expected {n} or {n - 1}); fpar uses the common range: "
                    f"{keep_rgb} frames, {keep_flow} flows",
                )
            )
            rec.rgb = rec.rgb[:keep_rgb]
            rec.flow_x, rec.flow_y = rec.flow_x[:keep_flow], rec.flow_y[:keep_flow]
            nums = nums[:keep_rgb]

    if map_sub is not None:
        maps = _list_numbered(inst / map_sub, "map", root, problems)
        if maps:
            files, filled = nearest_fill(nums, maps)
            rec.mmaps = files
            for w in filled:
                src = os.path.relpath(files[nums.index(w)], root)
                problems.append(
                    Problem("missing_mmap", f"{rel}/{map_sub}/map{w:04d}.png", f"missing motion map; uses {src}")
                )
        else:
            problems.append(Problem("missing_modality", rel, "no motion maps: MS models skip this video"))
    return rec


def check_lengths(manifest: Manifest, *, frames: int, flow_stack: int = 5) -> list[Problem]:
    """Problems for videos shorter than a requested T or than a flow stack (they still load: indices repeat)."""
    out = []
    for v in manifest.videos:
        if not v.usable:
            continue
        # segments of an annotation file (EGTEA, EPIC) are named by their line; GTEA61's videos by their folder
        rel = v.meta.get("where") or os.path.relpath(os.path.dirname(v.rgb[0]), manifest.root)
        line = v.meta.get("line")
        who = f"{v.meta.get('file')} line {line} ({v.instance}): " if line is not None else ""
        if v.num_frames < frames:
            out.append(
                Problem("too_short", rel, f"{who}{v.num_frames} frames < T={frames}: frames are repeated", False, line)
            )
        if v.flow_x and v.num_flows < flow_stack:
            msg = f"{who}{v.num_flows} flows < stack of {flow_stack}: the last flow is repeated"
            out.append(Problem("too_short", rel, msg, False, line))
    return out


def split_problems(manifest: Manifest, train: list[int], test: list[int], *, max_listed: int = 20) -> list[Problem]:
    """Classes with videos in only one of the two splits (by the videos' indices). Past ``max_listed`` classes (EPIC's
    thousands of rare (verb, noun) pairs) they are one problem that counts them."""
    in_train = {manifest.videos[i].cls for i in train}
    in_test = {manifest.videos[i].cls for i in test}
    out = []
    for c in manifest.classes:
        if (c in in_train) != (c in in_test):
            where = "training" if c in in_train else "test"
            out.append(Problem("class_one_split", c, f"class '{c}' has videos in the {where} split only"))
    if len(out) > max_listed:
        names = ", ".join(p.path for p in out[:5])
        out = [Problem("class_one_split", ".", f"{len(out)} classes have videos in one split only (e.g. {names})")]
    return out
