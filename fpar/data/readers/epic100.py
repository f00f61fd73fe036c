"""EPIC-KITCHENS-100 in its native format (``data.format=epic100``; datasets.md §2).

``data.root`` is the downloader's folder; the annotation CSVs are in ``data.epic100.annotations`` (default: the root
itself, ``ROOT/annotations`` or ``ROOT/epic-kitchens-100-annotations``, whichever holds them)::

    ROOT/P01/rgb_frames/P01_01/frame_0000000001.jpg     extracted frames ...
    ROOT/P01/rgb_frames/P01_01.tar                      ... or the tar as downloaded, read in place
    ROOT/P01/flow_frames/P01_01/{u,v}/frame_*.jpg       flow, extracted or ...
    ROOT/P01/flow_frames/P01_01.tar                     ... as the tar (members u/..., v/...)
    ANN/EPIC_100_{train,validation}.csv  ANN/EPIC_100_{verb,noun}_classes.csv
    ANN/EPIC_100_unseen_participant_ids_validation.csv  ANN/EPIC_100_tail_{verbs,nouns}.csv   (optional)

Frame numbers in the CSVs are file numbers (1-based) and a segment's RGB frames are ``start_frame..stop_frame``
inclusive. Flow: EPIC-55 videos (``PXX_YY``) have flow every second frame, extension videos (``PXX_1YY``) every
frame; flow file = ``(rgb - 1) // stride + 1`` for both ends. Each flow encoding is decoded with its own bound (25 px
for EPIC-55, 8 px for the extension) and brought to fpar's (20 px) by ``VideoRecord.flow_scale``.

Split roles: ``train`` trains, ``validation`` is the test set (the test split's labels are withheld; its
submission comes from `fpar predict --epic-test`); ``data.select_on=val`` holds a fraction of ``train`` out.
The action of a segment is its (verb, noun) pair; the action classes are the pairs seen in the two CSVs.
"""

from __future__ import annotations

import ast
import bisect
import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import FparError
from ...registry import ReaderSpec, register_reader
from ...utils import read_utf8
from ..frames import FrameSeq, folder_numbers, tar_numbers
from ..manifest import Manifest, Problem, VideoRecord, Vocabulary
from . import split_by_role

COLUMNS = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
    "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
    "all_noun_classes",
)  # fmt: skip
TEST_COLUMNS = COLUMNS[:8]  # EPIC_100_test_timestamps.csv: no labels
FPAR_FLOW_BOUND = 20.0  # fpar's own flow encoding (v = 128 + 255 f / 40): what every model sees
_UTF8_HINT = "the EPIC-100 CSVs are UTF-8: take the file as the annotations repository ships it"
_EPIC55 = re.compile(r"^P\d+_\d{2}$")  # P01_01 (EPIC-55) as opposed to P01_101 (the extension)
_TIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


@dataclass
class Epic100Config:
    """``data.epic100.*``."""

    annotations: str = ""  # folder of the CSVs; "": ROOT, ROOT/annotations or ROOT/epic-kitchens-100-annotations
    train_csv: str = "EPIC_100_train.csv"
    test_csv: str = "EPIC_100_validation.csv"  # fpar's test set (the labelled validation split)
    flow_bound_55: float = 25.0  # the bound EPIC-55's flow JPEGs were encoded with (furnari-flow, -b 25)
    flow_bound_100: float = 8.0  # the extension's
    # Flow made by `fpar prepare --format epic100 ROOT OUT` for videos without any: OUT here ("" : none). It is
    # used only for videos with no flow under data.root; it has a flow for every frame, in fpar's encoding.
    flow_root: str = ""


def parse_time(text: str) -> float:
    """``HH:MM:SS.ff`` (or ``.fff``) -> seconds; ValueError for anything else."""
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not HH:MM:SS.ff")
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def epic55(video: str) -> bool:
    return bool(_EPIC55.match(video))


