"""`fpar data check`: scan a dataset and report what fpar will do with it."""

from __future__ import annotations

import os
from dataclasses import asdict

from ..config import DataConfig
from ..errors import FparError
from .frames import is_video, split_ref
from .imageio import ImageError, read_grey, read_mmap, read_rgb, read_rgb_many
from .layout import check_lengths, split_problems
from .manifest import Problem
from .readers import block_of, resolve_reader


def check_dataset(
    data: DataConfig | str,
    *,
    frames: int = 7,
    flow_stack: int = 5,
    decode: bool = True,
) -> dict:
    """Everything `fpar data check` prints, as a dict (``--json`` prints it as is).

    ``data`` is the config's data section (reader, its split) or just a root (the reader's defaults). ``decode`` opens
    every image (to find unreadable or truncated files); without it only names are checked.
    """
    if isinstance(data, str):
        data = DataConfig(root=data)
    spec = resolve_reader(data)
    block = block_of(spec, data)
    manifest = spec.read(data.root, block, data)
    problems: list[Problem] = list(manifest.problems)
    problems += check_lengths(manifest, frames=frames, flow_stack=flow_stack)
    subjects = manifest.subjects()
    try:
        train_idx, test_idx = spec.split(manifest, block)
    except FparError as e:  # a split that names what the dataset lacks: report it, do not stop the scan
        problems.append(Problem("missing_subject", ".", str(e), True))
        train_idx, test_idx = [], []
    train = sorted({manifest.videos[i].subject for i in train_idx})
    test = sorted({manifest.videos[i].subject for i in test_idx})
    present = sorted(set(train + test))
    problems += split_problems(manifest, train_idx, test_idx)
    if decode:
        for v in manifest.videos:
            for paths, reader in (
                (v.rgb, _rgb_reader(v.rgb)),
                (v.flow_x, read_grey),
                (v.flow_y, read_grey),
                (sorted(set(v.mmaps)), read_mmap),
            ):
                sizes: dict[tuple[int, int], str] = {}  # per modality: one crop box is drawn per modality and clip
                for p in paths:
                    try:
                        sizes.setdefault(reader(p).shape[:2], p)
                    except ImageError as e:
                        why = str(e).replace(f"{p} ", "")  # the problem names the file already
                        line = v.meta.get("line")
                        problems.append(Problem(e.kind, os.path.relpath(p, manifest.root), why, True, line))
                        v.usable = False
                if len(sizes) > 1:
                    (h0, w0), (h1, w1) = list(sizes)[:2]
                    odd = os.path.relpath(list(sizes.values())[1], manifest.root)
                    msg = f"is {w1}x{h1} but the first image of its kind in this video is {w0}x{h0}: re-extract it"
                    problems.append(Problem("mixed_sizes", odd, msg, True, v.meta.get("line")))
                    v.usable = False
    usable = [v for v in manifest.videos if v.usable]
    frame_counts = [v.num_frames for v in usable] or [0]
    by_split = {
        "train": sum(1 for i in train_idx if manifest.videos[i].usable),
        "test": sum(1 for i in test_idx if manifest.videos[i].usable),
    }
    fatal = [p for p in problems if p.fatal and p.kind != "missing_subject"]
    ok = bool(usable) and by_split["train"] > 0 and by_split["test"] > 0
    split_counts: dict[str, int] = {}
    for v in manifest.videos:
        if v.usable and v.split:
            split_counts[v.split] = split_counts.get(v.split, 0) + 1
    if not split_counts:
        split_counts = dict(by_split)
    return {
        "root": manifest.root,
        "layout": manifest.layout,
        "format": manifest.layout,
        "segments": len(usable),
        "split_counts": split_counts,
        "verbs": manifest.verbs(),
        "nouns": manifest.nouns(),
        "videos": len(manifest.videos),
        "usable_videos": len(usable),
        "classes": manifest.classes,
        "subjects": subjects,
        "splits": {
            "train": train,
            "test": test,
            "description": spec.describe_split(block) if spec.describe_split else "",
            **{f"{k}_videos": n for k, n in by_split.items()},
        },
        "frames": {
            "min": min(frame_counts),
            "max": max(frame_counts),
            "mean": round(sum(frame_counts) / max(len(frame_counts), 1), 1),
        },
        "problems": [asdict(p) for p in problems],
        "fatal_problems": len(fatal),
        "usable": ok,
        "present_subjects": present,
    }


def _rgb_reader(paths):
    """`read_rgb`, or for the frames of a video file a reader that decodes them all in one pass first."""
    ref = split_ref(paths[0]) if len(paths) else None
    if ref is None or not is_video(ref[0]):
        return read_rgb
    try:
        decoded = dict(zip(list(paths), read_rgb_many(list(paths))))
    except ImageError:
        return read_rgb  # name the frame that fails
    return decoded.__getitem__


def format_report(r: dict, *, max_rows: int = 40) -> str:
    lines = [
        f"dataset {r['root']} ({r['layout']} layout)",
        f"  {r['videos']} videos ({r['usable_videos']} usable), {len(r['classes'])} classes, "
        f"frames per video {r['frames']['min']}-{r['frames']['max']} (mean {r['frames']['mean']})",
        "  subjects: " + ", ".join(f"{s}: {n}" for s, n in r["subjects"].items()),
        f"  split: train {','.join(r['splits']['train'])} = {r['splits']['train_videos']} videos, "
        f"test {','.join(r['splits']['test'])} = {r['splits']['test_videos']} videos",
    ]
    if r.get("verbs"):
        lines.insert(2, f"  {len(r['verbs'])} verbs, {len(r['nouns'])} nouns")
    if r.get("split_counts"):
        lines.append("  segments per split: " + ", ".join(f"{k} {n}" for k, n in r["split_counts"].items()))
    probs = r["problems"]
    if probs:
        kinds: dict[str, int] = {}
        for p in probs:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        lines.append(f"  {len(probs)} problems: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        for p in probs[:max_rows]:
            lines.append(f"    [{p['kind']}] {p['path']}: {p['message']}")
        if len(probs) > max_rows:
            lines.append(f"    ... {len(probs) - max_rows} more (use --json for all)")
    else:
        lines.append("  no problems found")
    lines.append("  usable: yes" if r["usable"] else "  usable: NO (see the problems above)")
    return "\n".join(lines)
