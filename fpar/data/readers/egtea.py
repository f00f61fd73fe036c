"""EGTEA Gaze+ in its native format (``data.format=egtea``; datasets.md §1).

The folder fpar is pointed at (``data.root``)::

    ROOT/action_annotation/action_idx.txt      "<name> <id>" per line, ids 1-based; names hold spaces, "/" and ","
                          /verb_idx.txt /noun_idx.txt
                          /train_split{1,2,3}.txt /test_split{1,2,3}.txt   "<clip> <action> <verb> <noun1> [<noun2> ..]"
    ROOT/cropped_clips/<session>/<clip>.mp4    the trimmed clips as distributed (24 fps), decoded on the fly
    ROOT/frames/<clip>/frame_%010d.jpg         optional: frames made by `fpar prepare --format egtea` ...
    ROOT/flow/<clip>/{u,v}/frame_%010d.jpg     ... and warp flow (fpar's encoding); used instead of the MP4

Splits: ``data.egtea.split`` (alias ``data.split``) picks ``train_split<N>`` / ``test_split<N>``; the dataset's
readme asks for the mean over the three splits, which is a sweep with ``folds: {key: data.split, values: [1, 2, 3]}``.
A clip's label is its action (ids minus one); its verb and its first noun are the verb/noun targets, and every noun
of the line is kept in the manifest (``meta["nouns"]``). Subjects are participants (``OP01``, ``P21``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import FparError
from ...registry import ReaderSpec, register_reader
from ..frames import FrameSeq, folder_numbers, probe_video
from ..manifest import Manifest, Problem, VideoRecord, Vocabulary
from . import split_by_role

SPLITS = (1, 2, 3)


@dataclass
class EGTEAConfig:
    """``data.egtea.*``."""

    split: int = 1  # 1 | 2 | 3: the train_split<N> / test_split<N> files (alias data.split)
    annotations: str = "action_annotation"  # folder of the index and split files, relative to data.root
    clips_dir: str = "cropped_clips"
    frames_dir: str = "frames"  # prepared frames (fpar prepare --format egtea); the MP4s are used where absent
    flow_dir: str = "flow"

    def validate(self, cfg) -> None:
        if self.split not in SPLITS:
            raise FparError(f"data.egtea.split is {self.split!r}; EGTEA Gaze+ has splits 1, 2 and 3")


def read_index(path: Path, problems: list[Problem], root: Path) -> dict[int, str]:
    """``{id: name}`` of an index file; names contain spaces, so the id is after the **last** space."""
    rel = os.path.relpath(path, root)
    if not path.is_file():
        raise FparError(
            f"{path} is missing: EGTEA Gaze+ needs action_annotation/{path.name} (from action_annotation.zip)"
        )
    out: dict[int, str] = {}
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        name, _, num = line.strip().rpartition(" ")
        if not name or not num.isdigit():
            problems.append(Problem("bad_line", rel, f"line {n} is not '<name> <id>': {line.strip()[:60]!r}", line=n))
            continue
        i = int(num)
        if i in out:
            problems.append(Problem("bad_line", rel, f"line {n}: id {i} is given twice; the first is kept", line=n))
            continue
        out[i] = name.strip()
    ids = sorted(out)
    if ids and ids != list(range(1, len(ids) + 1)):
        problems.append(Problem("bad_index", rel, f"ids are not 1..{len(ids)} (EGTEA's ids are 1-based)"))
    return out


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise FparError(f"{path} is not a text file; restore it from action_annotation.zip") from None
    except OSError as e:
        raise FparError(f"{path} cannot be read ({e.strerror}); check its permissions") from None


@dataclass
class SplitLine:
    clip: str
    action: int  # 0-based
    verb: int
    nouns: list[int]
    role: str  # train | test
    file: str
    line: int


def read_split(path: Path, role: str, idx: tuple[dict, dict, dict], problems: list[Problem], root) -> list[SplitLine]:
    """The lines of one split file as 0-based ids; a line with an id outside the index files is a problem."""
    actions, verbs, nouns = idx
    rel = os.path.relpath(path, root)
    if not path.is_file():
        raise FparError(
            f"{path} is missing: EGTEA Gaze+ split files are {path.parent}/{{train,test}}_split{{1,2,3}}.txt"
        )
    out = []
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 4 or not all(p.isdigit() for p in parts[1:]):
            problems.append(
                Problem("bad_line", rel, f"line {n} is not '<clip> <action> <verb> <noun> ..': {line[:70]!r}", line=n)
            )
            continue
        a, v, *ns = (int(p) for p in parts[1:])
        bad = [
            f"{what} id {i}"
            for what, i, table in [("action", a, actions), ("verb", v, verbs), *[("noun", x, nouns) for x in ns]]
            if i not in table
        ]
        if bad:
            problems.append(
                Problem("unknown_id", rel, f"line {n} ({parts[0]}): {', '.join(bad)} not in the index files", line=n)
            )
            continue
        out.append(SplitLine(parts[0], a - 1, v - 1, [x - 1 for x in ns], role, rel, n))
    return out


def _frames(folder: Path, found: tuple[list[int], str]) -> list[str] | FrameSeq:
    """The files of a prepared frame folder (its `folder_numbers`): a lazy range when numbered 1..n without gaps."""
    nums, ext = found
    if nums == list(range(1, len(nums) + 1)):
        return FrameSeq(str(folder / f"frame_{{:010d}}{ext}"), 1, len(nums))
    return [str(folder / f"frame_{k:010d}{ext}") for k in nums]


def read(root, block: EGTEAConfig, data) -> Manifest:
    root = Path(root)
    block.validate(None)
    ann = root / block.annotations
    problems: list[Problem] = []
    actions = read_index(ann / "action_idx.txt", problems, root)
    verbs = read_index(ann / "verb_idx.txt", problems, root)
    nouns = read_index(ann / "noun_idx.txt", problems, root)
    idx = (actions, verbs, nouns)
    lines = []
    for role in ("train", "test"):
        lines += read_split(ann / f"{role}_split{block.split}.txt", role, idx, problems, root)
    vocab = _vocabulary(ann, idx, lines, problems, root)
    videos: list[VideoRecord] = []
    seen: dict[str, SplitLine] = {}
    for sl in lines:
        if sl.clip in seen:
            first = seen[sl.clip]
            problems.append(
                Problem(
                    "duplicate_clip",
                    sl.file,
                    f"line {sl.line}: clip {sl.clip} is also on line {first.line} of {first.file}; the first is used",
                    line=sl.line,
                )
            )
            continue
        seen[sl.clip] = sl
        videos.append(_record(root, block, sl, vocab, problems))
    return Manifest(str(root), "egtea", list(vocab.actions), videos, problems, vocab)


def _session(clip: str) -> str:
    """``OP01-R01-PastaSalad-1002316-1004005-F024051-F024101`` -> ``OP01-R01-PastaSalad`` (4 trailing fields)."""
    parts = clip.split("-")
    return "-".join(parts[:-4]) if len(parts) > 4 else clip


def _record(root: Path, block: EGTEAConfig, sl: SplitLine, vocab: Vocabulary, problems) -> VideoRecord:
    session = _session(sl.clip)
    subject = session.split("-")[0]
    v = VideoRecord(
        subject=subject,
        cls=vocab.actions[sl.action],
        instance=sl.clip,
        rgb=[],
        label=sl.action,
        verb=vocab.verbs[sl.verb],
        noun=vocab.nouns[sl.nouns[0]],
        verb_label=sl.verb,
        noun_label=sl.nouns[0],
        split=sl.role,
        meta={"nouns": sl.nouns, "session": session, "line": sl.line, "file": sl.file},
    )
    frames = root / block.frames_dir / sl.clip
    found = folder_numbers(frames)
    if found[0]:  # prepared by fpar prepare --format egtea
        v.meta["where"] = os.path.relpath(frames, root)
        v.rgb = _frames(frames, found)
        fu, fv = root / block.flow_dir / sl.clip / "u", root / block.flow_dir / sl.clip / "v"
        (nu, eu), (nv, ev) = folder_numbers(fu), folder_numbers(fv)
        m = min(len(nu), len(nv))
        v.flow_x, v.flow_y = _frames(fu, (nu[:m], eu)), _frames(fv, (nv[:m], ev))
    else:
        clip = root / block.clips_dir / session / f"{sl.clip}.mp4"
        rel = v.meta["where"] = os.path.relpath(clip, root)
        if not clip.is_file():
            problems.append(
                Problem("missing_clip", rel, f"{sl.file} line {sl.line} names a clip that is not there", True, sl.line)
            )
            v.usable = False
            return v
        try:
            n, _fps = probe_video(clip)
        except FparError as e:
            problems.append(Problem("unreadable_video", rel, str(e), True, sl.line))
            v.usable = False
            return v
        v.rgb = FrameSeq(f"{clip}::{{}}", 0, n - 1)  # frame k of the MP4, decoded on the fly
    if not v.rgb:
        problems.append(Problem("empty_video", sl.clip, "no frames: clip skipped", True, sl.line))
        v.usable = False
    return v


def _vocabulary(ann: Path, idx, lines: list[SplitLine], problems, root) -> Vocabulary:
    """Actions, verbs and nouns in id order; each action's (verb, first noun) from the split lines of all three
    splits (an action is always the same pair)."""
    actions, verbs, nouns = idx
    names = [actions.get(i, f"action {i}") for i in range(1, max(actions, default=0) + 1)]
    vnames = [verbs.get(i, f"verb {i}") for i in range(1, max(verbs, default=0) + 1)]
    nnames = [nouns.get(i, f"noun {i}") for i in range(1, max(nouns, default=0) + 1)]
    pair: dict[int, tuple[int, int]] = {}
    every = list(lines)
    for k in SPLITS:
        for role in ("train", "test"):
            p = ann / f"{role}_split{k}.txt"
            if p.is_file():
                every += read_split(p, role, idx, [], root)
    for sl in every:
        pair.setdefault(sl.action, (sl.verb, sl.nouns[0]))
    av, an = [], []
    for a, name in enumerate(names):
        if a not in pair:  # an action no split uses: its verb is the longest verb name it starts with
            v = max(
                (i for i, vn in enumerate(vnames) if name.startswith(vn + " ")), key=lambda i: len(vnames[i]), default=0
            )
            rest = name[len(vnames[v]) + 1 :].split(",")[0] if vnames else ""
            n = nnames.index(rest) if rest in nnames else 0
            pair[a] = (v, n)
        av.append(pair[a][0])
        an.append(pair[a][1])
    return Vocabulary(names, vnames, nnames, av, an)


def split(manifest: Manifest, block: EGTEAConfig) -> tuple[list[int], list[int]]:
    return split_by_role(manifest, "train", "test", f"EGTEA split {block.split}")


def detect(root: Path, data=None) -> bool:
    ann = data.egtea.annotations if data is not None else "action_annotation"
    return (root / ann / "action_idx.txt").is_file()


def folds(manifest: Manifest, block: EGTEAConfig) -> list[dict]:
    return [{"data.egtea.split": k} for k in SPLITS]


register_reader(
    ReaderSpec(
        name="egtea",
        read=read,
        detect=detect,
        split=split,
        config=EGTEAConfig,
        aliases={"split": "split"},
        folds=folds,
        describe_split=lambda block: f"EGTEA split {block.split}",
        description="EGTEA Gaze+: action_annotation/ (index + split files), cropped_clips/<session>/<clip>.mp4",
    )
)