def annotations_dir(root: Path, block: Epic100Config) -> Path:
    if block.annotations:
        p = Path(block.annotations)
        return p if p.is_absolute() else root / p
    for p in (root, root / "annotations", root / "epic-kitchens-100-annotations"):
        if (p / block.train_csv).is_file() or (p / "EPIC_100_verb_classes.csv").is_file():
            return p
    return root


def read_classes(path: Path) -> list[str]:
    """Keys in id order of ``EPIC_100_{verb,noun}_classes.csv`` (``id,key,instances,category``)."""
    if not path.is_file():
        raise FparError(
            f"{path} is missing: EPIC-KITCHENS-100 needs the class files of epic-kitchens-100-annotations; set "
            "data.epic100.annotations to the folder that holds them"
        )
    keys: dict[int, str] = {}
    with io.StringIO(read_utf8(path, _UTF8_HINT), newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            try:
                keys[int(row["id"])] = row["key"].strip()
            except (KeyError, TypeError, ValueError, AttributeError):
                raise FparError(
                    f"{path} line {reader.line_num}: expected the columns id,key,instances,category with an integer id"
                ) from None
    if sorted(keys) != list(range(len(keys))):
        raise FparError(f"{path}: class ids are not 0..{len(keys) - 1}; restore the file from the annotations")
    return [keys[i] for i in range(len(keys))]


def _ids(path: Path) -> set:
    """The first integer (or participant id) of every row of an optional CSV; empty when the file is absent."""
    out: set = set()
    if not path.is_file():
        return out
    with io.StringIO(read_utf8(path, _UTF8_HINT), newline="") as fh:
        for n, row in enumerate(csv.reader(fh)):
            if n == 0 and row and not any(c.strip().isdigit() for c in row) and not row[0].startswith("P"):
                continue  # header
            for c in row:
                c = c.strip()
                if c.isdigit():
                    out.add(int(c))
                    break
                if re.match(r"^P\d+$", c):
                    out.add(c)
                    break
    return out


class _Video:
    """The frames of one video on disk, found once for all its segments."""

    def __init__(self, root: Path, participant: str, video: str, bounds: tuple[float, float], flow_root: str = ""):
        self.rgb_rel = f"{participant}/rgb_frames/{video}"
        rgb_dir, rgb_tar = root / participant / "rgb_frames" / video, root / participant / "rgb_frames" / f"{video}.tar"
        flow_dir, flow_tar = (
            root / participant / "flow_frames" / video,
            root / participant / "flow_frames" / f"{video}.tar",
        )
        self.problem: str | None = None
        self.flow_problem: str | None = None
        try:
            self.rgb_pattern, self.rgb_numbers = self._find(rgb_dir, rgb_tar, "")
        except FparError as e:  # a broken tar: this video's segments are reported, the others are read
            self.rgb_pattern, self.rgb_numbers, self.problem = None, [], str(e)
        if self.rgb_pattern is None and self.problem is None:
            self.problem = f"no frames: neither {self.rgb_rel}/ nor {self.rgb_rel}.tar exists"
        self.stride = 2 if epic55(video) else 1
        self.flow_scale = (bounds[0] if epic55(video) else bounds[1]) / FPAR_FLOW_BOUND
        try:
            self.u_pattern, self.u_numbers = self._find(flow_dir, flow_tar, "u")
            self.v_pattern, self.v_numbers = self._find(flow_dir, flow_tar, "v")
        except FparError as e:
            self.u_pattern, self.u_numbers, self.v_pattern, self.v_numbers = None, [], None, []
            self.flow_problem = str(e)
        self.flow_rel = f"{participant}/flow_frames/{video}"
        if self.u_pattern is None and flow_root:  # fpar's own flow: every frame, fpar's encoding
            made = Path(flow_root) / participant / "flow_frames" / video
            self.u_pattern, self.u_numbers = self._find(made, made.with_suffix(".tar"), "u")
            self.v_pattern, self.v_numbers = self._find(made, made.with_suffix(".tar"), "v")
            if self.u_pattern is not None:
                self.stride, self.flow_scale = 1, 1.0
        self.flow_reported = False

    @staticmethod
    def _find(folder: Path, tar: Path, sub: str):
        """(pattern, sorted file numbers) of the ``frame_<n>.<ext>`` files in a folder or a tar; (None, [])."""
        d = folder / sub if sub else folder
        if d.is_dir():
            nums, ext = folder_numbers(d)
            return str(d / "frame_{:010d}") + ext, nums
        if tar.is_file():  # indexed now: a broken tar is reported by the reader, not by a DataLoader worker
            nums, ext = tar_numbers(str(tar), sub)
            return f"{tar}::{sub + '/' if sub else ''}frame_{{:010d}}{ext}", nums
        return None, []

    def frames(self, pattern: str, numbers: list[int], first: int, last: int):
        """Files ``first..last`` (inclusive): a lazy range when none is missing, else the ones present."""
        lo, hi = bisect.bisect_left(numbers, first), bisect.bisect_left(numbers, last + 1)
        if hi - lo == last - first + 1:
            return FrameSeq(pattern, first, last)
        return [pattern.format(k) for k in numbers[lo:hi]]


def read_rows(path: Path, columns: tuple[str, ...], problems: list[Problem], root: Path) -> list[tuple[int, dict]]:
    """(line, row) of an annotation CSV whose header starts with ``columns``; a malformed row is a problem."""
    rel = os.path.relpath(path, root)
    if not path.is_file():
        raise FparError(f"{path} is missing; set data.epic100.annotations to the folder with the EPIC-100 CSVs")
    out = []
    with io.StringIO(read_utf8(path, _UTF8_HINT), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[: len(columns)]) != columns:
            raise FparError(
                f"{path}: header is {','.join(header or [])[:120]!r}, expected the EPIC-100 columns "
                f"{','.join(columns[:4])},...; is this the right file?"
            )
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) < len(columns):
                problems.append(
                    Problem("bad_line", rel, f"line {line} has {len(row)} columns, expected {len(columns)}", line=line)
                )
                continue
            out.append((line, dict(zip(header, row))))
    return out


def _segment(
    line: int, row: dict, rel: str, role: str, videos: dict, root: Path, block, problems
) -> VideoRecord | None:
    """One CSV row as a manifest record (None for a row fpar cannot use, with its problem)."""

    def bad(kind, msg, path=rel):
        problems.append(Problem(kind, path, f"line {line} ({row.get('narration_id', '?')}): {msg}", True, line))

    try:
        start, stop = int(row["start_frame"]), int(row["stop_frame"])
        t0, t1 = parse_time(row["start_timestamp"]), parse_time(row["stop_timestamp"])
        nt = row["narration_timestamp"].strip()
        t_narr = parse_time(nt) if nt else None  # empty in 70 validation rows
    except ValueError as e:
        bad("bad_line", f"{e}")
        return None
    labels = {}
    for col in ("verb_class", "noun_class"):
        if col in row:
            try:
                labels[col] = int(row[col])
            except ValueError:
                bad("bad_line", f"{col} {row[col]!r} is not an integer id")
                return None
    all_nouns = []
    if "all_noun_classes" in row:
        try:
            all_nouns = [int(x) for x in ast.literal_eval(row["all_noun_classes"].strip() or "[]")]
        except (ValueError, SyntaxError, TypeError):
            bad("bad_line", f"all_noun_classes {row['all_noun_classes']!r} is not a list literal")
            return None
    if start < 1 or stop < start:
        bad("frame_range", f"frames {start}..{stop} are not a range of file numbers (1-based)")
        return None
    vid, part = row["video_id"].strip(), row["participant_id"].strip()
    if vid not in videos:
        flow_root = block.flow_root and str(
            Path(block.flow_root) if Path(block.flow_root).is_absolute() else root / block.flow_root
        )
        videos[vid] = _Video(root, part, vid, (block.flow_bound_55, block.flow_bound_100), flow_root)
    video = videos[vid]
    if video.problem:
        bad("missing_video", video.problem, video.rgb_rel)
        return None
    last = video.rgb_numbers[-1] if video.rgb_numbers else 0
    if start > last:
        bad("frame_range", f"frames {start}..{stop} start after the video's last frame ({last})", video.rgb_rel)
        return None
    if stop > last:
        problems.append(
            Problem(
                "frame_range",
                video.rgb_rel,
                f"line {line} ({row['narration_id']}): stop_frame {stop} is past the last frame ({last}); "
                f"frames {start}..{last} are used",
                False,
                line,
            )
        )
        stop = last
    rgb = video.frames(video.rgb_pattern, video.rgb_numbers, start, stop)
    rec = VideoRecord(
        subject=part,
        cls="",
        instance=row["narration_id"].strip(),
        rgb=rgb,
        split=role,
        flow_stride=video.stride,
        flow_scale=video.flow_scale,
        meta={
            "narration_id": row["narration_id"].strip(),
            "video": vid,
            "narration": row.get("narration", ""),
            "start_frame": start,
            "stop_frame": stop,
            "start_s": t0,
            "stop_s": t1,
            "narration_s": t_narr,
            "all_noun_classes": all_nouns,
            "line": line,
            "file": rel,
            "where": video.rgb_rel,
        },
    )
    if len(rgb) < stop - start + 1:
        problems.append(
            Problem(
                "missing_frames",
                video.rgb_rel,
                f"line {line}: {stop - start + 1 - len(rgb)} of frames {start}..{stop} are missing (a truncated "
                "extraction?); the others are used",
                False,
                line,
            )
        )
    if video.u_pattern is not None and video.v_pattern is not None:
        s = video.stride
        f0, f1 = (start - 1) // s + 1, (stop - 1) // s + 1
        m = min(video.u_numbers[-1] if video.u_numbers else 0, video.v_numbers[-1] if video.v_numbers else 0)
        f1 = min(f1, m)
        if f0 <= f1:
            rec.flow_x = video.frames(video.u_pattern, video.u_numbers, f0, f1)
            rec.flow_y = video.frames(video.v_pattern, video.v_numbers, f0, f1)
            rec.meta["flow_frames"] = [f0, f1]
    if not rec.flow_x and (video.u_pattern is not None or not video.flow_reported):
        video.flow_reported = True  # a video without any flow is one problem, not one per segment
        problems.append(
            Problem(
                "missing_modality",
                video.flow_rel,
                (
                    f"{rel} line {line}: no flow for frames {start}..{stop}: flow models skip this segment"
                    if video.u_pattern is not None
                    else f"{rel} line {line}: "
                    + (video.flow_problem or f"neither {video.flow_rel}/ nor {video.flow_rel}.tar exists")
                    + f": flow models skip the segments of {vid}"
                ),
                False,
                line,
            )
        )
    rec.verb_label = labels.get("verb_class", -1)
    rec.noun_label = labels.get("noun_class", -1)
    return rec


def read(root, block: Epic100Config, data) -> Manifest:
    root = Path(root)
    ann = annotations_dir(root, block)
    problems: list[Problem] = []
    verbs = read_classes(ann / "EPIC_100_verb_classes.csv")
    nouns = read_classes(ann / "EPIC_100_noun_classes.csv")
    videos: dict[str, _Video] = {}
    records: list[VideoRecord] = []
    for role, name in (("train", block.train_csv), ("validation", block.test_csv)):
        path = ann / name
        rel = os.path.relpath(path, root)
        for line, row in read_rows(path, COLUMNS, problems, root):
            rec = _segment(line, row, rel, role, videos, root, block, problems)
            if rec is None:
                continue
            if not (0 <= rec.verb_label < len(verbs)) or not (0 <= rec.noun_label < len(nouns)):
                problems.append(
                    Problem(
                        "unknown_id",
                        rel,
                        f"line {line} ({rec.instance}): verb_class {rec.verb_label} / noun_class {rec.noun_label} "
                        f"outside the class files ({len(verbs)} verbs, {len(nouns)} nouns)",
                        True,
                        line,
                    )
                )
                continue
            records.append(rec)
    # the action classes: the (verb, noun) pairs the annotations use, in id order
    pairs = sorted({(r.verb_label, r.noun_label) for r in records})
    action_of = {p: i for i, p in enumerate(pairs)}
    actions = [f"{verbs[v]} {nouns[n]}" for v, n in pairs]
    unseen = _ids(ann / "EPIC_100_unseen_participant_ids_validation.csv")
    tail_v, tail_n = _ids(ann / "EPIC_100_tail_verbs.csv"), _ids(ann / "EPIC_100_tail_nouns.csv")
    for r in records:
        r.label = action_of[(r.verb_label, r.noun_label)]
        r.cls, r.verb, r.noun = actions[r.label], verbs[r.verb_label], nouns[r.noun_label]
        r.usable = bool(r.rgb)
        groups = []  # the group metrics this segment counts in (EPIC's unseen-participant and tail-class top-1)
        if r.subject in unseen:
            groups += ["unseen_verb_top1", "unseen_noun_top1", "unseen_action_top1"]
        if r.verb_label in tail_v:
            groups.append("tail_verb_top1")
        if r.noun_label in tail_n:
            groups.append("tail_noun_top1")
        if r.verb_label in tail_v or r.noun_label in tail_n:
            groups.append("tail_action_top1")
        r.meta["metrics"] = groups
    vocab = Vocabulary(actions, verbs, nouns, [v for v, _ in pairs], [n for _, n in pairs])
    return Manifest(str(root), "epic100", actions, records, problems, vocab)


def split(manifest: Manifest, block: Epic100Config) -> tuple[list[int], list[int]]:
    return split_by_role(manifest, "train", "validation", "EPIC-KITCHENS-100")


def detect(root: Path, data=None) -> bool:
    block = data.epic100 if data is not None else Epic100Config()
    return (annotations_dir(root, block) / block.train_csv).is_file()


def read_test_segments(csv_path: str | Path, root: str | Path, block: Epic100Config | None = None) -> Manifest:
    """The segments of ``EPIC_100_test_timestamps.csv`` (no labels) over the frames under ``root``, for a
    submission (`fpar predict --epic-test`). Every row must be usable: a submission needs every narration id."""
    block = block or Epic100Config()
    root, path = Path(root), Path(csv_path)
    if not path.is_file():
        raise FparError(f"--epic-test {path} does not exist; give EPIC_100_test_timestamps.csv of the annotations")
    problems: list[Problem] = []
    videos: dict[str, _Video] = {}
    out = []
    seen: dict[str, int] = {}
    for line, row in read_rows(path, TEST_COLUMNS, problems, path.parent):
        nid = row.get("narration_id", "").strip()
        if nid in seen:  # a submission holds one score per narration id: the second row would be dropped
            raise FparError(
                f"{path}: narration id {nid} is on line {seen[nid]} and again on line {line}; give each segment once"
            )
        seen[nid] = line
        rec = _segment(line, row, path.name, "test", videos, root, block, problems)
        if rec is not None:
            out.append(rec)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        p = fatal[0]
        raise FparError(
            f"{path}: {len(fatal)} segment(s) cannot be read, e.g. {p.path}: {p.message}; a submission needs every "
            "narration id: fix the frames (or data.root) and run again"
        )
    return Manifest(str(root), "epic100", [], out, problems)


register_reader(
    ReaderSpec(
        name="epic100",
        read=read,
        detect=detect,
        split=split,
        config=Epic100Config,
        describe_split=lambda block: f"EPIC-100 {Path(block.train_csv).stem} / {Path(block.test_csv).stem}",
        description="EPIC-KITCHENS-100: P01/rgb_frames/P01_01(.tar), flow_frames/, EPIC_100_*.csv annotations",
    )
)
